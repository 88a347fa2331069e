"""Export: graph rules on D0, parity for every named variant, dynamic batch, NMS tails, bad input."""
import json

import numpy as np
import onnx
import pytest
import torch
from helpers import effedge_cli, random_weights, raw_outputs_graph

from effedge import build_model
from effedge.runtime.onnxruntime import OnnxRuntimeRunner
from effedge.export.onnx_export import ExportOptions, example_input, export
from effedge.export.nms_tail import PRE_NMS_TOP
from effedge.runtime.nms import batched_nms
from effedge.runtime.preprocess import normalize
from effedge.arch.scaling import NAMED_VARIANTS

FORBIDDEN = ("Pad", "BatchNormalization", "Div", "ReduceSum", "Unsqueeze", "Shape", "Gather", "ConstantOfShape")




def run(path, images):
    with OnnxRuntimeRunner(path) as runner:
        return runner.infer({"images": images})


@pytest.fixture(scope="module")
def d0_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("d0")
    manifest = export("d0", out, weights=random_weights("d0"))
    return out, manifest


def test_d0_graph_is_lean_and_static(d0_export):
    out, manifest = d0_export
    model = onnx.load(str(out / "model.sim.onnx"))
    ops = [node.op_type for node in model.graph.node]
    assert {op: ops.count(op) for op in FORBIDDEN if op in ops} == {}
    assert len(ops) <= 600, len(ops)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    # manifest agrees with the file and records what the issue asks for
    recorded = json.loads((out / "build.json").read_text())
    assert recorded["graph"]["simplified"]["nodes"] == len(ops)
    assert recorded["graph"]["simplified"]["ops"]["Conv"] == ops.count("Conv")
    assert recorded["graph"]["raw"]["nodes"] > len(ops)
    assert set(recorded["artifacts"]) == {"model.onnx", "model.sim.onnx"}
    assert len(recorded["artifacts"]["model.sim.onnx"]["sha256"]) == 64
    assert recorded["params"] == 3_880_067 and recorded["versions"]["onnx"] == onnx.__version__
    outputs = {o["name"]: o["shape"] for o in recorded["graph"]["simplified"]["outputs"]}
    assert outputs == {"class_logits": [1, 49104, 90], "box_regression": [1, 49104, 4],
                       "boxes": [1, 49104, 4], "scores": [1, 49104, 90]}


def test_d0_parity_is_recorded_and_holds(d0_export):
    out, manifest = d0_export
    parity = {p["output"]: p for p in manifest["parity"]}
    assert set(parity) == {"class_logits", "box_regression", "boxes", "scores"}
    for name in ("class_logits", "box_regression", "scores"):  # raw outputs: absolute 1e-4
        assert parity[name]["max_abs_diff"] <= 1e-4 and parity[name]["tolerance"] <= 1e-4 * parity[name]["scale"]
    assert parity["class_logits"]["scale"] > 1  # realistic magnitudes, not near-zero outputs
    # independent check: run the file against the PyTorch model with the checkpoint's weights
    model = build_model("d0", weights=random_weights("d0"))
    images = example_input((512, 512), 1, "float", seed=5)
    with torch.no_grad():
        class_levels, _ = model(torch.from_numpy(images))
    got = run(out / "model.sim.onnx", images)["class_logits"]
    expected = torch.cat([t.permute(0, 2, 3, 1).reshape(1, -1, 90) for t in class_levels], 1).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_decoded_boxes_follow_the_anchors(d0_export):
    """With zero regression the decoded boxes are the anchors themselves (x1, y1, x2, y2)."""
    from effedge.arch.anchors import anchors_for
    from effedge.arch.scaling import resolve

    out, _ = d0_export
    outputs = run(out / "model.sim.onnx", example_input((512, 512), 1, "float", seed=1))
    dx, dy, dw, dh = np.moveaxis(outputs["box_regression"][0], -1, 0)
    anchors = anchors_for(resolve("d0"))  # (y1, x1, y2, x2)
    ha, wa = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cy, cx = anchors[:, 0] + ha / 2 + dy * ha, anchors[:, 1] + wa / 2 + dx * wa
    h, w = np.exp(dh) * ha, np.exp(dw) * wa
    expected = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    np.testing.assert_allclose(outputs["boxes"][0], expected, rtol=1e-4, atol=1e-2)


