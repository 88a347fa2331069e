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

    def to_device(self, array: np.ndarray):
        """The input as a tensor on the runner's device; floating point in the weights' dtype (integer images
        stay integer: the module's normalization casts them)."""
        images = self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        if images.is_floating_point():
            images = images.to(next(self.module.parameters()).dtype)
        return images

    def forward(self, images) -> tuple:
        """The module on a device tensor (asynchronous on CUDA); the outputs stay on the device."""
        with self.torch.inference_mode():
            outputs = self.module(images)
        return outputs if isinstance(outputs, tuple) else (outputs,)

    def to_host(self, outputs: tuple) -> dict[str, np.ndarray]:
        return {name: t.float().cpu().numpy() for name, t in zip(self.names, outputs)}

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.to_host(self.forward(self.to_device(feed[self.inputs[0].name])))
