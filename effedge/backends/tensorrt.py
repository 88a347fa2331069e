"""TensorRT runner: deserializes an engine and runs it with set_tensor_address + execute_async_v3.

Engines are built by :mod:`effedge.engine`; tests run this module against the real API surface of TensorRT
8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106 (tests/test_tensorrt_backend.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from effedge.backends import Runner, TensorInfo
from effedge.engine.capabilities import import_trt
from effedge.errors import BackendUnavailable, EffedgeError

ENGINE_SUFFIX = ".engine"


def import_tensorrt():
    return import_trt("tensorrt")


_NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}


def numpy_dtype(data_type) -> np.dtype:
    """NumPy type of a ``trt.DataType`` (by member name: ``trt.nptype`` is in the Python wrapper of the
    tensorrt package, not in every binding build)."""
    name = getattr(data_type, "name", str(data_type).rsplit(".", 1)[-1])
    if name not in _NUMPY_TYPES:
        raise EffedgeError(f"engine I/O of TensorRT type {name} is not supported by the runner")
    return np.dtype(_NUMPY_TYPES[name])


def gpu_compute_capability() -> Optional[str]:
    """"8.7"-style compute capability of GPU 0 through pycuda, or None without a usable GPU."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        major, minor = cuda.Device(0).compute_capability()
        return f"{major}.{minor}"
    except Exception:  # no pycuda, no driver, or no device: the caller reports what it needs
        return None


def check_engine_compatible(manifest: Mapping, trt, compute_capability: Optional[str]) -> None:
    """Refuse an engine built by another TensorRT or for another GPU (engines are not portable unless built
    version- or hardware-compatible), before deserializing it."""
    engine = manifest.get("engine") or {}
    built_with = engine.get("tensorrt")
    if built_with and built_with != trt.__version__ and not engine.get("options", {}).get("version_compatible"):
        raise EffedgeError(f"the engine was built with TensorRT {built_with}, this machine has {trt.__version__}; "
                           "rebuild it here (effedge build)")
    built_for = engine.get("compute_capability")
    if built_for and compute_capability and built_for != compute_capability \
            and not engine.get("options", {}).get("hardware_compatible"):
        raise EffedgeError(f"the engine was built for a GPU of compute capability {built_for}, this GPU is "
                           f"{compute_capability}; rebuild it here (effedge build)")


