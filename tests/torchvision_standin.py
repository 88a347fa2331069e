"""A pure-torch stand-in for the few torchvision names that timm and effdet import.

torchvision has no CPU wheel matching torch 2.13 here, yet the reference implementations (timm, effdet)
import it at module level. Only ``FrozenBatchNorm2d`` and the box NMS helpers are used by the code paths the
tests exercise (building models, forward passes); every other name resolves to an inert placeholder so that
imports succeed. Installed only by the tests, never by effedge itself.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics, with torchvision's parameter names."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            init = torch.ones if name in ("weight", "running_var") else torch.zeros
            self.register_buffer(name, init(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    top_left = torch.maximum(box[:2], boxes[:, :2])
    bottom_right = torch.minimum(box[2:], boxes[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = scores.argsort(descending=True)
    keep = []
    while order.numel():
        best = order[0]
        keep.append(best)
        order = order[1:][_iou(boxes[best], boxes[order[1:]]) <= iou_threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long)


def batched_nms(boxes, scores, idxs, iou_threshold):
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def remove_small_boxes(boxes, min_size):
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


_REAL_NAMES = {
    "torchvision.ops.misc": {"FrozenBatchNorm2d": FrozenBatchNorm2d},
    "torchvision.ops.boxes": {"nms": nms, "batched_nms": batched_nms, "remove_small_boxes": remove_small_boxes},
    "torchvision.ops": {"nms": nms, "batched_nms": batched_nms, "FrozenBatchNorm2d": FrozenBatchNorm2d},
}


class _Placeholder:
    """Any attribute, call or subscript of an unused torchvision name yields another placeholder."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def __getitem__(self, item):
        return _Placeholder()

    def __mro_entries__(self, bases):
        return (object,)


def _module_getattr(name: str):
    if name.startswith("__"):  # introspection (inspect, torch._dynamo) must see ordinary modules
        raise AttributeError(name)
    return _Placeholder()


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []  # every torchvision name is importable as a package
        module.__dict__.update(_REAL_NAMES.get(spec.name, {}))
        module.__file__ = __file__
        module.__getattr__ = _module_getattr
        return module

    def exec_module(self, module):
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
        return None


def install() -> None:
    """Make ``import torchvision…`` resolve to the stand-in (idempotent)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def import_effdet_model_module() -> types.ModuleType:
    """Import ``effdet.efficientdet`` (and its config) without running ``effdet/__init__``.

    The package's ``__init__`` pulls in the training/eval bench, which TorchScript-compiles NMS code at
    import time; the model definition itself needs none of it.
    """
    install()
    if "effdet" not in sys.modules:
        spec = importlib.util.find_spec("effdet")
        if spec is None:
            raise ImportError("effdet is not installed (pip install --no-deps effdet==0.4.1)")
        package = types.ModuleType("effdet")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["effdet"] = package
    return importlib.import_module("effdet.efficientdet")
