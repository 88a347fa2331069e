"""effedge compile on a CPU-only machine: ONNX Runtime backend, cache hits, clear failures."""
import json

import numpy as np
import onnx
import pytest
from helpers import check_hashes_name_their_files, effedge_cli, fake_export, overflowing_model, photo, photo_folder, tiny_model
from PIL import Image

from effedge.runtime.onnxruntime import OnnxRuntimeRunner
from effedge.export import torch_runner
from effedge.errors import EffedgeError
from effedge.pipeline.compile import CompileConfig, choose_backend, compile_model


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))



def test_auto_backend_without_tensorrt_is_onnxruntime_and_says_why():
    pytest.importorskip("onnxruntime")
    if __import__("importlib").util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; this test covers machines without it")
    choice = choose_backend("auto")
    assert choice.name == "onnxruntime" and "TensorRT is not installed" in choice.reason
    with pytest.raises(EffedgeError, match="TensorRT is not installed"):
        choose_backend("tensorrt")


def test_compile_fp32_runs_and_second_run_is_a_cache_hit(tmp_path, private_cache, monkeypatch):
    from effedge.arch import scaling

    messages = []
    lookups = []
    lookup = scaling._lookup
    monkeypatch.setattr(scaling, "_lookup", lambda variant: lookups.append(variant) or lookup(variant))
    config = CompileConfig(variant="d0", precision="fp32", image_size=128, score_threshold=0.3)
    first = compile_model(config, tmp_path / "build", log=messages.append)
    assert lookups == ["d0"]  # resolved once at compile's entry, the spec passed on to export and models
    monkeypatch.undo()
    assert first["backend"] == "onnxruntime" and first["nms"] == "onnx"
    assert any(m.startswith("backend: onnxruntime") for m in messages)
    deployable = tmp_path / "build" / first["compile"]["deployable"]
    with OnnxRuntimeRunner(deployable) as runner:
        outputs = runner.infer({"images": np.zeros((1, 3, 128, 128), np.float32)})
    assert set(outputs) == {"selected_indices", "detection_boxes", "detection_scores"}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cache hit re-ran a stage")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("effedge.export.onnx_export.export", must_not_run)
        patch.setattr("effedge.quantize.precision.convert", must_not_run)
        second = compile_model(config, tmp_path / "build")
    assert second["compile"]["cache_hit"] is True
    assert second["compile"]["key"] == first["compile"]["key"]
    # a changed artefact is noticed: the next run rebuilds instead of trusting the manifest
    deployable.write_bytes(deployable.read_bytes() + b"\0")
    assert compile_model(config, tmp_path / "build")["compile"]["cache_hit"] is False


def test_compile_int8_cli_on_cpu(tmp_path, private_cache):
    out = tmp_path / "int8"
    args = ["compile", "--variant", "d0", "--precision", "int8", "--imgsz", "128", "--out", str(out)]
    first = effedge_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "backend: onnxruntime (TensorRT is not installed here" in first.stderr or "no CUDA GPU" in first.stderr
    assert "built in" in first.stdout
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["precisions"]["int8"]["qdq"]["convolutions_int8"] == 214
    # every hash names its file and is that file's (the int8 graph's: after its NMS tail was appended)
    assert check_hashes_name_their_files(out) >= 4
    assert manifest["precisions"]["int8"]["nms_tail"] == "onnx"
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    int8_convs = sum(all(producers.get(i) == "DequantizeLinear" for i in n.input[:2])
                     for n in graph.node if n.op_type == "Conv")
    assert manifest["precisions"]["int8"]["qdq"]["convolutions_int8"] == int8_convs
    second = effedge_cli(*args)
    assert second.returncode == 0 and "cache hit" in second.stdout
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": np.zeros((1, 3, 128, 128), np.float32)})[0].shape[1] == 3


def test_compile_tensorrt_without_tensorrt_fails_in_one_line(tmp_path):
    if __import__("importlib").util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    result = effedge_cli("compile", "--variant", "d0", "--backend", "tensorrt", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[effedge]")]
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0]
    assert not (tmp_path / "x").exists()


