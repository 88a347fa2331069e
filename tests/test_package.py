"""effedge package (Triton): configs parse with Triton's own schema and match build.json."""
import json

import pytest

from effedge.errors import EffedgeError
from effedge.package import package_triton

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402


def build_dir(tmp_path, deployable, backend=None, nms="none", batch=None):
    manifest = {"variant": "d0", "nms": nms, "batch": batch or {"static": 1},
                "compile": {"deployable": deployable, "config": {"max_detections": 100}},
                "graph": {"simplified": {"inputs": [{"name": "images", "shape": [1, 3, 128, 128], "dtype": "float32"}],
                                         "outputs": [{"name": "boxes", "shape": [1, 3069, 4], "dtype": "float32"},
                                                     {"name": "scores", "shape": [1, 3069, 90], "dtype": "float32"}]}}}
    if deployable.endswith(".engine"):
        manifest["engines"] = {deployable: {"backend": backend, "compute_capability": "8.7", "options": {}}}
    (tmp_path / "build.json").write_text(json.dumps(manifest))
    (tmp_path / deployable).write_bytes(b"model")
    return tmp_path


def parse(path):
    return text_format.Parse((path / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_onnxruntime_build_static_batch(tmp_path):
    (tmp_path / "b").mkdir()
    summary = package_triton(build_dir(tmp_path / "b", "model.fp32.onnx"), tmp_path / "repo")
    config = parse(tmp_path / "repo" / "d0")
    assert summary["platform"] == config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 3, 128, 128]
    assert [o.name for o in config.output] == ["boxes", "scores"]
    assert (tmp_path / "repo" / "d0" / "1" / "model.onnx").read_bytes() == b"model"


def test_tensorrt_engine_dynamic_batch_nms(tmp_path):
    (tmp_path / "b").mkdir()
    package_triton(build_dir(tmp_path / "b", "model.fp16.engine", "tensorrt", "efficientnms",
                             {"min": 1, "opt": 2, "max": 4}), tmp_path / "repo", name="det")
    config = parse(tmp_path / "repo" / "det")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
    assert list(config.input[0].dims) == [3, 128, 128]
    assert [o.name for o in config.output][0] == "num_detections"
    assert config.cc_model_filenames["8.7"] == "model.plan"
    assert list(config.dynamic_batching.preferred_batch_size) == [2]


def test_tensorrt_rtx_and_missing_build_are_refused(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(EffedgeError, match="TensorRT-RTX"):
        package_triton(build_dir(tmp_path / "b", "model.fp16.engine", "tensorrt-rtx"), tmp_path / "repo")
    with pytest.raises(EffedgeError, match="not an effedge build directory"):
        package_triton(tmp_path / "nothing", tmp_path / "repo")
    assert not (tmp_path / "repo" / "d0").exists()
