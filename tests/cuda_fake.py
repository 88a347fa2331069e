"""A fake ``cuda.bindings.runtime`` (cuda-python's cudart) for tests on machines without a GPU.

* Host memory stands in for device memory, so copies really move bytes; every copy is checked against the
  live allocations it reads and writes (direction, bounds), so an overrun or a copy from freed memory fails.
* Work on a stream is queued, as on a GPU: copies, kernels and event records are carried out in stream order
  only when the host waits (cudaStreamSynchronize, cudaEventSynchronize; cudaFree/cudaFreeHost wait for all
  work, as CUDA's do). Until then a host buffer a copy writes still holds what it held, and an event has no
  time (cudaEventElapsedTime says cudaErrorNotReady). While a stream is captured, its work goes into the graph
  and cudaGraphLaunch queues it again.
* The GPU has its own clock: each copy takes ``copy_ms``, each kernel (``enqueue``) ``kernel_ms`` of it, and an
  event records the GPU clock when it is reached. ``host_clock`` is ``time.perf_counter`` plus the GPU time
  spent so far, so a host timer that stops before waiting for the GPU misses that time.
* New, freed and reused memory is poisoned (``POISON`` bytes: NaN as float32/float16, -1 as ints): a result
  read from a buffer nothing wrote, or kept as a view of a buffer since freed or reused, is garbage. A freed
  allocation of the same size is handed out again, as CUDA's allocator does.
* Functions return cuda-python's ``(cudaError_t, value...)`` tuples and are recorded in ``calls``;
  :meth:`FakeCudaRuntime.fail` makes the next call of a function return an error.

tests/test_cuda_layer.py checks every ``cuda*`` name here (functions, their argument counts, enum members and
values) against the real ``cuda.bindings.runtime`` where cuda-bindings is installed, so the fake cannot
drift from the API it imitates.
"""
from __future__ import annotations

