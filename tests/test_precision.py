"""fp16 / int8 / mixed graphs: valid, runnable, quantized as TensorRT wants, fidelity measured, cached."""
import copy
import json

import numpy as np
import onnx
import pytest
from helpers import effedge_cli
from onnx import helper, numpy_helper
from PIL import Image
from helpers import overflowing_model, photo, photo_folder, random_weights, tiny_detector, tiny_model

from effedge.quantize import qdq
from effedge.errors import EffedgeError
from effedge.export.onnx_export import ExportOptions, export
from effedge.quantize.precision import PrecisionOptions, convert, model_input
from effedge.runtime.onnxruntime import ort_session


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A D0 export at 128×128 with realistic random weights, a folder of 14 images and a private cache."""
    root = tmp_path_factory.mktemp("precision")
    export("d0", root / "build", weights=random_weights("d0", 128), options=ExportOptions(image_size=128))
    images = photo_folder(root / "images", 14, (160, 120))
    cache = root / "cache"
    patcher = pytest.MonkeyPatch()
    patcher.setenv("EFFEDGE_CACHE_DIR", str(cache))
    yield root, images, cache
    patcher.undo()


def _convert(workspace, precision, **extra):
    root, images, _ = workspace
    extra.setdefault("holdout_views", 4)  # one view per held-out photo: the suite's time; 8 where a test counts them
    options = PrecisionOptions(precision=precision, calib_dir=images, holdout=4, **extra)
    return convert(root / "build" / "model.sim.onnx", options=options)


def _run(model_path, batch):
    session = ort_session(model_path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": batch})))


def test_fp16_graph_is_valid_runs_and_keeps_fp32_io(workspace):
    report = _convert(workspace, "fp16")
    path = workspace[0] / "build" / "model.fp16.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    outputs = _run(path, np.zeros((1, 3, 128, 128), np.float32))
    assert outputs["class_logits"].dtype == np.float32
    assert report["fidelity"]["outputs"]["class_logits"]["sqnr_db"] > 40


def test_int8_graph_follows_the_qdq_rules(workspace):
    report = _convert(workspace, "int8", calib_images=10)
    path = workspace[0] / "build" / "model.int8.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 214
    for conv in convs:
        act_dq, weight_dq = producers[conv.input[0]], producers[conv.input[1]]
        assert act_dq.op_type == weight_dq.op_type == "DequantizeLinear"
        weight_q = producers[weight_dq.input[0]]
        weight = inits[weight_q.input[0]]
        axis = {a.name: onnx.helper.get_attribute_value(a) for a in weight_q.attribute}.get("axis", 1)
        assert axis == 0 and inits[weight_q.input[1]].shape == (weight.shape[0],)  # per output channel
        assert not inits[weight_q.input[2]].any()  # symmetric: zero point 0
        assert inits[act_dq.input[1]].shape == () and not inits[act_dq.input[2]].any()  # per-tensor
    summary = report["qdq"]
    assert summary["convolutions_int8"] == 214 and summary["weights_per_channel_axis0"] == 214
    assert summary["zero_points_all_zero"]
    # runs in ONNX Runtime (with the Q/DQ + fp16 fix) and stays close to fp32 on a held-out photo
    from effedge.quantize.images import ImageSet

    held_out = ImageSet.from_folder(workspace[1], count=10, holdout=4)
    image = next(held_out.batches(held_out.holdout, (128, 128), "float"))
    int8 = _run(path, image)["class_logits"]
    fp32 = _run(workspace[0] / "build" / "model.sim.onnx", image)["class_logits"]
    assert np.corrcoef(int8.ravel(), fp32.ravel())[0, 1] > 0.9


def test_activation_scales_come_from_calibration(workspace):
    """Scales are amax/127 of the tensors on the calibration images (here checked for the model input)."""
    _convert(workspace, "int8", calib_images=10, method="max")
    model = onnx.load(str(workspace[0] / "build" / "model.int8.onnx"))
    quantizers = qdq.activation_quantizers(model)
    q_node, _ = quantizers["images"][0]
    scale = float(numpy_helper.to_array([i for i in model.graph.initializer if i.name == q_node.input[1]][0]))
    from effedge.quantize.images import ImageSet

    images = ImageSet.from_folder(workspace[1], count=10, holdout=4)
    batches = np.concatenate(list(images.batches(images.calibration, (128, 128), "float")))
    assert scale == pytest.approx(np.abs(batches).max() / 127, rel=2e-3)  # fp16 scale storage


def test_fidelity_is_measured_not_assumed(workspace):
    report = _convert(workspace, "int8", calib_images=10, holdout_views=8)
    reported = report["fidelity"]["outputs"]["class_logits"]["sqnr_db"]
    from effedge.quantize.images import ImageSet

    images = ImageSet.from_folder(workspace[1], count=10, holdout=4)
    signal = error = 0.0
    for batch in images.batches(images.holdout_views(), (128, 128), "float"):
        ref = _run(workspace[0] / "build" / "model.sim.onnx", batch)["class_logits"].astype(np.float64)
        got = _run(workspace[0] / "build" / "model.int8.onnx", batch)["class_logits"].astype(np.float64)
        signal += (ref ** 2).sum()
        error += ((ref - got) ** 2).sum()
    assert reported == pytest.approx(10 * np.log10(signal / error), abs=1e-6)
    assert report["fidelity"]["images"] == 8 and report["holdout"]["photos"] == 4  # 4 photos, 2 views each
    assert "detection_agreement" in report["fidelity"]


def test_second_run_does_not_recalibrate(workspace):
    first = _convert(workspace, "int8", calib_images=8, method="percentile")

    def must_not_run(*args, **kwargs):
        raise AssertionError("recalibrated or re-placed despite the cache")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("effedge.quantize.precision.calibrate", must_not_run)
        patch.setattr("effedge.quantize.precision._modelopt", must_not_run)
        second = _convert(workspace, "int8", calib_images=8, method="percentile")
    assert first["calibration"]["cached"] is False and second["calibration"]["cached"] is True
    assert second["calibration"]["placement_cached"] is True
    assert second["sha256"] == first["sha256"]  # same ranges written: the same graph
    manifest = json.loads((workspace[0] / "build" / "build.json").read_text())
    assert manifest["precisions"]["int8"]["calibration"]["cached"] is True
    assert manifest["artifacts"]["model.int8.onnx"]["sha256"] == second["sha256"]


def test_mixed_keeps_sensitive_blocks_until_the_target(workspace):
    int8 = _convert(workspace, "int8", calib_images=10)
    worst = min(int8["fidelity"]["outputs"][k]["sqnr_db"] for k in ("class_logits", "box_regression"))
    target = worst + 6  # demand clearly more than int8 gives
    mixed = _convert(workspace, "mixed", calib_images=10, fidelity_target=target)
    assert mixed["kept_fp16"], mixed["sensitivity"]
    assert mixed["fidelity_target_met"] is True and "warnings" not in mixed
    assert len(mixed["sensitivity"]) >= 10 and all("gain_db" in s for s in mixed["sensitivity"])
    assert set(mixed["kept_fp16"]) == {s["group"] for s in mixed["sensitivity"] if s.get("kept_fp16")}
    assert mixed["qdq"]["convolutions_int8"] < 214
    # the convolutions left unquantized are those of the kept blocks (a block may have none, e.g. "other")
    int8_graph = onnx.load(str(workspace[0] / "build" / "model.int8.onnx")).graph
    conv_groups = {qdq.layer_group(n.name) for n in int8_graph.node if n.op_type == "Conv"}
    assert {g for g, _ in mixed["qdq"]["not_quantized_groups"]} == set(mixed["kept_fp16"]) & conv_groups
    mixed_worst = min(mixed["fidelity"]["outputs"][k]["sqnr_db"] for k in ("class_logits", "box_regression"))
    assert mixed_worst > worst
    # the figures reported are those of the graph written (the search's last measurement)
    from effedge.quantize.images import ImageSet

    images = ImageSet.from_folder(workspace[1], count=10, holdout=4, min_views=4)
    signal = error = 0.0
    for batch in images.batches(images.holdout_views(), (128, 128), "float"):
        ref = _run(workspace[0] / "build" / "model.sim.onnx", batch)["box_regression"].astype(np.float64)
        got = _run(workspace[0] / "build" / "model.mixed.onnx", batch)["box_regression"].astype(np.float64)
        signal, error = signal + (ref ** 2).sum(), error + ((ref - got) ** 2).sum()
    assert mixed["fidelity"]["outputs"]["box_regression"]["sqnr_db"] == pytest.approx(10 * np.log10(signal / error),
                                                                                      abs=1e-6)


def test_mixed_ranks_no_block_where_int8_alone_meets_the_target(workspace, monkeypatch):
    from effedge.quantize.fidelity import RANDOM_WEIGHTS_NOTE
    from effedge.quantize.precision import measure_fidelity

    views = 8  # more than the blocks are ranked on: the check must be made on every held-out view
    int8 = _convert(workspace, "int8", calib_images=10, holdout_views=views, random_weights=True)
    worst = min(int8["fidelity"]["outputs"][k]["sqnr_db"] for k in ("class_logits", "box_regression"))
    measured = []  # the number of views of each measurement
    monkeypatch.setattr("effedge.quantize.precision.measure_fidelity",
                        lambda model, references, *a: measured.append(len(references))
                        or measure_fidelity(model, references, *a))
    mixed = _convert(workspace, "mixed", calib_images=10, fidelity_target=worst - 1, holdout_views=views,
                     random_weights=True)
    assert mixed["fidelity_target_met"] is True and mixed["kept_fp16"] == [] and mixed["sensitivity"] == []
    assert mixed["sha256"] == int8["sha256"]  # the int8 graph itself
    assert measured == [views]  # one check of int8 on every view, whose figures are those reported: no ranking
    assert mixed["fidelity"]["outputs"] == int8["fidelity"]["outputs"]
    assert mixed["fidelity"]["detection_agreement_note"] == RANDOM_WEIGHTS_NOTE


def test_detector_groups_are_its_stages_bifpn_layers_and_heads(workspace):
    """The mixed search's groups of D0: the backbone's stem and stages, each BiFPN layer, the extra-level
    resampling, each head, and the rest (box decoding); every convolution in one of the network's parts."""
    graph = onnx.load(str(workspace[0] / "build" / "model.sim.onnx")).graph
    expected = {"backbone/stem", *(f"backbone/blocks.{i}" for i in range(7)), "fpn/cell.0", "fpn/cell.1",
                "fpn/cell.2", "fpn/resample", "class_net", "box_net", "other"}
    assert {qdq.layer_group(n.name) for n in graph.node} == expected
    assert "other" not in {qdq.layer_group(n.name) for n in graph.node if n.op_type == "Conv"}


