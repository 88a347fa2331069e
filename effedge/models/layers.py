"""Building blocks shared by the backbone, the BiFPN and the heads.

Padding is resolved when a layer is built, for the known size of its input, so the network holds no
shape arithmetic at run time:

* ``"same"`` — TensorFlow 'SAME' (what the ``tf_*`` checkpoints were trained with): output = ceil(in/stride),
  the total padding split with the extra pixel at the bottom/right. Symmetric cases become the layer's own
  padding; asymmetric ones an explicit pad in front of it (zeros for convolutions, −inf for max-pooling).
* ``"symmetric"`` — PyTorch-style ``(stride − 1 + dilation·(kernel − 1)) // 2`` on every side (the
  ``efficientdet_d*`` checkpoints trained in PyTorch).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

PadMode = Literal["same", "symmetric"]
Size = tuple[int, int]
PAD_MODES: tuple[str, ...] = ("same", "symmetric")


def activation_layer(kind: str) -> nn.Module:
    """The network's activation: SiLU (B/D families) or ReLU6 (Lite: exports as Clip(0, 6), which TensorRT
    fuses into the convolution before it)."""
    if kind == "silu":
        return nn.SiLU()
    if kind == "relu6":
        return nn.ReLU6()
    raise ValueError(f"unknown activation {kind!r}; use silu or relu6")


def _same_pad_1d(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def resolve_padding(mode: PadMode, size: Size, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """Padding (left, right, top, bottom) for a ``kernel``/``stride`` window over an input of ``size`` (H, W)."""
    if mode == "symmetric":
        p = (stride - 1 + kernel - 1) // 2
        return p, p, p, p
    top, bottom = _same_pad_1d(size[0], kernel, stride)
    left, right = _same_pad_1d(size[1], kernel, stride)
    return left, right, top, bottom


def output_size(size: Size, kernel: int, stride: int, pads: tuple[int, int, int, int]) -> Size:
    left, right, top, bottom = pads
    return (
        (size[0] + top + bottom - kernel) // stride + 1,
        (size[1] + left + right - kernel) // stride + 1,
    )


class _StaticPad:
    """Mix-in: applies a fixed (left, right, top, bottom) pad that the layer's own padding cannot express."""

    explicit_pad: tuple[int, int, int, int] | None
    pad_value: float

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.explicit_pad is None:
            return x
        return F.pad(x, self.explicit_pad, value=self.pad_value)


def _split_pads(pads: tuple[int, int, int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """Symmetric pads go to the layer's own ``padding``; asymmetric ones become an explicit pad."""
    left, right, top, bottom = pads
    if left == right and top == bottom:
        return (top, left), None
    return (0, 0), pads


class Conv2d(_StaticPad, nn.Conv2d):
    """``nn.Conv2d`` with padding resolved for a known input size; ``out_size`` is its output size."""

    pad_value = 0.0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 groups: int = 1, bias: bool = False, padding: PadMode, input_size: Size):
        pads = resolve_padding(padding, input_size, kernel_size, stride)
        own, explicit = _split_pads(pads)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=own, groups=groups,
                         bias=bias)
        self.explicit_pad = explicit
        self.out_size = output_size(input_size, kernel_size, stride, pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self._pad(x))


class MaxPool2d(_StaticPad, nn.MaxPool2d):
    """``nn.MaxPool2d`` with padding resolved for a known input size (pads with −inf, as TF does)."""

    pad_value = float("-inf")

    def __init__(self, kernel_size: int, stride: int, *, padding: PadMode, input_size: Size):
        pads = resolve_padding(padding, input_size, kernel_size, stride)
        own, explicit = _split_pads(pads)
        super().__init__(kernel_size, stride, padding=own)
        self.explicit_pad = explicit
        self.out_size = output_size(input_size, kernel_size, stride, pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self._pad(x))


class SeparableConv(nn.Module):
    """Depthwise k×k then pointwise 1×1, optionally followed by BN (the BiFPN/head convolution)."""

    def __init__(self, channels: int, out_channels: int, *, pw_bias: bool, bn_eps: float | None,
                 padding: PadMode, input_size: Size):
        super().__init__()
        self.conv_dw = Conv2d(channels, channels, 3, groups=channels, padding=padding, input_size=input_size)
        self.conv_pw = Conv2d(channels, out_channels, 1, bias=pw_bias, padding=padding, input_size=input_size)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps) if bn_eps is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pw(self.conv_dw(x))
        return self.bn(x) if self.bn is not None else x


class ConvBn(nn.Module):
    """1×1 projection + BN (channel adaptation of a backbone feature into the BiFPN)."""

    def __init__(self, in_channels: int, out_channels: int, *, bias: bool, bn_eps: float, padding: PadMode,
                 input_size: Size):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, 1, bias=bias, padding=padding, input_size=input_size)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))
