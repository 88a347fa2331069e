"""One CUDA layer for the TensorRT runner, bench and doctor: device facts, streams, events, device and
page-locked host buffers, async copies and CUDA graphs.

Built on cuda-python (``cuda-bindings``: wheels for x86-64 and aarch64, no compiler needed); pycuda is used
where only it is installed (it has no stream capture, so no CUDA graphs there, and no implicit context:
:class:`PrimaryContext` makes the CUDA runtime's, which TensorRT uses, current). Every CUDA return code is
checked: a missing driver or GPU raises :class:`NoCudaDevice` saying why, any other failure an
:class:`~effedge.errors.EffedgeError` naming the call and the CUDA error. Only numpy is imported at import
time; the bindings are imported by :func:`load`.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from effedge.errors import BackendUnavailable, EffedgeError, RunError

INSTALL_HINT = ("pip install cuda-python (a major version the driver supports: 'cuda-python==12.*' on "
                "JetPack 6), or pycuda")
NO_GPU = "no CUDA GPU usable"

# cudaError_t names that mean "no usable driver or GPU here" rather than a failure of effedge's calls.
_UNAVAILABLE = {
    "cudaErrorNoDevice": "the NVIDIA driver is installed but sees no CUDA GPU",
    "cudaErrorStubLibrary": "only the CUDA stub library is installed, not the NVIDIA driver",
    "cudaErrorSystemDriverMismatch": "the NVIDIA kernel driver and libcuda differ in version (reboot or "
                                     "reinstall the driver)",
    "cudaErrorCompatNotSupportedOnDevice": "the CUDA forward-compatibility package does not support this GPU",
    "cudaErrorSystemNotReady": "the NVIDIA system services (fabric manager) are not running",
    "cudaErrorDevicesUnavailable": "every CUDA GPU is busy or in a prohibited/exclusive compute mode",
    "cudaErrorInitializationError": "the CUDA driver failed to initialise",
}


class NoCudaDevice(BackendUnavailable):
    """CUDA bindings are installed but no driver or GPU is usable; the message says why."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "8.7"
    total_memory: int  # bytes
    library: str  # the bindings in use, e.g. "cuda-python 13.4.4"

    def describe(self) -> str:
        return (f"{self.name} (compute capability {self.compute_capability}, "
                f"{self.total_memory / 2**30:.1f} GiB, via {self.library})")