def _reduced_size(name):
    spec = NAMED_VARIANTS[name]
    if getattr(spec, "lite", False) and hasattr(spec, "size_multiple"):
        return 5 * spec.size_multiple  # 160: P7 2, P6 3, P5 5, so up-sampling 2→3 and 3→5 (not ×2), as at 320
    return getattr(spec, "largest_stride", 64)


SLOW_EXPORTS = {"b6", "b7", "d2", "d3", "d4", "d5", "d6", "d7", "d7x",  # 15-35 s each on 2 cores; d0, d1, b0-b5 and
                "d-lite1", "d-lite2", "d-lite3", "d-lite3x", "d-lite4"}  # the fractional φ exports, d-lite0 and
# lite0-4 cover the same scaling paths in the default run (the Lite detectors' parity at their real sizes is
# tests/test_checkpoint.py's)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EXPORTS else n
                                  for n in NAMED_VARIANTS])
def test_every_named_variant_exports_with_parity(name, tmp_path):
    size = _reduced_size(name)  # reduced input for speed; tools/export_all.py runs the full sizes
    manifest = export(name, tmp_path, weights=random_weights(name, size), options=ExportOptions(image_size=size))
    assert all(p["max_abs_diff"] <= p["tolerance"] for p in manifest["parity"])
    assert manifest["parity"][0]["scale"] >= 1
    ops = manifest["graph"]["simplified"]["ops"]
    assert not any(op in ops for op in FORBIDDEN), ops


LITE_OPS = {"Conv", "Clip", "Add", "MaxPool", "Resize", "ReduceMean", "Gemm",  # the network
            "Reshape", "Concat", "Transpose", "Split", "Mul", "Exp", "Sub", "Sigmoid"}  # the detector's output tail


def _lite_activations_are_relu6(model):
    """ReLU6 is Clip(0, 6) with constant bounds (TensorRT fuses it into the convolution); no SiLU's Sigmoid·Mul."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    clips = [node for node in model.graph.node if node.op_type == "Clip"]
    assert clips and {tuple(float(constants[name]) for name in node.input[1:]) for node in clips} == {(0.0, 6.0)}
    return clips


def test_lite_classifier_exports_relu6_and_nothing_odd(tmp_path):
    manifest = export("lite0", tmp_path, weights=random_weights("lite0"))
    model = onnx.load(str(tmp_path / "model.sim.onnx"))
    ops = [node.op_type for node in model.graph.node]
    assert set(ops) <= LITE_OPS and "Sigmoid" not in ops, sorted(set(ops) - LITE_OPS)
    assert len(_lite_activations_are_relu6(model)) == 33  # stem, 2 per DS block... every BN+act: 1 + 2 + 15·2 = 33
    assert all(p["max_abs_diff"] <= p["tolerance"] for p in manifest["parity"])


def test_lite_detector_at_320_exports_as_effdet_builds_it(tmp_path, effdet_reference):
    """d-lite0 at its 320 px: P6/P7 round up (5², 3²), the 3→5 up-sampling is a Resize to a constant size, the
    activations are Clip(0, 6), and with zero regression the decoded boxes are effdet's anchors for 320 px."""
    from effdet.anchors import Anchors

    from effedge.arch.scaling import resolve

    manifest = export("d-lite0", tmp_path, weights=random_weights("d-lite0", 320),
                      options=ExportOptions(image_size=320))
    model = onnx.load(str(tmp_path / "model.sim.onnx"))
    ops = [node.op_type for node in model.graph.node]
    assert set(ops) <= LITE_OPS and ops.count("Sigmoid") == 1, sorted(set(ops) - LITE_OPS)  # Sigmoid: the scores
    _lite_activations_are_relu6(model)
    constants = {i.name for i in model.graph.initializer}
    assert all(all(name in constants for name in node.input[1:] if name)
               for node in model.graph.node if node.op_type == "Resize")  # static: no shape arithmetic
    assert all(p["max_abs_diff"] <= p["tolerance"] for p in manifest["parity"])
    outputs = run(tmp_path / "model.sim.onnx", example_input((320, 320), 1, "float", seed=2))
    assert outputs["boxes"].shape == (1, 9 * (40**2 + 20**2 + 10**2 + 5**2 + 3**2), 4)
    spec = resolve("d-lite0")
    y1, x1, y2, x2 = Anchors(spec.min_level, spec.max_level, spec.num_scales, list(spec.aspect_ratios),
                             spec.anchor_scale, (320, 320)).boxes.numpy().T
    dx, dy, dw, dh = np.moveaxis(outputs["box_regression"][0], -1, 0)
    ha, wa = y2 - y1, x2 - x1
    cy, cx = y1 + ha / 2 + dy * ha, x1 + wa / 2 + dx * wa
    h, w = np.exp(dh) * ha, np.exp(dw) * wa
    expected = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    np.testing.assert_allclose(outputs["boxes"][0], expected, rtol=1e-4, atol=1e-2)