def test_failed_calibration_leaves_no_cache_entry_or_artefact(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(5):  # JPEG headers pass the up-front check, the image data is cut off
        Image.fromarray(photo(seed=i)).save(broken / f"{i}.jpg")
        data = (broken / f"{i}.jpg").read_bytes()
        (broken / f"{i}.jpg").write_bytes(data[: len(data) // 2])
    build = tmp_path / "build"
    build.mkdir()
    onnx.save(tiny_model(1), str(build / "model.sim.onnx"))
    with pytest.raises(EffedgeError, match="could be read"):
        convert(build / "model.sim.onnx", options=PrecisionOptions(precision="int8", calib_dir=broken, holdout=0))
    assert (tmp_path / "cache" / "placement").is_dir()  # it failed in calibration, past the placement
    assert not (tmp_path / "cache" / "calibration").exists() or not any((tmp_path / "cache" / "calibration").iterdir())
    assert sorted(p.name for p in build.iterdir()) == ["model.sim.onnx"]


def test_model_input_reads_layout():
    from onnx import TensorProto, helper

    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 64, 96, 3])],
                              [])
    assert model_input(helper.make_model(graph)).size == (64, 96)
    assert model_input(helper.make_model(graph)).format == "uint8"
    # a float input takes normalized values or pixels (0-255): only build.json or the metadata can say which
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [])
    model = helper.make_model(graph)
    assert model_input(model).format == "float" and model_input(model).size == (64, 96)
    assert model_input(model, {"input": {"format": "pixels"}}).format == "pixels"
    helper.set_model_props(model, {"effedge.input.format": "pixels"})
    assert model_input(model).format == "pixels" and model_input(model).size == (64, 96)
    with pytest.raises(EffedgeError, match="records the input format 'uint8', but the graph's input is float"):
        model_input(model, {"input": {"format": "uint8"}})




