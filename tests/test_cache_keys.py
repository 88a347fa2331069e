"""Cache keys hold the tools that made an artefact and effedge's own code; a corrupt entry is recomputed."""
import json

import pytest

from effedge import provenance as manifest_module
from effedge.pipeline import compile as pipeline
from effedge.pipeline.compile import BackendChoice, CompileConfig


def _key(config=CompileConfig(variant="d0")):
    return pipeline.cache_key(config, BackendChoice("onnxruntime", "test"), "onnx", None)


@pytest.mark.parametrize("tool", ["torch", "onnx", "onnxsim", "onnxruntime", "nvidia-modelopt"])
def test_compile_key_changes_with_each_tool_version(monkeypatch, tool):
    before = _key()
    versions = manifest_module.tool_versions()
    monkeypatch.setattr(manifest_module, "tool_versions", lambda: {**versions, tool: "0.0.0-other"})
    assert _key() != before


def test_compile_key_changes_with_effedge_code(monkeypatch):
    assert manifest_module.code_fingerprint.__wrapped__() == manifest_module.code_fingerprint()  # stable
    before = _key()
    monkeypatch.setattr(manifest_module, "code_fingerprint", lambda: "another-source-tree")
    assert _key() != before


def test_compile_key_changes_with_the_engine_version():
    config = CompileConfig(variant="d0")
    keys = {pipeline.cache_key(config, BackendChoice("tensorrt-rtx", "t", version), "none", None)
            for version in ("1.7.1.116", "1.8.0.1")}
    assert len(keys) == 2


def test_corrupt_calibration_cache_is_recomputed_with_a_warning(tmp_path):
    from effedge.quantize.precision import read_calibration_cache

    path = tmp_path / "ranges.json"
    messages = []
    for broken in ("{not json", json.dumps({"amax": {"a": 1.0}}), json.dumps({"amax": {"b": 1.0}, "images": 3,
                                                                                "skipped": []})):
        path.write_text(broken)
        assert read_calibration_cache(path, ["a"], messages.append) is None
    assert len(messages) == 3 and all("recalibrating" in m for m in messages)
    path.write_text(json.dumps({"amax": {"a": 1.0}, "images": 3, "skipped": []}))
    assert read_calibration_cache(path, ["a"], messages.append)["images"] == 3


def test_identical_outputs_give_strict_json(tmp_path):
    """An infinite SQNR is null with a reason: build.json and --json stay valid JSON (no Infinity)."""
    import numpy as np

    from effedge.io import write_json
    from effedge.quantize.fidelity import FidelityMeter, min_sqnr

    meter = FidelityMeter(score_threshold=0.5)
    outputs = {"class_logits": np.ones((1, 4, 2), np.float32)}
    meter.update(outputs, outputs)
    report = meter.report()
    entry = report["outputs"]["class_logits"]
    assert entry["sqnr_db"] is None and "infinite" in entry["sqnr_note"]
    assert min_sqnr(report) == float("inf")
    json.dumps(report, allow_nan=False)
    with pytest.raises(ValueError):  # the writer refuses NaN/Infinity instead of writing invalid JSON
        write_json(tmp_path / "x.json", {"x": float("inf")})
    assert list(tmp_path.iterdir()) == []  # and leaves nothing behind


def test_compile_key_changes_with_the_gpu_compute_capability():
    """A full-TensorRT engine is tuned for the GPU it was built on: another compute capability is a miss."""
    config = CompileConfig(variant="d0", precision="fp16")
    keys = {pipeline.cache_key(config, BackendChoice("tensorrt", "t", "10.3.0", capability), "efficientnms", None)
            for capability in ("8.7", "8.6")}
    assert len(keys) == 2


def test_compile_key_follows_the_weights_content_not_their_path(tmp_path):
    first, second = tmp_path / "a.pth", tmp_path / "elsewhere.pth"
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights one")
    key = lambda path: _key(CompileConfig(variant="d0", weights=str(path)))  # noqa: E731
    assert key(first) == key(second)  # the same file under another name: a hit
    before = key(first)
    first.write_bytes(b"weights two")  # same path, new weights: a miss
    assert key(first) != before


_REAL_CACHE_KEY = pipeline.cache_key


def _compile_key(monkeypatch, tmp_path, calib_dir) -> str:
    """The key compile_model computes for an int8 build calibrated on ``calib_dir`` (the stages do not run)."""
    seen = {}

    def stop(*args, **kwargs):
        seen["key"] = _REAL_CACHE_KEY(*args, **kwargs)
        raise KeyboardInterrupt  # past the key: nothing more to see

    monkeypatch.setattr(pipeline, "cache_key", stop)
    with pytest.raises(KeyboardInterrupt):
        pipeline.compile_model(CompileConfig(variant="d0", precision="int8", backend="onnxruntime",
                                             calib_dir=str(calib_dir)), tmp_path / "build")
    return seen["key"]


def test_compile_key_follows_the_calibration_images_content_not_their_folder(tmp_path, monkeypatch):
    import shutil

    from helpers import photo
    from PIL import Image

    first = tmp_path / "first"
    first.mkdir()
    for i in range(4):
        Image.fromarray(photo(seed=i)).save(first / f"{i}.png")
    copy = tmp_path / "other" / "folder"
    shutil.copytree(first, copy)
    key = _compile_key(monkeypatch, tmp_path, first)
    assert _compile_key(monkeypatch, tmp_path, copy) == key  # the same photos elsewhere: a hit
    for i in range(4):  # other photos under the same names in the same folder: a miss
        Image.fromarray(photo(seed=50 + i)).save(copy / f"{i}.png")
    assert _compile_key(monkeypatch, tmp_path, copy) != key


def test_compile_key_follows_qad_settings_only_when_qad_is_on():
    from effedge.quantize.qad import DEFAULT_LR, DEFAULT_STEPS

    assert CompileConfig(variant="d0").qad_lr == DEFAULT_LR
    int8 = CompileConfig(variant="d0", precision="int8")
    assert _key(int8) == _key(CompileConfig(variant="d0", precision="int8", qad_lr=1e-3))  # no QAD: lr unused
    qad = CompileConfig(variant="d0", precision="int8", qad_steps=DEFAULT_STEPS)
    assert len({_key(int8), _key(qad), _key(CompileConfig(variant="d0", precision="int8", qad_steps=DEFAULT_STEPS,
                                                          qad_lr=1e-3)),
                _key(CompileConfig(variant="d0", precision="int8", qad_steps=10))}) == 4
