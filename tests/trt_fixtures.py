"""pytest plugin: the ``trt_fake`` fixture and the ``trt_api`` marker.

``trt_fake`` runs a test once per TensorRT version in :data:`trt_surface.TRT_VERSIONS` with a
:class:`trt_fake.FakeTensorRT` of that version installed as ``sys.modules["tensorrt"]`` (code under test
must ``import tensorrt`` when it runs, not at its own import time, to see it). Tests using it are marked
``trt_api``; they skip only when the binding wheels cannot be downloaded.
"""
from __future__ import annotations

import sys
from typing import Iterator, Union

import pytest
from trt_fake import FakeTensorRT
from trt_surface import TRT_VERSIONS, WheelsUnavailable, surface

SKIP_REASON = "TensorRT binding wheels not downloadable: {}"

# One extraction per version and session; a failed download is remembered so pip runs once, not per test.
_surfaces: dict[str, Union[dict, WheelsUnavailable]] = {}


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "trt_api: runs against the real API surface of each TensorRT version "
                                       "(tests/trt_fake.py; downloads the binding wheels once)")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "trt_fake" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.trt_api)


@pytest.fixture(params=TRT_VERSIONS, ids=[f"trt{version}" for version in TRT_VERSIONS])
def trt_fake(request: pytest.FixtureRequest) -> Iterator[FakeTensorRT]:
    fake = FakeTensorRT(load_surface(request.param))
    missing = object()
    previous = sys.modules.get("tensorrt", missing)
    sys.modules["tensorrt"] = fake
    try:
        yield fake
    finally:
        if previous is missing:
            sys.modules.pop("tensorrt", None)
        else:
            sys.modules["tensorrt"] = previous