def test_failed_compile_leaves_no_build_directory(tmp_path, private_cache, monkeypatch):
    """Calibration fails after the export and the Q/DQ placement have written files: none of them is left.
    (A two-convolution graph stands in for the export, so the failure comes in seconds.)"""
    monkeypatch.setattr("effedge.export.onnx_export.export", fake_export(tiny_model(1)))
    broken = tmp_path / "images"
    broken.mkdir()
    for i in range(3):  # readable JPEG headers (past the up-front check), image data cut off: fails mid-build
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8)).save(broken / f"{i}.jpg")
        data = (broken / f"{i}.jpg").read_bytes()
        (broken / f"{i}.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(EffedgeError, match="could be read"):
        compile_model(CompileConfig(variant="d0", precision="int8", nms="none", calib_dir=str(broken),
                                    backend="onnxruntime"), tmp_path / "build")
    assert not (tmp_path / "build").exists()
    assert any((tmp_path / "cache" / "placement").iterdir())  # it did get past the placement


def test_compile_warns_about_nonfinite_outputs_and_records_it(tmp_path, private_cache, monkeypatch):
    monkeypatch.setattr("effedge.export.onnx_export.export", fake_export(overflowing_model()))
    messages = []
    manifest = compile_model(CompileConfig(variant="d0", precision="int8", nms="none", backend="onnxruntime"),
                             tmp_path / "build", log=messages.append)
    warned = [m for m in messages if m.startswith("warning: int8 gives non-finite values")]
    assert len(warned) == 1
    recorded = json.loads((tmp_path / "build" / "build.json").read_text())
    assert recorded["warnings"] == manifest["warnings"] == [warned[0][len("warning: "):]]
    assert recorded["precisions"]["int8"]["fidelity"]["nonfinite"]["inverse"] > 0


def test_int8_for_onnxruntime_is_right_in_a_default_session(tmp_path, private_cache):
    """A user opens the compiled int8 graph with a plain onnxruntime.InferenceSession (default options, as Triton
    or an app would): it must agree with fp32 as well as effedge's own measurement says."""
    import onnxruntime as ort

    images = photo_folder(tmp_path / "images", 10, (160, 120))
    from helpers import random_weights
    import torch

    torch.save(random_weights("d0", 128), tmp_path / "d0.pth")
    manifest = compile_model(CompileConfig(variant="d0", precision="int8", image_size=128, nms="none",
                                           weights=str(tmp_path / "d0.pth"), calib_dir=str(images), holdout=3,
                                           backend="onnxruntime"), tmp_path / "build")
    report = manifest["precisions"]["int8"]
    assert report["high_precision"]["dtype"] == "fp32" and "ONNX Runtime" in report["high_precision"]["reason"]
    from effedge.quantize.images import ImageSet

    held_out = ImageSet.from_folder(images, holdout=3)
    assert [str(p.relative_to(images)) for p in held_out.holdout] == report["holdout_images"]
    default = ort.InferenceSession(str(tmp_path / "build" / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(tmp_path / "build" / "model.sim.onnx"), providers=["CPUExecutionProvider"])
    signal = error = 0.0
    for batch in held_out.batches(held_out.holdout_views(), (128, 128), "float"):
        (expected,) = fp32.run(["class_logits"], {"images": batch})
        (got,) = default.run(["class_logits"], {"images": batch})
        signal += float((expected.astype(np.float64) ** 2).sum())
        error += float(((expected.astype(np.float64) - got) ** 2).sum())
    default_sqnr = 10 * np.log10(signal / error)
    measured = report["fidelity"]["outputs"]["class_logits"]["sqnr_db"]
    assert default_sqnr > measured - 1.0, (default_sqnr, measured)  # the default session is not worse


def test_efficientnms_is_refused_on_onnxruntime(tmp_path):
    with pytest.raises(EffedgeError, match="ONNX Runtime cannot run"):
        compile_model(CompileConfig(variant="d0", precision="fp32", nms="efficientnms", backend="onnxruntime"),
                      tmp_path / "x")


def test_doctor_reports_backends():
    result = effedge_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = {b["name"]: b for b in report["backends"]}
    assert names["onnxruntime"]["available"] and "int8" in names["onnxruntime"]["precisions"]
    assert report["versions"]["onnxruntime"] and report["versions"]["effedge"]
    if __import__("importlib").util.find_spec("tensorrt") is None:  # this machine: the reason must say why
        assert not names["tensorrt"]["available"] and "TensorRT is not installed" in names["tensorrt"]["reason"]
        assert names["tensorrt"]["precisions"] == []


def test_torch_runner_reproduces_the_onnx_export(tmp_path):
    from effedge.export.onnx_export import ExportOptions, export

    manifest = export("d0", tmp_path, options=ExportOptions(image_size=128))
    images = np.random.default_rng(0).standard_normal((1, 3, 128, 128)).astype(np.float32)
    with torch_runner(manifest) as torch_runner_, OnnxRuntimeRunner(tmp_path / "model.sim.onnx") as ort_runner:
        a, b = torch_runner_.infer({"images": images}), ort_runner.infer({"images": images})
    assert set(a) == set(b)
    assert max(float(np.abs(a[k] - b[k]).max() / max(1.0, np.abs(b[k]).max())) for k in a) < 1e-4


def test_runner_checks_inputs(tmp_path):
    from effedge.export.onnx_export import ExportOptions, export

    export("d0", tmp_path, options=ExportOptions(image_size=128))
    with OnnxRuntimeRunner(tmp_path / "model.sim.onnx") as runner:
        with pytest.raises(EffedgeError, match="has shape"):
            runner.infer({"images": np.zeros((1, 3, 64, 64), np.float32)})
        with pytest.raises(EffedgeError, match="is float64"):
            runner.infer({"images": np.zeros((1, 3, 128, 128))})


def test_compile_and_quantize_say_what_was_held_out_and_why_there_is_no_detection_figure(tmp_path, private_cache,
                                                                                        monkeypatch):
    """A random-weights build on calib/: both summaries name the 8 held-out views of 1 photo and say why detection
    agreement is not reported (build.json holds the same); the SQNR is still there."""
    from click.testing import CliRunner
    from helpers import tiny_detector

    from effedge.cli import cli

    monkeypatch.setattr("effedge.export.onnx_export.export", fake_export(tiny_detector(8, 8.0, -2.0), weights="random"))
    compiled = CliRunner().invoke(cli, ["compile", "--variant", "d0", "--precision", "fp16", "--nms", "none",
                                        "--backend", "onnxruntime", "--out", str(tmp_path / "build")])
    assert compiled.exit_code == 0, compiled.output
    quantized = CliRunner().invoke(cli, ["quantize", str(tmp_path / "build" / "model.sim.onnx"), "--precision", "fp16",
                                         "--out", str(tmp_path / "again")])
    assert quantized.exit_code == 0, quantized.output
    for output in (compiled.output, quantized.output):
        assert "8 held-out view(s) of 1 photo(s) (8 crops/mirrors each)" in output
        assert "detection agreement not reported: random weights" in output
    assert "worst SQNR" in compiled.output and "class_logits    SQNR" in quantized.output
    recorded = json.loads((tmp_path / "build" / "build.json").read_text())["precisions"]["fp16"]
    assert recorded["holdout"]["views"] == 8 and recorded["fidelity"]["detection_agreement"] is None
    assert recorded["fidelity"]["detection_agreement_note"].startswith("random weights")