@pytest.mark.parametrize("args, message", [
    (["--calib", "{tmp}/nope"], "does not exist"),
    (["--calib", "{tmp}"], "no images"),
    (["--calib-images", "0"], "'--calib-images': 0 is not in the range x>=1"),
])
def test_quantize_cli_bad_input(workspace, tmp_path, args, message):
    model = workspace[0] / "build" / "model.sim.onnx"
    result = effedge_cli("quantize", str(model), "--precision", "int8",
                         *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_quantize_cli_refuses_a_missing_model_and_nms_tails(tmp_path, workspace):
    result = effedge_cli("quantize", str(tmp_path / "x.onnx"), "--precision", "fp16")
    assert result.returncode == 2 and "not found" in result.stderr
    export("d0", tmp_path / "tail", options=ExportOptions(image_size=128, nms="efficientnms"))
    result = effedge_cli("quantize", str(tmp_path / "tail" / "model.fp32.onnx"), "--precision", "fp16")
    assert result.returncode == 2 and "has an NMS tail" in result.stderr


@pytest.mark.slow  # a full mixed search over 8 held-out views (~50 s); the default run keeps the target search
def test_mixed_with_everything_kept_is_fp16(workspace):
    """An unreachable target keeps every block in fp16: then no activation or weight may still be quantized
    (residual Adds, pools and resizes included), and fidelity is fp16's."""
    fp16 = _convert(workspace, "fp16")
    mixed = _convert(workspace, "mixed", calib_images=10, fidelity_target=500.0)
    model = onnx.load(str(workspace[0] / "build" / "model.mixed.onnx"))
    assert not [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert mixed["fidelity_target_met"] is False and "short of the 500.0 dB target" in mixed["warnings"][0]
    assert mixed["fidelity"]["outputs"]["box_regression"]["sqnr_db"] == pytest.approx(
        fp16["fidelity"]["outputs"]["box_regression"]["sqnr_db"], abs=3.0)


@pytest.mark.parametrize("method", ["max", "percentile", "entropy"])
def test_static_batch_calibration_counts_every_image_once(tmp_path, method):
    """5 images through a batch-4 model (one full batch, one filled up with repeats) give exactly the ranges
    of a batch-1 model: the last image is used, and its repeats are not counted."""
    from effedge.quantize.images import ImageSet
    from effedge.quantize.precision import calibrate

    for i in range(5):
        Image.fromarray(photo((48, 40), seed=i) // (1 if i < 4 else 3)).save(tmp_path / f"{i}.png")  # 4 darker
    tensors = ["images", "r1"]
    ranges = {}
    for batch in (1, 4):
        model = tiny_model(batch)
        images = ImageSet.from_folder(tmp_path, holdout=0)
        ranges[batch], used = calibrate(model, tensors, images, model_input(model), method=method,
                                        percentile=99.0, progress=lambda items, total, text: items)
        assert used == 5
    assert ranges[4] == ranges[1]


@pytest.mark.parametrize("method", ["max", "percentile", "entropy"])
def test_calibration_ranges_are_those_of_each_activations_strided_sample(tmp_path, monkeypatch, method):
    """The histogram methods see x[:, :, ::s, ::s] of a large activation (s = round(√(C·H·W / sample size)), a 1×1
    max pool in the graph), max sees every value: the ranges are those of a NumPy collector fed exactly that."""
    from effedge.quantize import precision
    from effedge.quantize.calibrators import RangeCollector
    from effedge.quantize.images import ImageSet

    monkeypatch.setattr(precision, "CALIBRATION_SAMPLE", 512)  # r1, c2: 8×32×32 values, so s = 4
    for i in range(3):
        Image.fromarray(photo((40, 48), seed=10 + i)).save(tmp_path / f"{i}.png")
    model, tensors = tiny_model(2), ["r1", "c2"]
    images = ImageSet.from_folder(tmp_path, holdout=0)
    ranges, used = precision.calibrate(model, tensors, images, model_input(model), method=method, percentile=99.0,
                                       progress=lambda items, total, text: items)
    assert used == 3
    plain = copy.deepcopy(model)
    plain.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session, inputs = ort_session(plain), model_input(model)
    expected = {t: RangeCollector() for t in tensors}
    for batch, real in images.padded_batches(images.calibration, inputs.size, inputs.format, 2, inputs.preprocessing):
        for name, value in zip(tensors, session.run(tensors, {"images": batch})):
            expected[name].update(value[:real] if method == "max" else value[:real, :, ::4, ::4])
    assert ranges == {t: expected[t].threshold(method, 99.0) for t in tensors}


@pytest.mark.parametrize("precision", ["int8", "mixed"])
def test_batch_8_with_the_shipped_images(tmp_path, monkeypatch, precision):
    """calib/ has 8 photos, one held out: a batch-8 model calibrates on 7 and measures fidelity on 8 views of 1."""
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx.save(tiny_model(8), str(tmp_path / "model.sim.onnx"))
    report = convert(tmp_path / "model.sim.onnx", options=PrecisionOptions(precision=precision))
    assert report["calibration"]["images"] == 7 and report["fidelity"]["images"] == 8
    assert report["fidelity"]["outputs"]["features"]["sqnr_db"] > 20
    from effedge.provenance.stages import peak_rss_mb
    # every timed stage has its peak RSS, none above the process's high-water mark (a page or so of accounting)
    assert set(report["peak_rss_mb"]) == set(report["seconds"]) >= {"reference", "placement", "calibration"}
    assert all(0 < peak <= peak_rss_mb() + 1 for peak in report["peak_rss_mb"].values())
    outputs = _run(tmp_path / f"model.{precision}.onnx", np.zeros((8, 3, 32, 32), np.float32))
    assert outputs["features"].shape == (8, 8)


def junk_folder(path):
    path.mkdir()
    for i in range(4):
        (path / f"{i}.jpg").write_text("not a photo")
    return path


def test_convert_refuses_junk_images_before_any_inference(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx.save(tiny_model(1), str(tmp_path / "model.sim.onnx"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("inference or placement started on a folder without images")

    monkeypatch.setattr("effedge.quantize.precision.ort_session", must_not_run)
    monkeypatch.setattr("effedge.quantize.precision._modelopt", must_not_run)
    with pytest.raises(EffedgeError, match="is an image"):
        convert(tmp_path / "model.sim.onnx", options=PrecisionOptions(precision="int8",
                                                                      calib_dir=junk_folder(tmp_path / "junk")))


@pytest.mark.parametrize("change, message", [
    ({"calib_dir": "JUNK"}, "calibration files in .*junk is an image"),
    ({"calib_dir": "MISSING"}, "does not exist"),
    ({"calib_method": "minmax"}, "unknown --calib-method 'minmax'"),
    ({"calib_images": 0}, "--calib-images 0"),
    ({"fidelity_target": float("nan"), "precision": "mixed"}, "--fidelity-target nan"),
    ({"calib_dir": "MISSING", "precision": "fp16"}, "does not exist"),
])
def test_compile_checks_precision_inputs_before_exporting(tmp_path, monkeypatch, change, message):
    from effedge.pipeline.compile import CompileConfig, compile_model

    def must_not_run(*args, **kwargs):
        raise AssertionError("exported before checking the precision inputs")

    monkeypatch.setattr("effedge.export.onnx_export.export", must_not_run)
    folders = {"JUNK": str(junk_folder(tmp_path / "junk")), "MISSING": str(tmp_path / "missing")}
    change = {k: folders.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    config = CompileConfig(**{"variant": "d0", "precision": "int8", "image_size": 128, "backend": "onnxruntime",
                              **change})
    with pytest.raises(EffedgeError, match=message):
        compile_model(config, tmp_path / "build")
    assert not (tmp_path / "build").exists()


def test_compile_cli_junk_folder_is_one_line(tmp_path):
    result = effedge_cli("compile", "--variant", "d0", "--precision", "int8", "--backend", "onnxruntime",
                         "--calib", str(junk_folder(tmp_path / "junk")), "--out", str(tmp_path / "build"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: none of the 3 calibration files in ")  # 1 held out
    assert f"{tmp_path / 'junk'} is an image" in lines[0] and "pass --calib with a folder of photos" in lines[0]
    assert not (tmp_path / "build").exists()


def test_nonfinite_outputs_are_a_failure_not_a_perfect_match():
    """Half of box_regression infinite is counted and reported, with no SQNR or cosine, and no target is met;
    an inf that fp32 has too (reproduced exactly) is no failure."""
    from effedge.quantize.fidelity import FidelityMeter, min_sqnr

    reference = {"class_logits": np.linspace(-3, 3, 24, dtype=np.float32).reshape(1, 12, 2),
                 "box_regression": np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 12, 4)}
    test = {k: v.copy() for k, v in reference.items()}
    test["box_regression"][0, :6] = np.inf
    meter = FidelityMeter()
    meter.update(reference, test)
    report = meter.report()
    entry = report["outputs"]["box_regression"]
    assert entry["nonfinite"] == 24 and report["nonfinite"] == {"box_regression": 24}
    assert entry["sqnr_db"] is None and entry["cosine"] is None and "infinite SQNR" not in entry["sqnr_note"]
    assert min_sqnr(report) == float("-inf")  # below every --fidelity-target
    json.dumps(report, allow_nan=False)

    reference["box_regression"][0, 0, 0] = test["box_regression"][0, 0, 0] = np.inf
    test["box_regression"][0, :6] = reference["box_regression"][0, :6]
    meter = FidelityMeter()
    meter.update(reference, test)
    assert "nonfinite" not in meter.report()["outputs"]["box_regression"]


def test_the_nonfinite_warning_advises_what_helps_that_precision():
    """mixed keeps blocks out of int8 in fp16: it repairs an int8 overflow, not an fp16 (or mixed) one."""
    from test_cli_validation import check_suggestions

    from effedge.quantize.fidelity import nonfinite_warning

    report = {"nonfinite": {"box_regression": 3}}
    assert "--precision mixed" in nonfinite_warning(report, "int8")
    for precision in ("fp16", "mixed"):
        warning = nonfinite_warning(report, precision)
        assert "mixed (" not in warning and "effedge compile --precision fp32" in warning, warning
        check_suggestions(warning, ["compile"])
    assert nonfinite_warning({"outputs": {}}, "int8") is None


def test_an_int8_graph_that_overflows_fails_fidelity_and_mixed_repairs_it(tmp_path, monkeypatch):
    """A graph whose int8 form gives inf where fp32 is finite: int8 is reported as failing (with a warning in
    build.json), and mixed precision does not count the target as met until the output is finite again."""
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx.save(overflowing_model(), str(tmp_path / "model.sim.onnx"))
    int8 = convert(tmp_path / "model.sim.onnx", options=PrecisionOptions(precision="int8"))
    assert int8["fidelity"]["nonfinite"]["inverse"] > 0
    assert int8["fidelity"]["outputs"]["inverse"]["sqnr_db"] is None
    assert "int8 gives non-finite values where fp32 is finite" in int8["warnings"][0]
    recorded = json.loads((tmp_path / "build.json").read_text())["precisions"]["int8"]
    assert recorded["warnings"] == int8["warnings"]
    # the target is finiteness: fp16's own 1/x of near-zero values is a few dB on the crops of the held-out photo
    mixed = convert(tmp_path / "model.sim.onnx", options=PrecisionOptions(precision="mixed", fidelity_target=1))
    assert mixed["kept_fp16"] and mixed["fidelity_target_met"] is True
    assert "nonfinite" not in mixed["fidelity"] and mixed["fidelity"]["outputs"]["inverse"]["sqnr_db"] > 1


def _photos(folder, count: int = 5):
    return photo_folder(folder, count, (48, 40), ".png")


def _tiny_int8(tmp_path, calib_dir, **options):
    return convert(tmp_path / "model.sim.onnx", options=PrecisionOptions(precision="int8", calib_dir=calib_dir,
                                                                         holdout=1, **options))


def test_calibration_cache_follows_the_images_content_not_their_folder(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx.save(tiny_model(1), str(tmp_path / "model.sim.onnx"))
    first = _photos(tmp_path / "first")
    assert _tiny_int8(tmp_path, first)["calibration"]["cached"] is False
    copy = tmp_path / "elsewhere" / "same-images"
    shutil.copytree(first, copy)
    assert _tiny_int8(tmp_path, copy)["calibration"]["cached"] is True  # same photos, another folder: a hit
    for path in copy.iterdir():  # same folder and names, other photos: a miss
        Image.fromarray(photo((48, 40), seed=100 + int(path.stem))).save(path)
    assert _tiny_int8(tmp_path, copy)["calibration"]["cached"] is False


def test_percentile_is_part_of_the_calibration_key(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx.save(tiny_model(1), str(tmp_path / "model.sim.onnx"))
    images = _photos(tmp_path / "images")
    assert _tiny_int8(tmp_path, images, percentile=99.99)["calibration"]["cached"] is False
    assert _tiny_int8(tmp_path, images, percentile=99.99)["calibration"]["cached"] is True
    again = _tiny_int8(tmp_path, images, percentile=90.0)
    assert again["calibration"]["cached"] is False  # another percentile: other ranges, recalibrated


def test_high_precision_dtype_is_recorded_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx.save(tiny_model(1), str(tmp_path / "model.sim.onnx"))
    for high, expected in ((None, "fp16"), ("fp32", "fp32")):
        report = convert(tmp_path / "model.sim.onnx", options=PrecisionOptions(precision="int8", high_precision=high))
        assert report["high_precision"]["dtype"] == expected
        assert ("ONNX Runtime" in report["high_precision"]["reason"]) and report["high_precision"]["reason"]
        floats = {i.data_type for i in onnx.load(str(tmp_path / "model.int8.onnx")).graph.initializer
                  if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
        assert (onnx.TensorProto.FLOAT16 in floats) == (expected == "fp16")
    with pytest.raises(EffedgeError, match="--high-precision fp16 needs opset 19"):
        PrecisionOptions(precision="int8", high_precision="fp16", opset=17).validate()


def test_qdq_summary_counts_every_int8_convolution_of_the_graph():
    """Counted per node of the written graph, not per name: two Q/DQ-fed convolutions with one name are two."""
    from onnx import TensorProto, helper

    def dequantized(name):
        return [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), f"{name}/q"),
                numpy_helper.from_array(np.ones(2, np.float32), f"{name}/scale")]

    inits = dequantized("w1") + dequantized("w2") + [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                                                     numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
    for w in ("w1", "w2"):
        nodes.append(helper.make_node("DequantizeLinear", [f"{w}/q", f"{w}/scale"], [f"{w}/d"], axis=0))
        nodes.append(helper.make_node("Conv", ["xd", f"{w}/d"], [f"y_{w}"], name="/model/class_net/predict/Conv"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info(f"y_{w}", TensorProto.FLOAT, None) for w in ("w1", "w2")],
                              inits)
    summary = qdq.summary(helper.make_model(graph))
    assert summary["convolutions"] == summary["convolutions_int8"] == 2
    assert summary["int8_groups"] == [("class_net", 2)]


def test_the_shipped_photos_give_stable_figures_on_enough_held_out_views(tmp_path, monkeypatch):
    """calib/ holds out one of its eight photos: fidelity is measured on eight views of it (crops, mirrors),
    none of them a calibration photo, and a second run gives the same figures."""
    from effedge.quantize.images import DEFAULT_CALIB_DIR, MIN_HOLDOUT_VIEWS, ImageSet

    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    onnx.save(tiny_detector(stride=8, gain=8.0, bias=-2.0), str(tmp_path / "model.sim.onnx"))
    first, second = (convert(tmp_path / "model.sim.onnx", tmp_path / out, options=PrecisionOptions(precision="fp16"))
                     for out in ("a", "b"))
    assert first["holdout"] == {"photos": 1, "views": 8, "views_per_photo": 8, "minimum_views": MIN_HOLDOUT_VIEWS}
    assert first["fidelity"]["images"] == 8
    images = ImageSet.from_folder(DEFAULT_CALIB_DIR)
    assert first["holdout_images"] == [p.name for p in images.holdout]
    assert {v.path for v in images.holdout_views()} == set(images.holdout)
    assert not set(images.holdout) & set(images.calibration)
    assert first["fidelity"] == second["fidelity"]


@pytest.mark.parametrize("gain, bias, random_weights, build_json, expected", [
    (8.0, -2.0, None, None, "f1"),  # 16 anchors, decisive scores: an F1 figure
    (8.0, -2.0, None, {"weights": "random"}, "random weights"),  # exported without weights (build.json)
    (8.0, -2.0, True, None, "random weights"),  # or the options say so
    (1e-3, 0.2, None, None, "near-tied"),  # 256 anchors × 2 classes at 0.55: the 100-detection limit cuts a tie
    (1e-3, -5.0, None, None, "detects nothing"),
])
def test_detection_agreement_is_reported_only_where_fp32_detections_decide(tmp_path, monkeypatch, gain, bias,
                                                                            random_weights, build_json, expected):
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    stride = 2 if expected == "near-tied" else 8
    onnx.save(tiny_detector(stride=stride, gain=gain, bias=bias), str(tmp_path / "model.sim.onnx"))
    if build_json:
        (tmp_path / "build.json").write_text(json.dumps({"effedge_manifest": 1, **build_json}))
    told = {} if random_weights is None else {"random_weights": random_weights}
    report = convert(tmp_path / "model.sim.onnx", options=PrecisionOptions(precision="fp16", **told))
    fidelity = report["fidelity"]
    assert fidelity["outputs"]["class_logits"]["sqnr_db"] > 40  # SQNR is reported either way
    recorded = json.loads((tmp_path / "build.json").read_text())["precisions"]["fp16"]["fidelity"]
    assert recorded["detection_agreement"] == fidelity["detection_agreement"]
    if expected == "f1":
        agreement = fidelity["detection_agreement"]
        assert agreement["fp32"] > 0 and agreement["fp32_fragile"] <= agreement["fp32"] / 2
        assert agreement["f1"] > 0.9 and "detection_agreement_note" not in fidelity
    else:
        assert fidelity["detection_agreement"] is None and expected in fidelity["detection_agreement_note"]
        assert recorded["detection_agreement_note"] == fidelity["detection_agreement_note"]


def test_linear_dead_end_cleanup_gives_modelopts_own_result():
    """effedge's one-pass replacement for ModelOpt's quadratic dead-end cleanup changes the speed, not the graph:
    on a graph with a dead-end branch (and an output fed straight by a node), both give the same bytes."""
    from modelopt.onnx.autocast import convert_to_f16

    from effedge.quantize.precision import linear_dead_end_cleanup

    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu"),
             helper.make_node("Sigmoid", ["x"], ["unused"], name="dead_end"),
             helper.make_node("Tanh", ["c"], ["z"], name="to_output")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", 1, [1, 4, 8, 8]),
                               helper.make_tensor_value_info("z", 1, [1, 4, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    reference = convert_to_f16(copy.deepcopy(model), keep_io_types=True)
    with linear_dead_end_cleanup():
        ours = convert_to_f16(copy.deepcopy(model), keep_io_types=True)
    assert ours.SerializeToString() == reference.SerializeToString()
    assert "dead_end" not in {n.name for n in ours.graph.node} and {o.name for o in ours.graph.output} == {"y", "z"}
    from modelopt.onnx.autocast.precisionconverter import PrecisionConverter
    assert PrecisionConverter._cleanup_no_consumer_nodes.__module__.startswith("modelopt")  # restored


def _placement_graph():
    """A little of everything ModelOpt's placement looks at: SiLU convolutions, a squeeze-excitation gate, a residual
    Add, pooling, resizing and a concatenation (shared scales)."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (16, 3, 3, 3), "w2": (16, 16, 3, 3), "wse1": (4, 16, 1, 1), "wse2": (16, 4, 1, 1),
              "w3": (16, 16, 1, 1), "w4": (16, 32, 3, 3)}
    weights = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n) for n, s in shapes.items()]
    weights.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    node = helper.make_node
    nodes = [node("Conv", ["images", "w1"], ["c1"], pads=[1, 1, 1, 1], name="stem/conv"),
             node("Sigmoid", ["c1"], ["s1"], name="stem/sigmoid"), node("Mul", ["c1", "s1"], ["a1"], name="stem/mul"),
             node("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="block/conv"),
             node("GlobalAveragePool", ["c2"], ["g"], name="block/se/pool"),
             node("Conv", ["g", "wse1"], ["g1"], name="block/se/reduce"), node("Relu", ["g1"], ["g2"], name="block/se/relu"),
             node("Conv", ["g2", "wse2"], ["g3"], name="block/se/expand"),
             node("Sigmoid", ["g3"], ["gate"], name="block/se/gate"), node("Mul", ["c2", "gate"], ["se"], name="block/se/mul"),
             node("Add", ["se", "a1"], ["res"], name="block/residual"),
             node("MaxPool", ["res"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="fpn/pool"),
             node("Conv", ["p", "w3"], ["c3"], name="fpn/conv"),
             node("Resize", ["c3", "", "scales"], ["up"], mode="nearest", name="fpn/resize"),
             node("Concat", ["up", "res"], ["cat"], axis=1, name="fpn/concat"),
             node("Conv", ["cat", "w4"], ["out"], pads=[1, 1, 1, 1], name="head/conv")]
    graph = helper.make_graph(nodes, "placement", [helper.make_tensor_value_info("images", 1, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("out", 1, [1, 16, 32, 32])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _placed_by_modelopt(path, out, shape, skip_calibration: bool):
    import contextlib

    from effedge.quantize.precision import _modelopt, linear_dead_end_cleanup, placement_without_calibration

    _, quantize = _modelopt()
    patch = placement_without_calibration() if skip_calibration else contextlib.nullcontext()
    with linear_dead_end_cleanup(), patch:
        quantize(str(path), quantize_mode="int8", calibration_data={"images": np.zeros(shape, np.float32)},
                 calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp16", output_path=str(out),
                 log_level="CRITICAL")
    return onnx.load(str(out))


def _same_graph_with_the_same_ranges(ours, reference) -> bool:
    tensors = sorted(qdq.activation_quantizers(reference))
    assert sorted(qdq.activation_quantizers(ours)) == tensors and len(tensors) >= 5
    amax = {name: 0.5 + i / 64 for i, name in enumerate(tensors)}
    for model in (ours, reference):
        qdq.set_activation_ranges(model, amax)
    return ours.SerializeToString() == reference.SerializeToString()


def test_placement_without_modelopts_calibration_gives_its_graph(tmp_path, monkeypatch):
    """ModelOpt's own calibration pass is skipped (effedge overwrites every activation scale): with effedge's ranges
    written in, the graph is byte for byte the one ModelOpt places after calibrating, and ORT's calibrator is
    restored afterwards."""
    from modelopt.onnx.quantization import ort_patching
    from onnxruntime.quantization import calibrate

    for name in ("a", "b"):
        onnx.save(_placement_graph(), str(tmp_path / f"{name}.onnx"))
    shape = (1, 3, 32, 32)

    def calibrating(*args, **kwargs):
        raise AssertionError("ModelOpt ran its calibration pass")

    with monkeypatch.context() as patch:  # ModelOpt installs this as ORT's collect_data at each quantize
        patch.setattr(ort_patching, "_collect_data_minmax_calibrator", calibrating)
        ours = _placed_by_modelopt(tmp_path / "a.onnx", tmp_path / "ours.onnx", shape, skip_calibration=True)
    assert calibrate.create_calibrator is ort_patching._create_calibrator_with_extra_options  # restored
    reference = _placed_by_modelopt(tmp_path / "b.onnx", tmp_path / "reference.onnx", shape, skip_calibration=False)
    assert _same_graph_with_the_same_ranges(ours, reference)


@pytest.mark.slow
def test_placement_without_calibration_on_d0_gives_modelopts_graph(workspace, tmp_path):
    import shutil

    for name in ("a", "b"):
        shutil.copyfile(workspace[0] / "build" / "model.sim.onnx", tmp_path / f"{name}.onnx")
    shape = (1, 3, 128, 128)
    ours = _placed_by_modelopt(tmp_path / "a.onnx", tmp_path / "ours.onnx", shape, skip_calibration=True)
    reference = _placed_by_modelopt(tmp_path / "b.onnx", tmp_path / "reference.onnx", shape, skip_calibration=False)
    assert _same_graph_with_the_same_ranges(ours, reference)


def test_placement_patch_of_overlapping_threads_leaves_modelopts_calibrator(tmp_path):
    """Two threads placing Q/DQ at once: the second must not take the first's patch for ModelOpt's calibrator and
    put it back for good (every later ModelOpt int8 quantization in the process would get [-1, 1] ranges)."""
    import threading

    from modelopt.onnx.quantization import ort_patching

    from effedge.quantize.precision import placement_without_calibration

    original = ort_patching._create_calibrator_with_extra_options
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with placement_without_calibration():
            entered.set()
            release.wait(5)

    with placement_without_calibration():
        thread = threading.Thread(target=other)
        thread.start()
        entered.wait(0.3)  # without a lock the other thread patches over this one's patch here
    release.set()
    thread.join(5)
    assert ort_patching._create_calibrator_with_extra_options is original