class TensorRTRunner(Runner):
    """Runs a serialized engine with page-locked host buffers, device buffers and a stream from pycuda:
    set_tensor_address + execute_async_v3, set_input_shape for a dynamic batch, optional CUDA graph."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, *, manifest: Optional[Mapping] = None, cuda_graph: bool = False):
        super().__init__()
        self.engine_path = Path(engine_path)
        self.manifest = manifest or {}
        self.cuda_graph = cuda_graph
        self._graph_exec = None
        self._graph_shapes: dict = {}

    def activate(self) -> None:
        trt = import_tensorrt()
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
        except Exception as exc:
            raise BackendUnavailable(f"pycuda with a working CUDA GPU is needed to run engines ({exc})") from exc
        self.trt, self.cuda = trt, cuda
        check_engine_compatible(self.manifest, trt, gpu_compute_capability())
        data = self.engine_path.read_bytes()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EffedgeError(f"{self.engine_path} is not a TensorRT {trt.__version__} engine (corrupt, truncated "
                               "or built by another version); rebuild it with effedge build")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.tensors = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = numpy_dtype(self.engine.get_tensor_dtype(name))
            shape = tuple(self.engine.get_tensor_shape(name))
            if is_input and -1 in shape:
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # the profile's max shape
            elif -1 in shape:
                shape = tuple(self._max_output_shape(name, shape))
            host = cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            device = cuda.mem_alloc(max(host.nbytes, 1))
            self.context.set_tensor_address(name, int(device))
            self.tensors[name] = {"input": is_input, "dtype": dtype, "shape": shape, "host": host, "device": device}

    def _max_output_shape(self, name: str, shape: tuple) -> tuple:
        """Output buffers for a dynamic batch are sized for the optimization profile's largest batch."""
        inputs = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)
                  if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == self.trt.TensorIOMode.INPUT]
        batch = max(self.engine.get_tensor_profile_shape(n, 0)[2][0] for n in inputs)
        return tuple(batch if d == -1 else d for d in shape)

    def deactivate(self) -> None:
        for tensor in getattr(self, "tensors", {}).values():
            tensor["device"].free()
        self.tensors = {}
        self.context = self.engine = self.runtime = None

    def input_info(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(self.engine.get_tensor_shape(n)), t["dtype"])
                for n, t in self.tensors.items() if t["input"]]

    def output_info(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(self.engine.get_tensor_shape(n)), t["dtype"])
                for n, t in self.tensors.items() if not t["input"]]

    def check_inputs(self, feed: Mapping[str, np.ndarray]) -> None:
        super().check_inputs(feed)
        for name, array in feed.items():
            if array.size > self.tensors[name]["host"].size:
                raise EffedgeError(f"tensorrt: input '{name}' batch {array.shape[0]} exceeds the engine's maximum "
                                   f"{self.tensors[name]['shape'][0]}")

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self.cuda
        shapes = {name: tuple(array.shape) for name, array in feed.items()}
        if shapes != self._graph_shapes:  # a CUDA graph replays the shapes it was captured with
            self._graph_exec, self._graph_shapes = None, shapes
        for name, array in feed.items():
            tensor = self.tensors[name]
            if -1 in tuple(self.engine.get_tensor_shape(name)):
                self.context.set_input_shape(name, array.shape)
            host = tensor["host"][: array.size]
            host[:] = np.ascontiguousarray(array, dtype=tensor["dtype"]).ravel()
            cuda.memcpy_htod_async(tensor["device"], host, self.stream)
        self.enqueue()
        outputs = {}
        for name, tensor in self.tensors.items():
            if tensor["input"]:
                continue
            shape = tuple(self.context.get_tensor_shape(name))
            host = tensor["host"][: int(np.prod(shape))]
            cuda.memcpy_dtoh_async(host, tensor["device"], self.stream)
            outputs[name] = (host, shape)
        self.stream.synchronize()
        return {name: host.reshape(shape).copy() for name, (host, shape) in outputs.items()}

    def enqueue(self) -> None:
        """Launch inference on the stream: execute_async_v3, or the captured CUDA graph."""
        if not self.cuda_graph:
            if not self.context.execute_async_v3(self.stream.handle):
                raise EffedgeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
            return
        if self._graph_exec is None:
            self._graph_exec = capture_cuda_graph(self.context, self.stream)
        launch_cuda_graph(self._graph_exec, self.stream)


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendUnavailable("CUDA graphs need cuda-python (pip install cuda-python); pycuda has no "
                                     "stream capture") from exc
    return cudart


def _check(result):
    error, *rest = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise EffedgeError(f"CUDA runtime error {error}")
    return rest[0] if len(rest) == 1 else rest


def capture_cuda_graph(context, stream):
    """Capture one execute_async_v3 on ``stream`` (after a warm-up enqueue, as TensorRT requires)."""
    cudart = _cudart()
    if not context.execute_async_v3(stream.handle):
        raise EffedgeError("TensorRT execute_async_v3 failed before CUDA graph capture")
    stream.synchronize()
    _check(cudart.cudaStreamBeginCapture(stream.handle,
                                         cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
    context.execute_async_v3(stream.handle)
    graph = _check(cudart.cudaStreamEndCapture(stream.handle))
    return _check(cudart.cudaGraphInstantiate(graph, 0))


def launch_cuda_graph(graph_exec, stream) -> None:
    _check(_cudart().cudaGraphLaunch(graph_exec, stream.handle))