def _cuda_version(encoded: int) -> str:
    """12020 -> "12.2" (CUDA's integer version encoding)."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


class _CudaPythonApi:
    """The calls effedge needs, on cuda-python's runtime module (``cudart``)."""

    supports_graphs = True

    def __init__(self, cudart: Any, version: str) -> None:
        self.rt = cudart
        self.library = f"cuda-python {version}"

    def _check(self, call: str, result: tuple) -> Any:
        error, *values = result
        if int(error) != 0:
            raise self._error(call, error)
        return values[0] if len(values) == 1 else tuple(values) or None

    def _error(self, call: str, error: Any) -> EffedgeError:
        name = getattr(error, "name", str(error))
        if name == "cudaErrorInsufficientDriver":
            _, driver = self.rt.cudaDriverGetVersion()
            _, runtime = self.rt.cudaRuntimeGetVersion()
            if not driver:
                return NoCudaDevice(f"{NO_GPU}: no NVIDIA driver found ({call}: {name}); install the driver, or "
                                    "run the model's .onnx file on the CPU (ONNX Runtime)")
            return NoCudaDevice(f"{NO_GPU}: the NVIDIA driver supports CUDA {_cuda_version(driver)}, older than "
                                f"the CUDA {_cuda_version(runtime)} of {self.library}; pip install "
                                f"'cuda-python=={driver // 1000}.*'")
        if name in _UNAVAILABLE:
            return NoCudaDevice(f"{NO_GPU}: {_UNAVAILABLE[name]} ({call}: {name})")
        _, description = self.rt.cudaGetErrorString(error)
        text = description.decode() if isinstance(description, bytes) else str(description)
        return RunError(f"CUDA call {call} failed: {name} ({text})")

    def device_info(self, index: int) -> DeviceInfo:
        count = self._check("cudaGetDeviceCount", self.rt.cudaGetDeviceCount())
        if not 0 <= index < count:
            raise NoCudaDevice(f"{NO_GPU}: GPU {index} requested, the driver sees {count}")
        props = self._check("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(index))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return DeviceInfo(index, name.split("\x00", 1)[0], f"{props.major}.{props.minor}", int(props.totalGlobalMem),
                          self.library)

    def context_enter(self, index: int) -> None:
        """The runtime API uses GPU ``index``'s primary context on every thread by itself (as TensorRT does)."""

    def context_exit(self, token: None) -> None:
        pass

    def stream_create(self) -> Any:
        return self._check("cudaStreamCreate", self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._check("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._check("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def event_create(self) -> Any:
        return self._check("cudaEventCreate", self.rt.cudaEventCreate())

    def event_record(self, event: Any, stream: Any) -> None:
        self._check("cudaEventRecord", self.rt.cudaEventRecord(event, stream))

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self._check("cudaEventSynchronize", self.rt.cudaEventSynchronize(end))
        return float(self._check("cudaEventElapsedTime", self.rt.cudaEventElapsedTime(start, end)))

    def event_destroy(self, event: Any) -> None:
        self._check("cudaEventDestroy", self.rt.cudaEventDestroy(event))

    def malloc(self, nbytes: int) -> tuple[Any, int]:
        address = self._check(f"cudaMalloc({nbytes} bytes)", self.rt.cudaMalloc(nbytes))
        return address, int(address)

    def free(self, allocation: Any) -> None:
        self._check("cudaFree", self.rt.cudaFree(allocation))

    def malloc_host(self, nbytes: int) -> tuple[Any, np.ndarray]:
        address = self._check(f"cudaMallocHost({nbytes} bytes)", self.rt.cudaMallocHost(nbytes))
        raw = (ctypes.c_uint8 * nbytes).from_address(int(address))
        return address, np.frombuffer(raw, np.uint8)

    def free_host(self, allocation: Any) -> None:
        self._check("cudaFreeHost", self.rt.cudaFreeHost(allocation))

    def memcpy_htod_async(self, dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
        self._check("cudaMemcpyAsync(host to device)", self.rt.cudaMemcpyAsync(
            dst, src.ctypes.data, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        self._check("cudaMemcpyAsync(device to host)", self.rt.cudaMemcpyAsync(
            dst.ctypes.data, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def graph_capture(self, stream: Any, work: Callable[[], None]) -> tuple[Any, Any]:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(stream, mode))
        try:
            work()
        except BaseException:
            error, graph = self.rt.cudaStreamEndCapture(stream)  # leave the stream usable, keep work's error
            if int(error) == 0 and graph is not None and int(graph):
                self.rt.cudaGraphDestroy(graph)
            raise
        graph = self._check("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream))
        try:
            graph_exec = self._check("cudaGraphInstantiateWithFlags", self.rt.cudaGraphInstantiateWithFlags(graph, 0))
        except EffedgeError:
            self.rt.cudaGraphDestroy(graph)
            raise
        return graph, graph_exec

    def graph_launch(self, graph: tuple[Any, Any], stream: Any) -> None:
        self._check("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph[1], stream))

    def graph_destroy(self, graph: tuple[Any, Any]) -> None:
        self._check("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph[1]))
        self._check("cudaGraphDestroy", self.rt.cudaGraphDestroy(graph[0]))


class _PyCudaApi:
    """The same calls on pycuda's driver module (pycuda raises its own errors instead of returning codes)."""

    supports_graphs = False

    def __init__(self, driver: Any, version: str) -> None:
        self.driver = driver
        self.library = f"pycuda {version}"

    def _call(self, call: str, function: Callable, *args: Any) -> Any:
        try:
            return function(*args)
        except self.driver.Error as exc:
            raise RunError(f"CUDA call {call} failed: {exc}") from exc

    def context_enter(self, index: int) -> Any:
        """Make GPU ``index``'s primary context current on this thread: the context the CUDA runtime, and so
        TensorRT, works in. (pycuda.autoinit would create a second context: an engine deserialized in one and
        buffers and streams made in the other cannot run together.)"""
        try:
            self.driver.init()
            context = self.driver.Device(index).retain_primary_context()
            context.push()
        except self.driver.Error as exc:
            raise NoCudaDevice(f"{NO_GPU}: pycuda cannot make the primary CUDA context of GPU {index} current "
                               f"({exc})") from exc
        return context

    def context_exit(self, context: Any) -> None:
        self._call("cuCtxPopCurrent", self.driver.Context.pop)
        self._call("cuDevicePrimaryCtxRelease", context.detach)

    def _context(self) -> None:
        """Allocations and streams belong to the current context (device_info needs none): without one, GPU 0's
        primary context is made current for the rest of the process, as the CUDA runtime would."""
        if self.driver.Context.get_current() is None:
            self.context_enter(0)

    def device_info(self, index: int) -> DeviceInfo:
        try:
            self.driver.init()
            count = self.driver.Device.count()
        except self.driver.Error as exc:
            raise NoCudaDevice(f"{NO_GPU}: {exc}") from exc
        if not 0 <= index < count:
            raise NoCudaDevice(f"{NO_GPU}: GPU {index} requested, the driver sees {count}")
        device = self.driver.Device(index)
        major, minor = self._call("cuDeviceComputeCapability", device.compute_capability)
        return DeviceInfo(index, self._call("cuDeviceGetName", device.name), f"{major}.{minor}",
                          int(self._call("cuDeviceTotalMem", device.total_memory)), self.library)

    def stream_create(self) -> Any:
        self._context()
        return self._call("cuStreamCreate", self.driver.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cuStreamSynchronize", stream.synchronize)

    def stream_destroy(self, stream: Any) -> None:
        """pycuda destroys a stream when its object is collected."""

    def event_create(self) -> Any:
        self._context()
        return self._call("cuEventCreate", self.driver.Event)

    def event_record(self, event: Any, stream: Any) -> None:
        self._call("cuEventRecord", event.record, stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self._call("cuEventSynchronize", end.synchronize)
        return float(self._call("cuEventElapsedTime", end.time_since, start))

    def event_destroy(self, event: Any) -> None:
        """pycuda destroys an event when its object is collected."""

    def malloc(self, nbytes: int) -> tuple[Any, int]:
        self._context()
        allocation = self._call(f"cuMemAlloc({nbytes} bytes)", self.driver.mem_alloc, nbytes)
        return allocation, int(allocation)

    def free(self, allocation: Any) -> None:
        self._call("cuMemFree", allocation.free)

    def malloc_host(self, nbytes: int) -> tuple[Any, np.ndarray]:
        self._context()
        array = self._call(f"cuMemHostAlloc({nbytes} bytes)", self.driver.pagelocked_empty, nbytes, np.uint8)
        return array, array

    def free_host(self, allocation: Any) -> None:
        self._call("cuMemFreeHost", allocation.base.free)  # the HostAllocation behind the array

    def memcpy_htod_async(self, dst: int, src: np.ndarray, nbytes: int, stream: Any) -> None:
        self._call("cuMemcpyHtoDAsync", self.driver.memcpy_htod_async, dst, _bytes_of(src, nbytes), stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        self._call("cuMemcpyDtoHAsync", self.driver.memcpy_dtoh_async, _bytes_of(dst, nbytes), src, stream)

    def graph_capture(self, stream: Any, work: Callable[[], None]) -> Any:
        raise BackendUnavailable(f"CUDA graphs need cuda-python, pycuda has no stream capture: {INSTALL_HINT}")


CudaApi = Union[_CudaPythonApi, _PyCudaApi]


def _bytes_of(array: np.ndarray, nbytes: int) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)[:nbytes]


def load() -> CudaApi:
    """The CUDA bindings to use: cuda-python, else pycuda. Raises :class:`BackendUnavailable` (with the
    install command) when neither is installed, :class:`NoCudaDevice` when pycuda cannot load the driver."""
    try:
        from cuda import bindings
        from cuda.bindings import runtime as cudart

        return _CudaPythonApi(cudart, getattr(bindings, "__version__", "unknown"))
    except ImportError:
        pass
    try:  # cuda-python before 12.6 named the module cuda.cudart
        import cuda
        from cuda import cudart

        return _CudaPythonApi(cudart, getattr(cuda, "__version__", "unknown"))
    except ImportError:
        pass
    try:
        import pycuda
    except ImportError:
        raise BackendUnavailable(f"no CUDA bindings for Python are installed: {INSTALL_HINT}") from None
    try:
        import pycuda.driver as driver
    except ImportError as exc:  # its extension links libcuda: a missing driver shows up here
        raise NoCudaDevice(f"{NO_GPU}: pycuda cannot load the CUDA driver ({exc})") from exc
    return _PyCudaApi(driver, getattr(pycuda, "VERSION_TEXT", "unknown"))


class PrimaryContext:
    """GPU ``index``'s primary CUDA context, current on this thread between :meth:`enter` and :meth:`exit` (or
    in a ``with`` block). TensorRT works in the context current when an engine is deserialized, and every
    buffer, stream and execution context used with the engine must belong to that same context; the primary
    context is the one the CUDA runtime uses. Nothing to do on cuda-python, needed on pycuda."""

    def __init__(self, index: int = 0, *, api: Optional[CudaApi] = None) -> None:
        self.api, self.index = api or load(), index
        self._token: Any = None
        self.entered = False

    def enter(self) -> "PrimaryContext":
        self._token = self.api.context_enter(self.index)
        self.entered = True
        return self

    def exit(self) -> None:
        if self.entered:
            self.entered = False
            self.api.context_exit(self._token)

    __enter__ = enter

    def __exit__(self, *exc: Any) -> None:
        self.exit()


def device_info(index: int = 0, api: Optional[CudaApi] = None) -> DeviceInfo:
    """Name, compute capability and memory of GPU ``index``. Raises :class:`BackendUnavailable` (no
    bindings) or :class:`NoCudaDevice` (no driver or GPU, with the reason); other errors are real failures."""
    return (api or load()).device_info(index)


class Stream:
    """A CUDA stream; ``handle`` is the integer TensorRT's execute_async_v3 takes."""

    def __init__(self, *, api: Optional[CudaApi] = None) -> None:
        self.api = api or load()
        self.native = self.api.stream_create()
        self.handle = self.api.stream_handle(self.native)

    def synchronize(self) -> None:
        self.api.stream_synchronize(self.native)

    def close(self) -> None:
        if self.native is not None:
            self.api.stream_destroy(self.native)
            self.native = None


class Event:
    """A timing event recorded on a stream."""

    def __init__(self, *, api: Optional[CudaApi] = None) -> None:
        self.api = api or load()
        self.native = self.api.event_create()

    def record(self, stream: Stream) -> None:
        self.api.event_record(self.native, stream.native)

    def elapsed_ms(self, start: "Event") -> float:
        """Milliseconds from ``start`` to this event (waits for this event to complete)."""
        return self.api.event_elapsed_ms(start.native, self.native)

    def close(self) -> None:
        if self.native is not None:
            self.api.event_destroy(self.native)
            self.native = None


class DeviceBuffer:
    """``nbytes`` of GPU memory; ``address`` is the device pointer as an int."""

    def __init__(self, nbytes: int, *, api: Optional[CudaApi] = None) -> None:
        self.api = api or load()
        self.nbytes = nbytes
        self.native, self.address = self.api.malloc(max(nbytes, 1))  # cudaMalloc(0) gives no usable pointer

    def free(self) -> None:
        if self.native is not None:
            self.api.free(self.native)
            self.native = None


class PinnedBuffer:
    """Page-locked host memory for ``count`` items of ``dtype``, seen through the numpy array ``array``
    (async copies need page-locked memory; the array must not be used after :meth:`free`)."""

    def __init__(self, count: int, dtype: np.dtype, *, api: Optional[CudaApi] = None) -> None:
        self.api = api or load()
        dtype = np.dtype(dtype)
        self.nbytes = count * dtype.itemsize
        self.native, raw = self.api.malloc_host(max(self.nbytes, 1))
        self.array: Optional[np.ndarray] = raw[: self.nbytes].view(dtype)

    def free(self) -> None:
        if self.native is not None:
            self.array = None
            self.api.free_host(self.native)
            self.native = None


def _check_copy(host: np.ndarray, device: DeviceBuffer, nbytes: int) -> None:
    """An oversized copy would overwrite memory silently: refuse it."""
    if not host.flags.c_contiguous or nbytes > host.nbytes or nbytes > device.nbytes:
        raise ValueError(f"copy of {nbytes} bytes between a host array of {host.nbytes} bytes (contiguous: "
                         f"{host.flags.c_contiguous}) and a device buffer of {device.nbytes}")


def copy_htod_async(dst: DeviceBuffer, src: np.ndarray, nbytes: int, stream: Stream) -> None:
    """Enqueue a copy of the first ``nbytes`` of ``src`` (a :class:`PinnedBuffer` array) to ``dst``."""
    _check_copy(src, dst, nbytes)
    dst.api.memcpy_htod_async(dst.address, src, nbytes, stream.native)


def copy_dtoh_async(dst: np.ndarray, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    """Enqueue a copy of the first ``nbytes`` of ``src`` into ``dst`` (a :class:`PinnedBuffer` array)."""
    _check_copy(dst, src, nbytes)
    src.api.memcpy_dtoh_async(dst, src.address, nbytes, stream.native)


class CudaGraph:
    """The work one call enqueues on a stream, captured once and replayed with :meth:`launch`."""

    def __init__(self, api: CudaApi, native: Any) -> None:
        self.api, self.native = api, native

    @classmethod
    def capture(cls, stream: Stream, work: Callable[[], None]) -> "CudaGraph":
        """Capture what ``work`` enqueues on ``stream``. If ``work`` raises, the capture is ended (the stream
        stays usable) and the error propagates."""
        return cls(stream.api, stream.api.graph_capture(stream.native, work))

    def launch(self, stream: Stream) -> None:
        self.api.graph_launch(self.native, stream.native)

    def destroy(self) -> None:
        if self.native is not None:
            self.api.graph_destroy(self.native)
            self.native = None