def test_dynamic_batch_runs_at_batch_1_and_4(tmp_path):
    export("d0", tmp_path, weights=random_weights("d0", 256),
           options=ExportOptions(image_size=256, dynamic_batch=(1, 2, 4)))
    model = onnx.load(str(tmp_path / "model.sim.onnx"))
    assert not any(node.op_type in ("Shape", "Gather", "ConstantOfShape") for node in model.graph.node)
    four = example_input((256, 256), 4, "float", seed=3)
    batched = run(tmp_path / "model.sim.onnx", four)
    single = run(tmp_path / "model.sim.onnx", four[2:3])
    assert batched["class_logits"].shape == (4, 49104 // 4, 90)
    np.testing.assert_allclose(single["class_logits"][0], batched["class_logits"][2], atol=1e-5)


@pytest.fixture(scope="module")
def d0_formats(tmp_path_factory):
    """D0 at 128 px in each input format (float, uint8, pixels), the same random weights."""
    root = tmp_path_factory.mktemp("formats")
    weights = random_weights("d0", 128)
    for input_format in ("float", "uint8", "pixels"):
        export("d0", root / input_format, weights=weights,
               options=ExportOptions(image_size=128, input_format=input_format))
    return root


def test_uint8_input_normalizes_in_the_graph(d0_formats):
    pixels = example_input((128, 128), 1, "uint8", seed=4)
    from_uint8 = run(d0_formats / "uint8" / "model.sim.onnx", pixels)
    from_float = run(d0_formats / "float" / "model.sim.onnx", normalize(pixels))
    np.testing.assert_allclose(from_uint8["class_logits"], from_float["class_logits"], atol=1e-4)
    manifest = json.loads((d0_formats / "uint8" / "build.json").read_text())
    assert manifest["input"]["layout"] == "NHWC" and manifest["graph"]["simplified"]["inputs"][0]["dtype"] == "uint8"


def test_pixels_input_normalizes_float_pixel_values_in_the_graph(d0_formats):
    """--input-format pixels: NCHW float32 RGB 0-255 in, ImageNet's normalization inside; it answers as the
    float graph fed the same pixels normalized, and build.json and the metadata say so. (Random D0 weights barely
    follow the image: tests/test_normalization.py shows on an input-sensitive lite0 that the constants matter.)"""
    pixels = example_input((128, 128), 1, "uint8", seed=4)
    as_values = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
    from_pixels = run(d0_formats / "pixels" / "model.sim.onnx", as_values)
    from_float = run(d0_formats / "float" / "model.sim.onnx", normalize(pixels))
    for name in ("class_logits", "boxes"):
        scale = max(1, np.abs(from_float[name]).max())
        np.testing.assert_allclose(from_pixels[name], from_float[name], atol=1e-4 * scale)
    manifest = json.loads((d0_formats / "pixels" / "build.json").read_text())
    assert manifest["input"]["format"] == "pixels" and manifest["input"]["layout"] == "NCHW"
    assert manifest["input"]["letterbox_fill"] == [124, 116, 104]
    assert manifest["graph"]["simplified"]["inputs"][0] == {"name": "images", "dtype": "float32",
                                                            "shape": [1, 3, 128, 128]}
    assert manifest["parity"] and all(p["max_abs_diff"] <= p["tolerance"] for p in manifest["parity"])
    props = {p.key: p.value for p in onnx.load(str(d0_formats / "pixels" / "model.sim.onnx")).metadata_props}
    assert props["effedge.input.format"] == "pixels" and props["effedge.input.layout"] == "NCHW"


def test_the_detector_gives_a_pixels_build_the_float_builds_detections(d0_formats):
    from helpers import photo

    from effedge.runtime import Detector

    images = [photo((160, 120), seed=1), photo((90, 130), seed=2)]
    results = {}
    for input_format in ("float", "pixels"):
        with Detector(d0_formats / input_format / "model.sim.onnx", score_threshold=0.2) as detector:
            assert detector.format == input_format and detector.preprocessing.source == "build.json"
            results[input_format] = detector(images)
    for ours, theirs in zip(results["pixels"], results["float"]):
        assert len(ours) == len(theirs) > 0
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-4)
        # near-tied scores may swap places: each detection has its twin (same class, same box) in the other list
        for box, cls in zip(ours.boxes, ours.classes):
            twins = np.abs(theirs.boxes - box).max(axis=1)[theirs.classes == cls]
            assert twins.size and twins.min() < 1e-2


