"""One runner contract for every backend (TensorRT, ONNX Runtime, torch).

A runner is a context manager: ``activate`` loads what it needs, ``infer`` maps input names to arrays and
returns output names to arrays, ``deactivate`` releases resources. Backends import their heavy modules lazily,
inside ``activate``, so importing this package needs only numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from effedge.errors import EffedgeError


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # ints, or str/None for dynamic dimensions
    dtype: np.dtype


class Runner:
    """Base of all backends."""

    name = "runner"

    def __init__(self) -> None:
        self.active = False
        self.startup: dict = {}  # what starting cost, where the backend measures it (e.g. context_seconds)
        self.notes: list[str] = []  # warnings that did not stop the run

    def __enter__(self) -> "Runner":
        self.activate()
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()
        self.active = False

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        pass

    def input_info(self) -> list[TensorInfo]:
        raise NotImplementedError

    def output_info(self) -> list[TensorInfo]:
        raise NotImplementedError

    def metadata(self) -> dict[str, str]:
        """The model file's own key/value metadata (an ONNX graph's metadata_props); empty where there is none."""
        return {}

    def batch_range(self) -> tuple[int, Optional[int]]:
        """The smallest and largest batch the model's inputs take: a static batch is both; (1, None) where the
        batch is dynamic and the backend knows no limit."""
        fixed = {info.shape[0] for info in self.input_info()
                 if info.shape and isinstance(info.shape[0], int) and info.shape[0] > 0}
        return (min(fixed), min(fixed)) if fixed else (1, None)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            raise RuntimeError(f"{self.name} runner used outside its `with` block")
        self.check_inputs(feed)
        return self._infer(feed)

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def check_inputs(self, feed: Mapping[str, np.ndarray]) -> None:
        """Names, dtypes and static dimensions must match the model's inputs."""
        expected = {info.name: info for info in self.input_info()}
        if set(feed) != set(expected):
            raise EffedgeError(f"{self.name}: inputs {sorted(feed)} given, the model takes {sorted(expected)}")
        for name, array in feed.items():
            info = expected[name]
            if np.dtype(array.dtype) != info.dtype:
                raise EffedgeError(f"{self.name}: input '{name}' is {array.dtype}, the model takes {info.dtype}")
            fixed = [(i, d) for i, d in enumerate(info.shape) if isinstance(d, int) and d >= 0]  # -1: dynamic
            if array.ndim != len(info.shape) or any(array.shape[i] != d for i, d in fixed):
                raise EffedgeError(f"{self.name}: input '{name}' has shape {tuple(array.shape)}, the model takes "
                                   f"{tuple(info.shape)}")
