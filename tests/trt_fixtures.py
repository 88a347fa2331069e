"""pytest plugin: the ``trt_fake`` and ``rtx_fake`` fixtures and the ``trt_api`` marker.

``trt_fake`` runs a test once per TensorRT version in :data:`trt_surface.TRT_VERSIONS` with a
:class:`trt_fake.FakeTensorRT` of that version installed as ``sys.modules["tensorrt"]`` (code under test
must ``import tensorrt`` when it runs, not at its own import time, to see it). ``rtx_fake`` installs a fake of
the installed TensorRT-RTX as ``sys.modules["tensorrt_rtx"]`` the same way. Tests using them are marked
``trt_api``; they skip only when the binding wheels cannot be downloaded, or TensorRT-RTX is not installed.

Both fakes build and load engines as TensorRT does (:class:`FakeEngines`, ``engines_of(fake)``): the builder
serializes what it was given (network flags, the parsed file, builder flags, properties, profiles) into the
plan, and the runtime reads it back, refusing a version-compatible plan unless ``engine_host_code_allowed``
is set. With ``FakeEngines.cuda`` set to a :class:`cuda_fake.FakePycuda`, an engine belongs to the CUDA
context current when it was deserialized, and :meth:`FakeEngines.mismatch` says why an execution in another
context (or with streams and memory of another) fails.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import pytest
from trt_fake import FakeTensorRT
from trt_surface import TRT_VERSIONS, NotInstalled, WheelsUnavailable, installed_surface, surface

SKIP_REASON = "TensorRT binding wheels not downloadable: {}"
RTX_SKIP_REASON = "{} (pip install 'effedge[rtx]': the TensorRT-RTX wheels install from PyPI)"

# One extraction per version and session; a failed download is remembered so pip runs once, not per test.
_surfaces: dict[str, Union[dict, WheelsUnavailable]] = {}
_rtx_surface: list[Union[dict, NotInstalled]] = []  # the installed TensorRT-RTX's, once per session


def load_surface(version: str) -> dict:
    """The API surface of ``version`` (session-cached); skips the test if the wheel cannot be downloaded."""
    if version not in _surfaces:
        try:
            _surfaces[version] = surface(version)
        except WheelsUnavailable as exc:
            _surfaces[version] = exc
    result = _surfaces[version]
    if isinstance(result, WheelsUnavailable):
        pytest.skip(SKIP_REASON.format(result))
    return result


def load_rtx_surface() -> dict:
    """The API surface of the installed TensorRT-RTX (session-cached); skips the test if it is not installed."""
    if not _rtx_surface:
        try:
            _rtx_surface.append(installed_surface())
        except NotInstalled as exc:
            _rtx_surface.append(exc)
    result = _rtx_surface[0]
    if isinstance(result, NotInstalled):
        pytest.skip(RTX_SKIP_REASON.format(result))
    return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "trt_api: runs against the real API surface of each TensorRT version "
                                       "(tests/trt_fake.py; downloads the binding wheels once)")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"trt_fake", "rtx_fake"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.trt_api)


class FakeEngines:
    """The fake's builder and runtime: plans hold what built them, runtimes read them back."""

    MAGIC = b"fake-tensorrt-plan\n"

    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.cuda: Any = None  # a FakePycuda: engines then live in the CUDA context they were deserialized in
        self.plans: dict[int, dict] = {}  # id(engine) -> the plan it was deserialized from
        self.engine_contexts: dict[int, Any] = {}  # id(engine) -> CUDA context
        self.execution_engines: dict[int, Any] = {}  # id(execution context) -> engine
        self._network_flags: dict[int, int] = {}
        trt.set_handler("Builder.create_network", self._create_network)
        trt.set_handler("Builder.build_serialized_network", self._build)
        trt.set_handler("Runtime.deserialize_cuda_engine", self._deserialize)
        trt.set_handler("ICudaEngine.create_execution_context", self._create_context)
        self._inspected: dict[int, Any] = {}  # id(inspector) -> engine
        trt.set_handler("ICudaEngine.create_engine_inspector", self._create_inspector)
        trt.set_handler("EngineInspector.get_engine_information", self._engine_information)

    def _create_network(self, builder, flags: int = 0, **kwargs) -> Any:
        network = self.trt.make("INetworkDefinition")
        self._network_flags[id(network)] = int(kwargs.get("flags", flags))
        return network

    def _on(self, target: Any, prefix: str) -> list:
        return [c for c in self.trt.calls if c.target is target and c.name.startswith(prefix)]

    def plan(self, network, config) -> dict:
        """What a build of ``network`` with ``config`` serializes."""
        parsers = [c.target for c in self.trt.calls_to("OnnxParser.__init__") if c.args and c.args[0] is network]
        parsed = [c.args[0] for parser in parsers for c in self._on(parser, "OnnxParser.parse_from_file")]
        properties = {c.name.split(".", 1)[1][:-1]: _jsonable(c.args[0]) for c in self._on(config, "IBuilderConfig.")
                      if c.name.endswith("=")}
        pools = {c.args[0].name: int(c.args[1]) for c in self._on(config, "IBuilderConfig.set_memory_pool_limit")}
        profiles = []
        for added in self._on(config, "IBuilderConfig.add_optimization_profile"):
            profiles.append({c.args[0]: [list(c.args[i]) for i in (1, 2, 3)]
                             for c in self._on(added.args[0], "IOptimizationProfile.set_shape")})
        return {"network_flags": self._network_flags.get(id(network), 0), "onnx": parsed,
                "builder_flags": [c.args[0].name for c in self._on(config, "IBuilderConfig.set_flag")],
                "properties": properties, "memory_pools": pools, "profiles": profiles}

    def _build(self, builder, network, config) -> bytes:
        return self.MAGIC + json.dumps(self.plan(network, config), sort_keys=True).encode()

    @classmethod
    def read(cls, data: bytes) -> Optional[dict]:
        """The plan's content (None for bytes the fake builder did not write: an opaque plan)."""
        data = bytes(data)
        return json.loads(data[len(cls.MAGIC):]) if data.startswith(cls.MAGIC) else None

    def _deserialize(self, runtime, data) -> Any:
        plan = self.read(bytes(data)) or {}
        if "VERSION_COMPATIBLE" in plan.get("builder_flags", []) and not runtime.engine_host_code_allowed:
            return None  # TensorRT: "... version compatible engine ... requires engine_host_code_allowed"
        engine = self.trt.make("ICudaEngine")
        self.plans[id(engine)] = plan
        if self.cuda is not None:
            self.engine_contexts[id(engine)] = self.cuda.runtime_context()
        return engine

    def _create_inspector(self, engine) -> Any:
        inspector = self.trt.make("EngineInspector")
        self._inspected[id(inspector)] = engine
        return inspector

    def _engine_information(self, inspector, format) -> str:
        """One layer per parsed file: enough for a layer report to be read from the plan that was built."""
        plan = self.plans.get(id(self._inspected.get(id(inspector))), {})
        return json.dumps({"Layers": [f"layers of {path}" for path in plan.get("onnx", [])]})

    def _create_context(self, engine, *args, **kwargs) -> Any:
        if self.cuda is not None and self.cuda.current() is not self.engine_contexts[id(engine)]:
            return None  # its scratch memory would be allocated in another context
        context = self.trt.make("IExecutionContext")
        self.execution_engines[id(context)] = engine
        return context

    def mismatch(self, context, stream: int, addresses) -> Optional[str]:
        """Why ``context`` cannot execute on ``stream`` with device memory ``addresses`` (None: it can)."""
        if self.cuda is None:
            return None
        engine = self.execution_engines[id(context)]
        return self.cuda.mismatch(self.engine_contexts[id(engine)], stream, addresses)