import ctypes
import enum
import functools
import importlib.abc
import importlib.machinery
import itertools
import sys
import time
import types
from typing import Callable, Optional

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801  (cuda-python's names)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNotReady = 600
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


_DESCRIPTIONS = {cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
                 cudaError_t.cudaErrorInvalidValue: b"invalid argument",
                 cudaError_t.cudaErrorNotReady: b"device not ready"}
_OK = cudaError_t.cudaSuccess
POISON = 0xFF  # the byte new, freed and reused memory is filled with: NaN as float32/float16, -1 as ints
_REAL_PERF_COUNTER = time.perf_counter


class GpuQueues:
    """Per-stream queues of work carried out when the host waits, and the GPU clock they advance (shared by
    the cuda-python and pycuda fakes)."""

    def __init__(self, copy_ms: float, kernel_ms: float) -> None:
        self.copy_ms, self.kernel_ms = copy_ms, kernel_ms
        self.gpu_ms = 0.0
        self.pending: dict[int, list] = {}

    def open(self, stream: int) -> None:
        self.pending[stream] = []

    def close(self, stream: int) -> None:
        self.run(stream)
        del self.pending[stream]

    def put(self, stream: int, work: Callable[[], None], cost_ms: float) -> None:
        def timed():
            work()
            self.gpu_ms += cost_ms

        self.pending[stream].append(timed)

    def run(self, stream: int, until: Callable[[], bool] = lambda: False) -> None:
        """Carry out ``stream``'s queued work in order (all of it, or until ``until()`` holds)."""
        queue = self.pending[stream]
        while queue and not until():
            queue.pop(0)()

    def run_all(self) -> None:
        for stream in list(self.pending):
            self.run(stream)

    def host_clock(self) -> float:
        """``time.perf_counter`` that also counts the GPU time spent so far (install over time.perf_counter)."""
        return _REAL_PERF_COUNTER() + self.gpu_ms / 1e3


def _poisoned(size: int) -> np.ndarray:
    return np.full(size, POISON, np.uint8)


def _api(function: Callable) -> Callable:
    """Record the call; return an error injected with fail() instead of running it."""

    @functools.wraps(function)
    def call(self: "FakeCudaRuntime", *args):
        self.calls.append((function.__name__, args))
        error = self.failures.pop(function.__name__, None)
        if error is not None:
            return (error,) + (None,) * self._results.get(function.__name__, 0)
        return function(self, *args)

    call.cuda_api = True
    return call


class FakeCudaRuntime(types.ModuleType):
    """The fake module. Test-side API (no ``cuda`` prefix, so the drift check skips it): ``calls``,
    ``calls_to``, ``fail``, ``enqueue``, ``run_pending``, ``host_clock``, ``is_capturing``, ``view``, ``copied``,
    ``live``, ``install``."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    # Values returned after the error, for functions that return some (filled with None on failure).
    _results = {"cudaGetDeviceCount": 1, "cudaGetDeviceProperties": 1, "cudaDriverGetVersion": 1,
                "cudaRuntimeGetVersion": 1, "cudaGetErrorString": 1, "cudaStreamCreate": 1, "cudaEventCreate": 1,
                "cudaEventElapsedTime": 1, "cudaMalloc": 1, "cudaMallocHost": 1, "cudaStreamEndCapture": 1,
                "cudaGraphInstantiateWithFlags": 1}

    def __init__(self, *, devices: int = 1, device_error: Optional[cudaError_t] = None, driver: int = 12060,
                 runtime: int = 12060, name: bytes = b"NVIDIA Orin", capability: tuple = (8, 7),
                 memory: int = 8 << 30, copy_ms: float = 0.25, kernel_ms: float = 1.0) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices, self.device_error, self.driver, self.runtime = devices, device_error, driver, runtime
        self.properties = types.SimpleNamespace(name=name.ljust(256, b"\0"), major=capability[0],
                                                minor=capability[1], totalGlobalMem=memory)
        self.calls: list[tuple[str, tuple]] = []
        self.failures: dict[str, cudaError_t] = {}
        self.memory: dict[int, tuple[str, np.ndarray]] = {}  # address -> ("device" | "host", bytes)
        self.freed: list[tuple[str, np.ndarray]] = []  # released blocks, handed out again (poisoned)
        self.streams: set[int] = set()
        self.gpu = GpuQueues(copy_ms, kernel_ms)
        self.events: dict[int, Optional[float]] = {}  # event -> the GPU time it was reached at (None: not yet)
        self.event_streams: dict[int, int] = {}  # event -> the stream it was last recorded on
        self.graphs: dict[int, list] = {}  # graph -> captured work
        self.graph_execs: dict[int, list] = {}
        self.captures: dict[int, list] = {}  # stream being captured -> work recorded so far
        self.copied: list[tuple[str, int]] = []  # ("htod" | "dtoh", bytes), as the copies ran
        self._handles = itertools.count(0x5000)

    # ------------------------------------------------------------------ test-side API

    def install(self, monkeypatch) -> "FakeCudaRuntime":
        """Make ``from cuda.bindings import runtime`` give this fake."""
        bindings = types.ModuleType("cuda.bindings")
        bindings.__version__ = "12.6.0+fake"
        bindings.runtime = self
        package = types.ModuleType("cuda")
        package.bindings = bindings
        for name, module in (("cuda", package), ("cuda.bindings", bindings), ("cuda.bindings.runtime", self)):
            monkeypatch.setitem(sys.modules, name, module)
        return self

    def calls_to(self, name: str) -> list[tuple]:
        return [args for called, args in self.calls if called == name]

    def fail(self, function: str, error: cudaError_t) -> None:
        self.failures[function] = error

    def is_capturing(self, stream: int) -> bool:
        return int(stream) in self.captures

    def enqueue(self, stream: int, work: Callable[[], None], cost_ms: Optional[float] = None) -> None:
        """What a kernel launch does: queue ``work`` (``kernel_ms`` of GPU time unless ``cost_ms`` says otherwise)
        on the stream, or record it into the graph while the stream is captured."""
        if int(stream) not in self.streams:
            raise AssertionError(f"work enqueued on stream {stream:#x}, which does not exist")
        cost = self.gpu.kernel_ms if cost_ms is None else cost_ms
        if int(stream) in self.captures:
            self.captures[int(stream)].append((work, cost))
        else:
            self.gpu.put(int(stream), work, cost)

    def run_pending(self, stream: int) -> None:
        """Carry out the stream's queued work now (what TensorRT does when it waits inside an enqueue)."""
        self.gpu.run(int(stream))

    def host_clock(self) -> float:
        return self.gpu.host_clock()

    def view(self, address: int, nbytes: int, kind: str = "device") -> np.ndarray:
        """The ``nbytes`` at ``address``, which must lie inside one live allocation of ``kind``."""
        for start, (owner_kind, buffer) in self.memory.items():
            if start <= address and address + nbytes <= start + buffer.nbytes:
                if owner_kind != kind:
                    raise AssertionError(f"{address:#x} is {owner_kind} memory, {kind} memory expected")
                return buffer[address - start: address - start + nbytes]
        raise AssertionError(f"{nbytes} bytes at {address:#x}: not inside a live {kind} allocation")

    def live(self) -> dict:
        """What has not been released: allocations, streams, events, graphs, graph executables."""
        return {"memory": len(self.memory), "streams": len(self.streams), "events": len(self.events),
                "graphs": len(self.graphs), "graph_execs": len(self.graph_execs)}

    # ------------------------------------------------------------------ device

    @_api
    def cudaGetDeviceCount(self):
        if self.device_error is not None:
            return self.device_error, 0
        return _OK, self.devices

    @_api
    def cudaGetDeviceProperties(self, device):
        return _OK, self.properties

    @_api
    def cudaDriverGetVersion(self):
        return _OK, self.driver

    @_api
    def cudaRuntimeGetVersion(self):
        return _OK, self.runtime

    @_api
    def cudaGetErrorString(self, error):
        return _OK, _DESCRIPTIONS.get(error, b"unknown error")

    # ------------------------------------------------------------------ streams and events

    @_api
    def cudaStreamCreate(self):
        stream = next(self._handles)
        self.streams.add(stream)
        self.gpu.open(stream)
        return _OK, stream

    @_api
    def cudaStreamSynchronize(self, stream):
        assert int(stream) in self.streams and int(stream) not in self.captures
        self.gpu.run(int(stream))
        return (_OK,)

    @_api
    def cudaStreamDestroy(self, stream):
        self.streams.remove(int(stream))
        self.gpu.close(int(stream))  # queued work still completes, as in CUDA
        return (_OK,)

    @_api
    def cudaEventCreate(self):
        event = next(self._handles)
        self.events[event] = None
        return _OK, event

    @_api
    def cudaEventRecord(self, event, stream):
        self.events[int(event)] = None  # reached again only when the stream gets there
        self.event_streams[int(event)] = int(stream)
        self.enqueue(stream, lambda: self.events.__setitem__(int(event), self.gpu.gpu_ms), cost_ms=0.0)
        return (_OK,)

    @_api
    def cudaEventSynchronize(self, event):
        stream = self.event_streams.get(int(event))
        if stream is not None and stream in self.gpu.pending:
            self.gpu.run(stream, until=lambda: self.events[int(event)] is not None)
        return (_OK,)

    @_api
    def cudaEventElapsedTime(self, start, end):
        begin, finish = self.events[int(start)], self.events[int(end)]
        if begin is None or finish is None:  # not reached yet (or never recorded)
            return cudaError_t.cudaErrorNotReady, None
        return _OK, finish - begin

    @_api
    def cudaEventDestroy(self, event):
        del self.events[int(event)]
        return (_OK,)

    # ------------------------------------------------------------------ memory

    def _allocate(self, kind: str, size: int):
        reused = next((i for i, (k, b) in enumerate(self.freed) if k == kind and b.nbytes == size), None)
        buffer = self.freed.pop(reused)[1] if reused is not None else _poisoned(size)
        buffer[:] = POISON
        self.memory[buffer.ctypes.data] = (kind, buffer)
        return _OK, buffer.ctypes.data

    def _release(self, kind: str, address: int):
        self.gpu.run_all()  # cudaFree/cudaFreeHost wait for the device
        owner_kind, buffer = self.memory.pop(int(address))
        assert owner_kind == kind, f"{kind} free of {owner_kind} memory"
        buffer[:] = POISON
        self.freed.insert(0, (kind, buffer))
        return (_OK,)

    @_api
    def cudaMalloc(self, size):
        return self._allocate("device", size)

    @_api
    def cudaFree(self, devPtr):  # noqa: N803
        return self._release("device", devPtr)

    @_api
    def cudaMallocHost(self, size):
        return self._allocate("host", size)

    @_api
    def cudaFreeHost(self, ptr):
        return self._release("host", ptr)

    @_api
    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        source, target, label = {cudaMemcpyKind.cudaMemcpyHostToDevice: ("host", "device", "htod"),
                                 cudaMemcpyKind.cudaMemcpyDeviceToHost: ("device", "host", "dtoh")}[kind]
        self.view(int(src), count, source), self.view(int(dst), count, target)  # checked when enqueued

        def copy():  # reads and writes when the stream gets there, not when it is enqueued
            ctypes.memmove(self.view(int(dst), count, target).ctypes.data,
                           self.view(int(src), count, source).ctypes.data, count)
            self.copied.append((label, count))

        self.enqueue(stream, copy, cost_ms=self.gpu.copy_ms)
        return (_OK,)

    # ------------------------------------------------------------------ graphs

    @_api
    def cudaStreamBeginCapture(self, stream, mode):
        assert int(stream) not in self.captures and mode in cudaStreamCaptureMode
        self.captures[int(stream)] = []
        return (_OK,)

    @_api
    def cudaStreamEndCapture(self, stream):
        work = self.captures.pop(int(stream))
        graph = next(self._handles)
        self.graphs[graph] = work
        return _OK, graph

    @_api
    def cudaGraphInstantiateWithFlags(self, graph, flags):
        graph_exec = next(self._handles)
        self.graph_execs[graph_exec] = list(self.graphs[int(graph)])
        return _OK, graph_exec

    @_api
    def cudaGraphLaunch(self, graphExec, stream):  # noqa: N803
        for work, cost in self.graph_execs[int(graphExec)]:
            self.enqueue(stream, work, cost)
        return (_OK,)

    @_api
    def cudaGraphExecDestroy(self, graphExec):  # noqa: N803
        del self.graph_execs[int(graphExec)]
        return (_OK,)

    @_api
    def cudaGraphDestroy(self, graph):
        del self.graphs[int(graph)]
        return (_OK,)


class FakePycuda:
    """A fake ``pycuda.driver`` (and ``pycuda.autoinit``) that models what pycuda users get wrong: CUDA contexts.

    * Each thread has a stack of current contexts (one thread here): ``Device(i).make_context()`` creates a new
      context and pushes it (``import pycuda.autoinit`` does exactly that), ``Device(i).retain_primary_context()``
      gives GPU i's primary context (the one the CUDA runtime, and so TensorRT, uses), ``ctx.push()``,
      ``Context.pop()``, ``Context.get_current()``, ``ctx.detach()``.
    * Allocations, page-locked memory, streams and events belong to the context current when they are made,
      and fail without one (pycuda's LogicError); an async copy fails unless the stream, the device memory and
      the current context agree.
    * :meth:`runtime_context` is what the CUDA runtime uses for a call (TensorRT's deserialize/execute): the
      current context, or else GPU 0's primary context, made current. :meth:`mismatch` names why work in one
      context cannot use a stream or memory of another.
    * Streams queue work until synchronized, and memory is poisoned, as in :class:`FakeCudaRuntime`.

    Installing it hides cuda-python, so effedge's CUDA layer takes its pycuda path.
    """

    def __init__(self, *, copy_ms: float = 0.25, kernel_ms: float = 1.0) -> None:
        self.gpu = GpuQueues(copy_ms, kernel_ms)
        self.stack: list = []  # current contexts, innermost last
        self.primary: dict[int, object] = {}
        self.contexts: list = []  # every context ever created
        self.memory: dict[int, tuple[object, np.ndarray]] = {}  # address -> (context, bytes)
        self.host_allocations: list = []
        self.allocations: list = []
        self.copies: list[str] = []  # "htod" / "dtoh" as carried out, "sync" at each stream synchronize
        self._handles = itertools.count(0xA000)
        self.driver = self._build_driver()

    # ------------------------------------------------------------------ test-side API

    def install(self, monkeypatch) -> types.ModuleType:
        package = types.ModuleType("pycuda")
        package.__path__ = []  # a package, so that `import pycuda.autoinit` goes through the finder below
        package.VERSION_TEXT = "2026.1+fake"
        package.driver = self.driver
        for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", self.driver)
        monkeypatch.delitem(sys.modules, "pycuda.autoinit", raising=False)
        monkeypatch.setattr(sys, "meta_path", [_AutoinitFinder(self)] + sys.meta_path)
        return self.driver

    def current(self):
        return self.stack[-1] if self.stack else None

    def runtime_context(self):
        """The context a CUDA runtime call works in: the current one, else GPU 0's primary (made current)."""
        if not self.stack:
            self.stack.append(self._primary(0))
        return self.stack[-1]

    def context_of(self, address: int):
        for start, (context, buffer) in self.memory.items():
            if start <= address < start + max(buffer.nbytes, 1):
                return context
        raise AssertionError(f"{address:#x} is not inside a live device allocation")

    def mismatch(self, context, stream_handle: int, addresses) -> Optional[str]:
        """Why work of ``context`` cannot run now on the stream and memory given (None: it can)."""
        stream = self.streams[stream_handle]
        if self.current() is not context:
            return f"the current CUDA context is {self.current()}, the work belongs to {context}"
        if stream.context is not context:
            return f"stream {stream_handle:#x} belongs to {stream.context}, not {context}"
        for address in addresses:
            if self.context_of(address) is not context:
                return f"memory {address:#x} belongs to {self.context_of(address)}, not {context}"
        return None

    def enqueue(self, stream_handle: int, work: Callable[[], None], cost_ms: Optional[float] = None) -> None:
        self.gpu.put(stream_handle, work, self.gpu.kernel_ms if cost_ms is None else cost_ms)

    def run_pending(self, stream_handle: int) -> None:
        self.gpu.run(stream_handle)

    def view(self, address: int, nbytes: int) -> np.ndarray:
        for start, (_context, buffer) in self.memory.items():
            if start <= address and address + nbytes <= start + buffer.nbytes:
                return buffer[address - start: address - start + nbytes]
        raise AssertionError(f"{nbytes} bytes at {address:#x}: not inside a live device allocation")

    def live(self) -> dict:
        return {"memory": len(self.memory), "host": sum(not a.freed for a in self.host_allocations),
                "streams": len(self.streams), "contexts": len(self.stack)}

    # ------------------------------------------------------------------ the fake driver module

    def _primary(self, index: int):
        if index not in self.primary:
            self.primary[index] = self._context_class(index, primary=True)
        return self.primary[index]

    def _need_context(self, call: str):
        if not self.stack:
            raise self.driver.LogicError(f"{call} failed: invalid device context")
        return self.stack[-1]

    def _build_driver(self) -> types.ModuleType:
        fake = self
        driver = types.ModuleType("pycuda.driver")
        driver.Error = type("Error", (Exception,), {})
        driver.LogicError = type("LogicError", (driver.Error,), {})
        self.streams: dict[int, object] = {}

        class Context:
            def __init__(self, device: int, primary: bool = False) -> None:
                self.device, self.is_primary, self.retained = device, primary, 0
                self.number = len(fake.contexts)
                fake.contexts.append(self)

            def __repr__(self) -> str:
                return f"<{'primary ' if self.is_primary else ''}context {self.number} of GPU {self.device}>"

            def push(self) -> None:
                fake.stack.append(self)

            @staticmethod
            def pop() -> None:
                if not fake.stack:
                    raise driver.LogicError("cuCtxPopCurrent failed: invalid device context")
                fake.stack.pop()

            @staticmethod
            def get_current():
                return fake.current()

            def detach(self) -> None:
                self.retained -= 1

        self._context_class = Context

        class Device:
            count = staticmethod(lambda: 1)
            compute_capability = staticmethod(lambda: (8, 7))
            name = staticmethod(lambda: "Orin")
            total_memory = staticmethod(lambda: 8 << 30)

            def __init__(self, index: int) -> None:
                self.index = index

            def make_context(self):
                context = Context(self.index)
                context.push()
                return context

            def retain_primary_context(self):
                context = fake._primary(self.index)
                context.retained += 1
                return context

        class DeviceAllocation:
            def __init__(self, nbytes: int) -> None:
                self.context = fake._need_context("cuMemAlloc")
                self.buffer, self.freed = _poisoned(nbytes), False
                fake.memory[self.buffer.ctypes.data] = (self.context, self.buffer)
                fake.allocations.append(self)

            def __int__(self) -> int:
                return self.buffer.ctypes.data

            def free(self) -> None:
                fake.gpu.run_all()
                del fake.memory[int(self)]
                self.buffer[:] = POISON
                self.freed = True

        class HostAllocation:  # what a page-locked array's .base is
            def __init__(self, count: int, dtype) -> None:
                self.context = fake._need_context("cuMemHostAlloc")
                self.memory = _poisoned(count * np.dtype(dtype).itemsize).view(dtype)
                self.__array_interface__ = self.memory.__array_interface__
                self.freed = False
                fake.host_allocations.append(self)

            def free(self) -> None:
                fake.gpu.run_all()
                self.memory.view(np.uint8)[:] = POISON
                self.freed = True

        class Stream:
            def __init__(self) -> None:
                self.context = fake._need_context("cuStreamCreate")
                self.handle = next(fake._handles)
                fake.streams[self.handle] = self
                fake.gpu.open(self.handle)

            def synchronize(self) -> None:
                fake.gpu.run(self.handle)
                fake.copies.append("sync")

        class Event:
            def __init__(self) -> None:
                self.context = fake._need_context("cuEventCreate")
                self.time, self.stream = None, None

            def record(self, stream) -> None:
                self.time, self.stream = None, stream
                fake.gpu.put(stream.handle, lambda: setattr(self, "time", fake.gpu.gpu_ms), 0.0)

            def synchronize(self) -> None:
                if self.stream is not None:
                    fake.gpu.run(self.stream.handle, until=lambda: self.time is not None)

            def time_since(self, start) -> float:
                if self.time is None or start.time is None:
                    raise driver.LogicError("cuEventElapsedTime failed: device not ready")
                return self.time - start.time

        def copy(call: str, device_address: int, host: np.ndarray, stream, to_device: bool) -> None:
            context = fake._need_context(call)
            problem = fake.mismatch(context, stream.handle, [device_address]) if stream.context is context else \
                f"stream of {stream.context} used in {context}"
            if problem:
                raise driver.LogicError(f"{call} failed: invalid context ({problem})")
            raw = host.reshape(-1).view(np.uint8)
            device = fake.view(device_address, raw.nbytes)

            def move():
                if to_device:
                    device[:] = raw
                else:
                    raw[:] = device
                fake.copies.append("htod" if to_device else "dtoh")

            fake.gpu.put(stream.handle, move, fake.gpu.copy_ms)

        driver.Context = Context
        driver.Device = Device
        driver.init = lambda: None
        driver.mem_alloc = DeviceAllocation
        driver.pagelocked_empty = lambda count, dtype: np.asarray(HostAllocation(count, dtype))
        driver.Stream = Stream
        driver.Event = Event
        driver.memcpy_htod_async = lambda dest, src, stream: copy("cuMemcpyHtoDAsync", int(dest), src, stream, True)
        driver.memcpy_dtoh_async = lambda dest, src, stream: copy("cuMemcpyDtoHAsync", int(src), dest, stream, False)
        return driver


class _AutoinitFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import pycuda.autoinit`` does what pycuda's does: create a new context on GPU 0 and make it current."""

    def __init__(self, fake: FakePycuda) -> None:
        self.fake = fake

    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == "pycuda.autoinit" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.context = self.fake.driver.Device(0).make_context()


def api_functions() -> dict[str, Callable]:
    """The cudart functions the fake implements (for the drift check)."""
    return {name: value for name, value in vars(FakeCudaRuntime).items() if getattr(value, "cuda_api", False)}


def api_enums() -> list[type]:
    return [cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode]