@pytest.mark.parametrize("input_format, shape, dtype", [
    ("float", ("batch", 3, 128, 128), np.float32),
    ("uint8", ("batch", 128, 128, 3), np.uint8),
    ("pixels", ("batch", 3, 128, 128), np.float32),
])
def test_the_torch_original_takes_the_input_of_its_export(input_format, shape, dtype):
    from effedge.export import torch_runner

    manifest = {"variant": "d0", "family": "efficientdet", "resolution": [128, 128], "weights": "random",
                "input": {"format": input_format}}
    (info,) = torch_runner(manifest).input_info()
    assert info.shape == shape and info.dtype == np.dtype(dtype)


def test_a_pixels_export_packages_for_deepstream_and_the_float_one_is_refused(d0_formats, tmp_path):
    """The export's own build.json (with the compile block compile adds): nvinfer feeds the pixels D0 graph with
    scale 1 and offsets 0; the float D0 (ImageNet's per-channel std) is refused with the way out; Triton needs
    nothing new."""
    import shutil

    from effedge.errors import EffedgeError
    from effedge.package import package_deepstream, package_triton

    for input_format in ("pixels", "float"):
        build = tmp_path / input_format
        shutil.copytree(d0_formats / input_format, build)
        shutil.copy(build / "model.sim.onnx", build / "model.fp32.onnx")
        manifest = json.loads((build / "build.json").read_text())
        manifest["compile"] = {"deployable": "model.fp32.onnx",
                               "config": {"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 100}}
        (build / "build.json").write_text(json.dumps(manifest))
    summary = package_deepstream(tmp_path / "pixels", tmp_path / "out")
    config = (tmp_path / "out" / "d0" / "config_infer_primary_d0.txt").read_text().splitlines()
    assert summary["onnx"] == "model.fp32.onnx"
    for line in ("net-scale-factor=1.0", "offsets=0;0;0", "network-input-order=0", "infer-dims=3;128;128"):
        assert line in config
    with pytest.raises(EffedgeError, match="per-channel std.*--input-format pixels"):
        package_deepstream(tmp_path / "float", tmp_path / "out2")
    # Triton takes it as any float build: FP32 [1, 3, H, W]
    package_triton(tmp_path / "pixels", tmp_path / "repo")
    triton = (tmp_path / "repo" / "d0" / "config.pbtxt").read_text()
    assert 'name: "images"\n  data_type: TYPE_FP32\n  dims: [ 1, 3, 128, 128 ]' in triton


def reference_tail(boxes, scores, *, score_threshold, iou_threshold, max_per_class, top):
    """What the onnx tail must select in one image, in NumPy: the ``top`` anchors with the highest class score,
    then per-class NMS over them; rows (class, original anchor)."""
    kept = np.argsort(-scores.max(axis=1), kind="stable")[:top]
    rows = batched_nms(boxes[kept], scores[kept], score_threshold=score_threshold, iou_threshold=iou_threshold,
                       max_per_class=max_per_class)
    return sorted((int(cls), int(kept[slot])) for cls, slot in rows)


def clustered_detections(rng, batch, anchors, classes):
    """Boxes in a few overlapping clusters (NMS suppresses), scores spread so many pass the threshold; the last
    class scores lower, so its best anchors are not the image's best."""
    centres = rng.uniform(20, 100, (batch, 6, 2))[:, rng.integers(0, 6, anchors)]
    centres += rng.normal(0, 4, centres.shape)
    sizes = rng.uniform(10, 30, (batch, anchors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, anchors, classes))
    scores[..., -1] *= 0.6
    return boxes, scores.astype(np.float32)


@pytest.mark.parametrize("opset", [17, 19])  # ReduceMax's axes: an attribute up to 17, an input from 18
def test_onnx_tail_keeps_the_best_anchors_and_matches_reference_nms(monkeypatch, opset):
    """Batch 2, more anchors than the tail hands to NMS: every selected row is the reference's (top-k by the
    best class score, then per-class NMS), its anchor indexes the original anchors, and boxes and scores are
    that anchor's, as the Detector reads them."""
    from effedge.export import nms_tail
    from effedge.runtime.onnxruntime import ort_session

    monkeypatch.setattr(nms_tail, "PRE_NMS_TOP", 40)
    batch, anchors, classes = 2, 300, 3
    boxes, scores = clustered_detections(np.random.default_rng(3), batch, anchors, classes)
    model = nms_tail.append_nms_tail(raw_outputs_graph(batch, anchors, classes, opset), "onnx", score_threshold=0.3,
                                     iou_threshold=0.5, max_detections=5)
    onnx.checker.check_model(model, full_check=True)
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {"raw_boxes": boxes, "raw_scores": scores})))
    assert set(names) == {"selected_indices", "detection_boxes", "detection_scores"}
    indices = out["selected_indices"]
    for image in range(batch):
        mine = indices[:, 0] == image
        expected = reference_tail(boxes[image], scores[image], score_threshold=0.3, iou_threshold=0.5,
                                  max_per_class=5, top=40)
        assert sorted(map(tuple, indices[mine][:, 1:].tolist())) == expected
        np.testing.assert_array_equal(out["detection_boxes"][mine], boxes[image][indices[mine, 2]])
        np.testing.assert_array_equal(out["detection_scores"][mine], scores[image][indices[mine, 2], indices[mine, 1]])
        # the pre-selection took the best anchors: all of them rank among the 40 highest class scores ...
        best = scores[image].max(axis=1)
        assert (best[indices[mine, 2]] >= np.sort(best)[-40]).all()
        # ... and it mattered: over every anchor, NMS would have selected others
        assert sorted(map(tuple, batched_nms(boxes[image], scores[image], score_threshold=0.3, iou_threshold=0.5,
                                             max_per_class=5).tolist())) != expected
    assert len(indices) >= 20


