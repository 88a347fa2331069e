"""PyTorch backend: the exported graph's PyTorch original, for baselines and checks (eager, CPU or CUDA)."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from effedge.backends import Runner, TensorInfo
from effedge.errors import EffedgeError


class TorchRunner(Runner):
    """Rebuilds the network described by a build manifest (variant, input size, classes, padding, weights,
    input format) and runs it with the same inputs and outputs as its ONNX export."""

    name = "torch"

    def __init__(self, manifest: Mapping, *, device: str = "cpu", half: bool = False,
                 weights: Optional[object] = None):
        super().__init__()
        self.manifest = manifest
        self.device = device
        self.half = half
        recorded = manifest.get("weights")
        self.weights = weights if weights is not None else None if recorded == "random" else recorded
        if self.weights == "<state dict>":
            raise EffedgeError("this build was exported from an in-memory state dict; pass weights= to rebuild it")

    def activate(self) -> None:
        import torch

        from effedge.export import _deployable, output_names
        from effedge.models import build_model

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EffedgeError("torch backend: CUDA requested but torch sees no GPU")
        if self.half and not self.device.startswith("cuda"):
            raise EffedgeError("torch backend: fp16 needs a CUDA device")
        m = self.manifest
        model = build_model(m["variant"], weights=self.weights, num_classes=m.get("num_classes"),
                            image_size=tuple(m["resolution"]), pad=m.get("pad", "same"))
        self.module = _deployable(model, m.get("input", {}).get("format", "float")).to(self.device)
        if self.half:
            self.module = self.module.half()
        self.names = output_names(m.get("family") == "efficientdet")
        self.torch = torch

    def deactivate(self) -> None:
        self.module = None

    def input_info(self) -> list[TensorInfo]:
        fmt = self.manifest.get("input", {}).get("format", "float")
        h, w = self.manifest["resolution"]
        shape = ("batch", h, w, 3) if fmt == "uint8" else ("batch", 3, h, w)
        return [TensorInfo("images", shape, np.dtype(np.uint8 if fmt == "uint8" else np.float32))]

    def output_info(self) -> list[TensorInfo]:
        return [TensorInfo(name, (), np.dtype(np.float32)) for name in self.names]

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        images = torch.from_numpy(np.ascontiguousarray(feed["images"])).to(self.device)
        if self.half and images.dtype == torch.float32:
            images = images.half()
        with torch.inference_mode():
            outputs = self.module(images)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {name: t.float().cpu().numpy() for name, t in zip(self.names, outputs)}