def _jsonable(value: Any) -> Any:
    return value.name if hasattr(value, "name") and hasattr(value, "value") else value


_engines: dict[int, FakeEngines] = {}


def engines_of(trt: FakeTensorRT) -> FakeEngines:
    """The :class:`FakeEngines` behind a ``trt_fake``/``rtx_fake`` fixture's module."""
    return _engines[id(trt)]


def _installed(fake: FakeTensorRT) -> Iterator[FakeTensorRT]:
    """``fake`` as ``sys.modules[<its module name>]`` while the test runs; what was there before afterwards."""
    _engines[id(fake)] = FakeEngines(fake)
    name = fake.__name__
    missing = object()
    previous = sys.modules.get(name, missing)
    sys.modules[name] = fake
    try:
        yield fake
    finally:
        del _engines[id(fake)]
        if previous is missing:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous


@pytest.fixture(params=TRT_VERSIONS, ids=[f"trt{version}" for version in TRT_VERSIONS])
def trt_fake(request: pytest.FixtureRequest) -> Iterator[FakeTensorRT]:
    yield from _installed(FakeTensorRT(load_surface(request.param)))


@pytest.fixture
def rtx_fake() -> Iterator[FakeTensorRT]:
    """A checked fake of the installed ``tensorrt_rtx`` (its real classes and signatures)."""
    yield from _installed(FakeTensorRT(load_rtx_surface()))


