"""PyTorch backend: a network's PyTorch original, eager on the CPU or CUDA, for baselines and checks.

The caller builds the module (the export stage does it from a build manifest), so this runner
imports torch only, never the model or export code."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from effedge.errors import EffedgeError
from effedge.runtime.base import Runner, TensorInfo


class TorchRunner(Runner):
    """Runs ``build_module()`` (a torch module mapping the input tensor to the named outputs)."""

    name = "torch"

    def __init__(self, build_module: Callable[[], Any], inputs: list[TensorInfo], output_names: list[str], *,
                 device: str = "cpu", half: bool = False):
        super().__init__()
        self.build_module = build_module
        self.inputs = inputs
        self.names = output_names
        self.device = device
        self.half = half

    def activate(self) -> None:
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EffedgeError("torch backend: CUDA requested but torch sees no GPU")
        if self.half and not self.device.startswith("cuda"):
            raise EffedgeError("torch backend: fp16 needs a CUDA device")
        self.module = self.build_module().to(self.device)
        if self.half:
            self.module = self.module.half()
        self.torch = torch

    def deactivate(self) -> None:
        self.module = None

    def input_info(self) -> list[TensorInfo]:
        return list(self.inputs)

    def output_info(self) -> list[TensorInfo]:
        return [TensorInfo(name, (), np.dtype(np.float32)) for name in self.names]

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        name = self.inputs[0].name
        images = torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device)
        if self.half and images.dtype == torch.float32:
            images = images.half()
        with torch.inference_mode():
            outputs = self.module(images)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {name: t.float().cpu().numpy() for name, t in zip(self.names, outputs)}
