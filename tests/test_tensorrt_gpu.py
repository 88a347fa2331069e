"""The pycuda layer of TensorRTRunner on a real GPU: page-locked/device buffers, async copies on a stream,
dynamic input shapes and CUDA-graph capture. TensorRT itself is replaced by a minimal engine whose
execute_async_v3 enqueues a real device-to-device copy, so the data path is exercised end to end.
Skips (with the reason) where pycuda or a CUDA GPU is missing."""
import types

import numpy as np
import pytest

cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (no CUDA toolkit/GPU here)")

from effedge.backends import tensorrt as trt_backend  # noqa: E402


def _gpu_available() -> bool:
    try:
        cuda.init()
        return cuda.Device.count() > 0
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _gpu_available(), reason="no CUDA GPU visible through pycuda")


class _Context:
    def __init__(self, runner_ref):
        self.runner_ref = runner_ref
        self.addresses, self.shapes = {}, {}

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes.get("images", (4, 8))

    def execute_async_v3(self, stream_handle):
        runner = self.runner_ref()
        assert stream_handle == runner.stream.handle
        nbytes = int(np.prod(self.get_tensor_shape("images"))) * 4
        cuda.memcpy_dtod_async(self.addresses["copy"], self.addresses["images"], nbytes, runner.stream)
        return True


class _Engine:
    num_io_tensors = 2

    def __init__(self, runner_ref):
        self.context = _Context(runner_ref)

    def get_tensor_name(self, index):
        return ["images", "copy"][index]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "images" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_shape(self, name):
        return (-1, 8)

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 8), (2, 8), (4, 8)]

    def create_execution_context(self):
        return self.context


def _runner(monkeypatch, tmp_path, cuda_graph):
    engine_file = tmp_path / "double.engine"
    engine_file.write_bytes(b"not parsed by the double")
    runner = trt_backend.TensorRTRunner(engine_file, cuda_graph=cuda_graph)
    fake_trt = types.SimpleNamespace(
        __version__="10.3.0", Logger=lambda level: None, TensorIOMode=types.SimpleNamespace(INPUT="INPUT"),
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: _Engine(lambda: runner)))
    fake_trt.Logger.WARNING = 2
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake_trt)
    return runner


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_buffers_stream_and_graph_move_real_data(monkeypatch, tmp_path, cuda_graph):
    if cuda_graph:
        pytest.importorskip("cuda", reason="cuda-python is not installed (needed for CUDA graphs)")
    runner = _runner(monkeypatch, tmp_path, cuda_graph)
    with runner:
        for batch in (4, 2, 4):
            images = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
            out = runner.infer({"images": images})["copy"]
            np.testing.assert_array_equal(out, images)  # with a graph: re-captured when the shape changes
        assert runner.engine.context.shapes["images"] == (4, 8)