def declare_engine_io(trt, io: dict, dtypes: Optional[dict] = None) -> None:
    """Make every ICudaEngine of the fake ``trt`` declare ``io``: {name: (TensorIOMode, shape)}, float32 unless
    ``dtypes`` ({name: DataType member name}) says otherwise."""
    order = list(io)
    trt.set_attr("ICudaEngine.num_io_tensors", len(order))
    trt.set_handler("ICudaEngine.get_tensor_name", lambda engine, i: order[i])
    trt.set_handler("ICudaEngine.get_tensor_mode", lambda engine, name: io[name][0])
    trt.set_handler("ICudaEngine.get_tensor_shape", lambda engine, name: io[name][1])
    trt.set_handler("ICudaEngine.get_tensor_dtype",
                    lambda engine, name: getattr(trt.DataType, (dtypes or {}).get(name, "FLOAT")))


def nms_layer_execute(trt, cudart, images_shape: tuple, images_dtype: type,
                      detect: Callable[[np.ndarray], dict]) -> None:
    """execute_async_v3 of an engine ending in TensorRT's NMS layer: outputs of data-dependent shape. As TensorRT
    does, it waits for the stream (the sizes depend on the data), asks each output's IOutputAllocator for memory
    (``reallocate_output`` on 8.6, ``reallocate_output_async`` from 10.x, as the class's docstring says), queues
    the results into that memory and reports the shapes with ``notify_shape``; an output without an allocator,
    or a null pointer from one, fails the execution. ``detect(images)`` gives {output name: array}."""
    sync_api = "reallocate_output" in trt.surface["classes"]["IOutputAllocator"]["members"]

    def execute(context, stream):
        cudart.run_pending(stream)
        address = {c.args[0]: c.args[1] for c in trt.calls_to("IExecutionContext.set_tensor_address")
                   if c.target is context}
        allocators = {c.args[0]: c.args[1] for c in trt.calls_to("IExecutionContext.set_output_allocator")
                      if c.target is context}
        nbytes = int(np.prod(images_shape)) * np.dtype(images_dtype).itemsize
        images = cudart.view(address["images"], nbytes).view(images_dtype).reshape(images_shape)
        for name, result in detect(images).items():
            if name not in allocators:
                return False  # "no output allocator for a data-dependent output"
            allocator, data = allocators[name], np.ascontiguousarray(result)
            pointer = (allocator.reallocate_output(name, None, data.nbytes, 256) if sync_api else
                       allocator.reallocate_output_async(name, None, data.nbytes, 256, stream))
            if not pointer:
                return False
            target = cudart.view(int(pointer), data.nbytes)
            cudart.enqueue(stream, lambda target=target, data=data: target.__setitem__(slice(None),
                                                                                       data.view(np.uint8).reshape(-1)))
            allocator.notify_shape(name, trt.Dims(list(data.shape)))
        return True

    trt.set_handler("IExecutionContext.execute_async_v3", execute)


def doubling_execute(trt, cudart, rows, *, fail_in_capture: bool = False) -> None:
    """execute_async_v3 of the fake ``trt`` enqueues scores = 2 * images (``rows()`` rows of 4 floats) on the
    stream through the fake CUDA runtime's device memory, so copies and CUDA graphs carry real data."""
    def execute(context, stream):
        if fail_in_capture and cudart.is_capturing(stream):
            return False
        address = {c.args[0]: c.args[1] for c in trt.calls_to("IExecutionContext.set_tensor_address")}
        nbytes = rows() * 4 * 4

        def double():
            out = cudart.view(address["scores"], nbytes).view(np.float32)
            out[:] = 2 * cudart.view(address["images"], nbytes).view(np.float32)

        cudart.enqueue(stream, double)
        return True

    trt.set_handler("IExecutionContext.execute_async_v3", execute)