def test_onnx_nms_tail_matches_reference_nms(tmp_path):
    weights = random_weights("d0", 128, seed=7)
    nms_options = dict(image_size=128, score_threshold=0.6, iou_threshold=0.5, max_detections=20)
    export("d0", tmp_path / "nms", weights=weights, options=ExportOptions(nms="onnx", **nms_options))
    # one export, two graphs: model.sim.onnx stays tail-free (quantize takes it), model.fp32.onnx has the tail
    assert not {n.op_type for n in onnx.load(str(tmp_path / "nms" / "model.sim.onnx")).graph.node} & {
        "NonMaxSuppression", "EfficientNMS_TRT"}
    images = example_input((128, 128), 2, "float", seed=8)
    images = np.concatenate([images[:1]] * 1 + [images[1:]])
    raw = {k: [] for k in ("boxes", "scores")}
    for i in range(2):  # the static-batch-1 raw model, image by image
        out = run(tmp_path / "nms" / "model.sim.onnx", images[i:i + 1])
        raw["boxes"].append(out["boxes"][0])
        raw["scores"].append(out["scores"][0])
    detections = [run(tmp_path / "nms" / "model.fp32.onnx", images[i:i + 1]) for i in range(2)]
    total = 0
    for i, det in enumerate(detections):
        expected = reference_tail(raw["boxes"][i], raw["scores"][i], score_threshold=0.6, iou_threshold=0.5,
                                  max_per_class=20, top=PRE_NMS_TOP)
        got = det["selected_indices"]
        assert (got[:, 0] == 0).all()
        assert sorted(map(tuple, got[:, 1:].tolist())) == expected
        np.testing.assert_allclose(det["detection_boxes"], raw["boxes"][i][got[:, 2]], atol=1e-3)
        np.testing.assert_allclose(det["detection_scores"], raw["scores"][i][got[:, 2], got[:, 1]], atol=1e-6)
        total += len(got)
    assert total > 5  # the comparison covered real detections, including suppressed overlaps
    assert any(len(batched_nms(raw["boxes"][i], raw["scores"][i], score_threshold=0.6, iou_threshold=1.0))
               > len(detections[i]["selected_indices"]) for i in range(2))


