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
