"""EfficientNet: stem, MBConv/depthwise-separable stages with squeeze-excite, optional classifier head.

The network is decoded from a :class:`~effedge.arch.scaling.EfficientNetSpec`; nothing here knows a variant
(the Lite family's ReLU6, missing squeeze-excite and fixed stem/head all come from the spec).
Module names follow the layout of the reference checkpoints (timm ``tf_efficientnet_*``), so those load
without renaming. Stochastic depth is a training regulariser and is not built: this is an inference network.
"""
from __future__ import annotations

import torch
from torch import nn

from effedge.models.layers import Conv2d, PadMode, Size, activation_layer
from effedge.arch.scaling import FEATURE_STAGES, EfficientNetSpec


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.SiLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


def squeeze_excite(channels: int, reduced: int) -> nn.Module:
    """Squeeze-excite of width ``reduced``; a width of 0 (an SE ratio of 0) means the block has none."""
    return SqueezeExcite(channels, reduced) if reduced else nn.Identity()


class BnAct(nn.BatchNorm2d):
    """BatchNorm followed by the network's activation (checkpoint keys are the BatchNorm's)."""

    def __init__(self, channels: int, *, eps: float, activation: str):
        super().__init__(channels, eps=eps)
        self.act = activation_layer(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class DepthwiseSeparable(nn.Module):
    """Depthwise k×k (+BN, activation), squeeze-excite, pointwise projection (+BN); residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, se_ratio: float, *, bn_eps: float,
                 activation: str, padding: PadMode, input_size: Size):
        super().__init__()
        self.conv_dw = Conv2d(in_ch, in_ch, kernel, stride=stride, groups=in_ch, padding=padding,
                              input_size=input_size)
        self.bn1 = BnAct(in_ch, eps=bn_eps, activation=activation)
        self.se = squeeze_excite(in_ch, round(in_ch * se_ratio))
        self.conv_pw = Conv2d(in_ch, out_ch, 1, padding=padding, input_size=self.conv_dw.out_size)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.out_size = self.conv_dw.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(self.bn1(self.conv_dw(x)))))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """MBConv: 1×1 expansion (+BN, activation), depthwise k×k (+BN, activation), squeeze-excite, 1×1 projection
    (+BN)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int, se_ratio: float, *,
                 bn_eps: float, activation: str, padding: PadMode, input_size: Size):
        super().__init__()
        mid = in_ch * expansion
        self.conv_pw = Conv2d(in_ch, mid, 1, padding=padding, input_size=input_size)
        self.bn1 = BnAct(mid, eps=bn_eps, activation=activation)
        self.conv_dw = Conv2d(mid, mid, kernel, stride=stride, groups=mid, padding=padding, input_size=input_size)
        self.bn2 = BnAct(mid, eps=bn_eps, activation=activation)
        # Squeeze width is a fraction of the block's input channels, not of the expanded ones.
        self.se = squeeze_excite(mid, round(in_ch * se_ratio))
        self.conv_pwl = Conv2d(mid, out_ch, 1, padding=padding, input_size=self.conv_dw.out_size)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.out_size = self.conv_dw.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return x + y if self.has_skip else y


class EfficientNet(nn.Module):
    """A scaled EfficientNet.

    With ``num_classes`` it is the classifier (logits ``[B, num_classes]``); with ``num_classes=None`` it is
    a detector backbone returning the P3, P4, P5 feature maps (strides 8, 16, 32) and has no head.
    """

    def __init__(self, spec: EfficientNetSpec, *, num_classes: int | None = 1000, image_size: Size,
                 padding: PadMode = "same", bn_eps: float = 1e-3):
        super().__init__()
        self.spec = spec
        self.image_size = image_size
        self.conv_stem = Conv2d(3, spec.stem_channels, 3, stride=2, padding=padding, input_size=image_size)
        act = spec.activation
        self.bn1 = BnAct(spec.stem_channels, eps=bn_eps, activation=act)
        size, in_ch = self.conv_stem.out_size, spec.stem_channels
        stages = []
        for stage in spec.stages:
            blocks = []
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                if stage.block == "ds":
                    block = DepthwiseSeparable(in_ch, stage.out_channels, stage.kernel, stride, stage.se_ratio,
                                               bn_eps=bn_eps, activation=act, padding=padding, input_size=size)
                else:
                    block = InvertedResidual(in_ch, stage.out_channels, stage.kernel, stride, stage.expansion,
                                             stage.se_ratio, bn_eps=bn_eps, activation=act, padding=padding,
                                             input_size=size)
                blocks.append(block)
                size, in_ch = block.out_size, stage.out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_classes = num_classes
        if num_classes is not None:
            self.conv_head = Conv2d(in_ch, spec.head_channels, 1, padding=padding, input_size=size)
            self.bn2 = BnAct(spec.head_channels, eps=bn_eps, activation=act)
            self.classifier = nn.Linear(spec.head_channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        features = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in FEATURE_STAGES:
                features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        features = self.forward_features(x)
        if self.num_classes is None:
            return features
        x = self.bn2(self.conv_head(features[-1]))
        return self.classifier(x.mean((2, 3)))