def test_efficientnms_tail_is_the_documented_plugin_node(tmp_path):
    export("d0", tmp_path, weights=random_weights("d0", 128),
           options=ExportOptions(image_size=128, nms="efficientnms", score_threshold=0.3, iou_threshold=0.45,
                                 max_detections=50))
    model = onnx.load(str(tmp_path / "model.fp32.onnx"))
    onnx.checker.check_model(model)
    [node] = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_version": b"1", "background_class": -1, "box_coding": 0, "score_activation": 1,
                     "class_agnostic": 0, "iou_threshold": pytest.approx(0.45), "score_threshold": pytest.approx(0.3),
                     "max_output_boxes": 50}
    assert list(node.input) == ["boxes", "class_logits"]
    outputs = {o.name: (o.type.tensor_type.elem_type, [d.dim_value for d in o.type.tensor_type.shape.dim])
               for o in model.graph.output}
    assert outputs == {"num_detections": (onnx.TensorProto.INT32, [1, 1]),
                       "detection_boxes": (onnx.TensorProto.FLOAT, [1, 50, 4]),
                       "detection_scores": (onnx.TensorProto.FLOAT, [1, 50]),
                       "detection_classes": (onnx.TensorProto.INT32, [1, 50])}
    # nothing computed only for the dropped outputs is left behind
    assert [n.op_type for n in model.graph.node].count("Sigmoid") == 118



@pytest.mark.parametrize("args, message", [
    (["--variant", "d9"], "unknown variant 'd9'; did you mean d7x?"),
    (["--phi", "-0.5"], "'--phi': -0.5 is not in the range 0.0<=x<=7.0"),
    (["--phi", "40"], "'--phi': 40.0 is not in the range 0.0<=x<=7.0"),
    (["--variant", "d0", "--imgsz", "500"], "not a multiple of 128"),
    (["--variant", "b0", "--nms", "onnx"], "--nms applies to detectors"),
    (["--variant", "d0", "--opset", "9"], "'--opset': 9 is not in the range 13<=x<=21"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = effedge_cli("export", *args, "--out", str(out))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if not line.startswith("[effedge]")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_unwritable_out_and_foreign_weights(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = effedge_cli("export", "--variant", "d0", "--imgsz", "128", "--out", str(blocker / "out"))
    assert result.returncode == 2 and "cannot write to output directory" in result.stderr
    assert "Traceback" not in result.stderr

    d1 = tmp_path / "d1.pth"
    torch.save(build_model("d1", image_size=128).state_dict(), d1)
    out = tmp_path / "out"
    result = effedge_cli("export", "--variant", "d0", "--imgsz", "128", "--weights", str(d1), "--out", str(out))
    assert result.returncode == 2 and "weights do not fit d0" in result.stderr and "BiFPN 88 ch" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_export_writes_the_build_directory(tmp_path):
    result = effedge_cli("export", "--variant", "d0", "--imgsz", "128", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["variant"] == "d0" and manifest["resolution"] == [128, 128]
    # --nms auto: the tail compile would use on this machine (onnx on ONNX Runtime), beside the tail-free graph
    assert manifest["nms"] == "onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.json", "model.fp32.onnx", "model.onnx",
                                                          "model.sim.onnx"]


def test_export_figures_describe_the_files_they_name(tmp_path):
    """With an NMS tail, the printed node count and build.json's `graph.simplified` are model.sim.onnx's (tail-free),
    `graph.tailed` is model.fp32.onnx's, and every hash is its file's."""
    from helpers import check_hashes_name_their_files

    result = effedge_cli("export", "--variant", "d0", "--imgsz", "128", "--nms", "onnx", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "build.json").read_text())
    simplified = len(onnx.load(str(tmp_path / "model.sim.onnx")).graph.node)
    tailed = len(onnx.load(str(tmp_path / "model.fp32.onnx")).graph.node)
    assert tailed > simplified
    assert manifest["graph"]["simplified"]["nodes"] == simplified and manifest["graph"]["tailed"]["nodes"] == tailed
    assert f", {simplified} nodes," in result.stdout
    assert "NonMaxSuppression" not in manifest["graph"]["simplified"]["ops"]
    assert check_hashes_name_their_files(tmp_path) == 3
