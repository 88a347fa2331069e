"""pytest plugin: the ``trt_fake`` and ``rtx_fake`` fixtures and the ``trt_api`` marker.

``trt_fake`` runs a test once per TensorRT version in :data:`trt_surface.TRT_VERSIONS` with a
:class:`trt_fake.FakeTensorRT` of that version installed as ``sys.modules["tensorrt"]`` (code under test
must ``import tensorrt`` when it runs, not at its own import time, to see it). ``rtx_fake`` installs a fake of
the installed TensorRT-RTX as ``sys.modules["tensorrt_rtx"]`` the same way. Tests using them are marked
``trt_api``; they skip only when the binding wheels cannot be downloaded, or TensorRT-RTX is not installed.
"""
from __future__ import annotations

import sys
from typing import Iterator, Union

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


def _installed(fake: FakeTensorRT) -> Iterator[FakeTensorRT]:
    """``fake`` as ``sys.modules[<its module name>]`` while the test runs; what was there before afterwards."""
    name = fake.__name__
    missing = object()
    previous = sys.modules.get(name, missing)
    sys.modules[name] = fake
    try:
        yield fake
    finally:
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


def declare_engine_io(trt, io: dict) -> None:
    """Make every ICudaEngine of the fake ``trt`` declare ``io``: {name: (TensorIOMode, shape)}, float32."""
    order = list(io)
    trt.set_attr("ICudaEngine.num_io_tensors", len(order))
    trt.set_handler("ICudaEngine.get_tensor_name", lambda engine, i: order[i])
    trt.set_handler("ICudaEngine.get_tensor_mode", lambda engine, name: io[name][0])
    trt.set_handler("ICudaEngine.get_tensor_shape", lambda engine, name: io[name][1])
    trt.set_handler("ICudaEngine.get_tensor_dtype", lambda engine, name: trt.DataType.FLOAT)


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
