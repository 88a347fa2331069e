"""A fake ``cuda.bindings.runtime`` (cuda-python's cudart) for tests on machines without a GPU.

* Host memory stands in for device memory, so copies really move bytes; every copy is checked against the
  live allocations it reads and writes (direction, bounds), so an overrun or a copy from freed memory fails.
* Work on a stream runs at once, except while the stream is being captured: then it is recorded into the
  graph, and cudaGraphLaunch replays it.
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
import itertools
import sys
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
                 cudaError_t.cudaErrorInvalidValue: b"invalid argument"}
_OK = cudaError_t.cudaSuccess


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
    ``calls_to``, ``fail``, ``enqueue``, ``is_capturing``, ``view``, ``copied``, ``live``, ``install``."""

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
                 memory: int = 8 << 30) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices, self.device_error, self.driver, self.runtime = devices, device_error, driver, runtime
        self.properties = types.SimpleNamespace(name=name.ljust(256, b"\0"), major=capability[0],
                                                minor=capability[1], totalGlobalMem=memory)
        self.calls: list[tuple[str, tuple]] = []
        self.failures: dict[str, cudaError_t] = {}
        self.memory: dict[int, tuple[str, np.ndarray]] = {}  # address -> ("device" | "host", bytes)
        self.streams: set[int] = set()
        self.events: dict[int, Optional[float]] = {}  # event -> the time it was recorded at
        self.graphs: dict[int, list] = {}  # graph -> captured work
        self.graph_execs: dict[int, list] = {}
        self.captures: dict[int, list] = {}  # stream being captured -> work recorded so far
        self.copied: list[tuple[str, int]] = []  # ("htod" | "dtoh", bytes), as the copies ran
        self._handles = itertools.count(0x5000)
        self._clock = itertools.count()

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

    def enqueue(self, stream: int, work: Callable[[], None]) -> None:
        """What a kernel launch does: run ``work`` in stream order (now), or record it while capturing."""
        if int(stream) not in self.streams:
            raise AssertionError(f"work enqueued on stream {stream:#x}, which does not exist")
        if int(stream) in self.captures:
            self.captures[int(stream)].append(work)
        else:
            work()

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
        return _OK, stream

    @_api
    def cudaStreamSynchronize(self, stream):
        assert int(stream) in self.streams and int(stream) not in self.captures
        return (_OK,)

    @_api
    def cudaStreamDestroy(self, stream):
        self.streams.remove(int(stream))
        return (_OK,)

    @_api
    def cudaEventCreate(self):
        event = next(self._handles)
        self.events[event] = None
        return _OK, event

    @_api
    def cudaEventRecord(self, event, stream):
        self.enqueue(stream, lambda: self.events.__setitem__(int(event), float(next(self._clock))))
        return (_OK,)

    @_api
    def cudaEventSynchronize(self, event):
        return (_OK,)

    @_api
    def cudaEventElapsedTime(self, start, end):
        return _OK, (self.events[int(end)] - self.events[int(start)]) * 0.25

    @_api
    def cudaEventDestroy(self, event):
        del self.events[int(event)]
        return (_OK,)

    # ------------------------------------------------------------------ memory

    def _allocate(self, kind: str, size: int):
        buffer = np.zeros(size, np.uint8)
        self.memory[buffer.ctypes.data] = (kind, buffer)
        return _OK, buffer.ctypes.data

    def _release(self, kind: str, address: int):
        owner_kind, _ = self.memory.pop(int(address))
        assert owner_kind == kind, f"{kind} free of {owner_kind} memory"
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

        def copy():
            ctypes.memmove(self.view(int(dst), count, target).ctypes.data,
                           self.view(int(src), count, source).ctypes.data, count)
            self.copied.append((label, count))

        self.enqueue(stream, copy)
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
        for work in self.graph_execs[int(graphExec)]:
            self.enqueue(stream, work)
        return (_OK,)

    @_api
    def cudaGraphExecDestroy(self, graphExec):  # noqa: N803
        del self.graph_execs[int(graphExec)]
        return (_OK,)

    @_api
    def cudaGraphDestroy(self, graph):
        del self.graphs[int(graph)]
        return (_OK,)


def api_functions() -> dict[str, Callable]:
    """The cudart functions the fake implements (for the drift check)."""
    return {name: value for name, value in vars(FakeCudaRuntime).items() if getattr(value, "cuda_api", False)}


def api_enums() -> list[type]:
    return [cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode]
