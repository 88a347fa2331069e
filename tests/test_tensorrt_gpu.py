"""effedge's CUDA layer (effedge/backends/cuda.py) on a real GPU: device facts, page-locked and device
buffers, partial async copies, events, CUDA-graph capture; and TensorRTRunner's data path on it, with
TensorRT replaced by a minimal engine whose execute_async_v3 enqueues a real device-to-device copy, so
buffers, shapes, stream and graphs are exercised end to end. Skips, saying why, without a CUDA GPU."""
import re
import types

import numpy as np
import pytest

from effedge.runtime import cuda
from effedge.runtime.tensorrt import TensorRTRunner
from effedge.errors import BackendUnavailable, EffedgeError


def _gpu_or_reason():
    try:
        return cuda.device_info(0), ""
    except BackendUnavailable as exc:  # no bindings, driver or GPU; other CUDA errors are failures
        return None, str(exc)


DEVICE, REASON = _gpu_or_reason()
pytestmark = pytest.mark.skipif(DEVICE is None, reason=f"no CUDA GPU/driver: {REASON}")


def _device_to_device(api, dst: int, src: int, nbytes: int, stream) -> None:
    """An enqueued device-to-device copy standing in for a kernel (the layer itself needs none)."""
    if api.library.startswith("pycuda"):
        api.driver.memcpy_dtod_async(dst, src, nbytes, stream)
        return
    error, = api.rt.cudaMemcpyAsync(dst, src, nbytes, api.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream)
    assert int(error) == 0, error


def _needs_graphs(api):
    if not api.supports_graphs:
        pytest.skip(f"CUDA graphs need cuda-python; this machine has {api.library}")


def test_device_facts():
    assert re.fullmatch(r"\d+\.\d+", DEVICE.compute_capability)
    assert DEVICE.name and DEVICE.total_memory > 1 << 30


def test_partial_copies_and_events():
    stream = cuda.Stream()
    source, target = cuda.PinnedBuffer(1024, np.float32), cuda.PinnedBuffer(1024, np.float32)
    device = cuda.DeviceBuffer(4096)
    begin, end = cuda.Event(), cuda.Event()
    source.array[:] = np.arange(1024, dtype=np.float32)
    target.array[:] = -1
    begin.record(stream)
    cuda.copy_htod_async(device, source.array, 4096, stream)
    source.array[:] = 0  # host changes after the copy completed must not reach the device
    stream.synchronize()
    cuda.copy_dtoh_async(target.array, device, 400, stream)  # the first 100 floats only
    end.record(stream)
    stream.synchronize()
    np.testing.assert_array_equal(target.array[:100], np.arange(100, dtype=np.float32))
    assert (target.array[100:] == -1).all()
    assert end.elapsed_ms(begin) >= 0
    for resource in (source, target, device):
        resource.free()
    begin.close(), end.close(), stream.close()


def test_graph_replays_a_captured_copy():
    api = cuda.load()
    _needs_graphs(api)
    stream = cuda.Stream(api=api)
    a, b = cuda.DeviceBuffer(256, api=api), cuda.DeviceBuffer(256, api=api)
    host = cuda.PinnedBuffer(64, np.float32, api=api)
    graph = cuda.CudaGraph.capture(stream, lambda: _device_to_device(api, b.address, a.address, 256, stream.native))
    for value in (3.0, 7.0):
        host.array[:] = value
        cuda.copy_htod_async(a, host.array, 256, stream)
        graph.launch(stream)
        cuda.copy_dtoh_async(host.array, b, 256, stream)
        stream.synchronize()
        assert (host.array == value).all()
    graph.destroy()
    for resource in (a, b, host):
        resource.free()
    stream.close()


def test_failed_capture_leaves_the_stream_usable():
    api = cuda.load()
    _needs_graphs(api)
    stream = cuda.Stream(api=api)

    def failing_enqueue():
        raise EffedgeError("enqueue failed")

    with pytest.raises(EffedgeError, match="enqueue failed"):
        cuda.CudaGraph.capture(stream, failing_enqueue)
    error, status = api.rt.cudaStreamIsCapturing(stream.native)
    assert int(error) == 0 and status == api.rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
    stream.synchronize()
    stream.close()


# --- TensorRTRunner on the layer ------------------------------------------------------------------------


class _Context:
    def __init__(self, runner):
        self.runner = runner
        self.addresses, self.shapes = {}, {}

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes["images"]

    def execute_async_v3(self, stream_handle):
        assert stream_handle == self.runner.stream.handle
        nbytes = int(np.prod(self.shapes["images"])) * 4
        _device_to_device(self.runner.cuda_api, self.addresses["copy"], self.addresses["images"], nbytes,
                          self.runner.stream.native)
        return True


class _Engine:
    """images (N, 8) -> copy (N, 8), N dynamic up to 4."""

    num_io_tensors = 2

    def __init__(self, runner):
        self.context = _Context(runner)

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


class _Logger:
    WARNING = 2

    def __init__(self, level):
        self.level = level


class _CopyEngineRunner(TensorRTRunner):
    """TensorRTRunner with the minimal engine in place of the tensorrt module."""

    def _import_module(self):
        return types.SimpleNamespace(
            __name__="tensorrt", __version__="10.3.0", Logger=_Logger, init_libnvinfer_plugins=lambda logger, ns: True,
            TensorIOMode=types.SimpleNamespace(INPUT="INPUT"),
            Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: _Engine(self)))


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_runner_moves_real_data(tmp_path, cuda_graph):
    if cuda_graph:
        _needs_graphs(cuda.load())
    engine_file = tmp_path / "copy.engine"
    engine_file.write_bytes(b"not parsed by the minimal engine")
    with _CopyEngineRunner(engine_file, cuda_graph=cuda_graph) as runner:
        for step, batch in enumerate((4, 2, 2, 4)):
            images = np.random.default_rng(step).standard_normal((batch, 8)).astype(np.float32)
            out = runner.infer({"images": images})["copy"]
            np.testing.assert_array_equal(out, images)  # with a graph: re-captured when the shape changes
        assert runner.engine.context.shapes["images"] == (4, 8)
