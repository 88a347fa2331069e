"""BiFPN: the weighted bidirectional feature pyramid of EfficientDet.

The topology is data (:func:`effedge.arch.topology.bifpn_nodes`): a top-down pass from the second-highest
level to the lowest, then a bottom-up pass back to the highest, each node fusing the latest feature of its level
with the neighbouring level (bottom-up nodes also take the level's original input). Each node resamples its inputs
to its level (1×1 conv+BN where channels differ, −inf-padded 3×3/2 max-pool down, nearest ×2 up), fuses
them (fast normalized weights relu(w)/(Σrelu(w)+1e-4), or a plain sum) and applies the activation (SiLU, or
ReLU6 for the Lite family) + separable conv + BN.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from effedge.models.layers import ConvBn, MaxPool2d, PadMode, SeparableConv, Size, activation_layer
from effedge.arch.scaling import Fusion
from effedge.arch.topology import bifpn_nodes

FUSION_EPS = 1e-4


class Resample(nn.Sequential):
    """Bring a feature map to ``channels`` and ``output_size``: optional 1×1 conv+BN, then pool or upsample."""

    def __init__(self, in_channels: int, channels: int, input_size: Size, output_size: Size, *,
                 padding: PadMode, bn_eps: float, conv_bias: bool):
        super().__init__()
        if in_channels != channels:
            self.add_module("conv", ConvBn(in_channels, channels, bias=conv_bias, bn_eps=bn_eps,
                                           padding=padding, input_size=input_size))
        if input_size[0] > output_size[0]:
            stride = (input_size[0] - 1) // output_size[0] + 1
            self.add_module("downsample", MaxPool2d(stride + 1, stride, padding=padding, input_size=input_size))
        elif input_size[0] < output_size[0]:
            ratios = (output_size[0] / input_size[0], output_size[1] / input_size[1])
            exact = all(r.is_integer() for r in ratios)
            # An exact ratio (the input size is a multiple of the largest stride) is the same resampling as a
            # target size, and keeps the size out of the graph's shape arithmetic.
            self.add_module("upsample", nn.Upsample(scale_factor=ratios, mode="nearest") if exact
                            else nn.Upsample(size=output_size, mode="nearest"))


class WeightedFusion(nn.Module):
    """Resample the inputs to the node's level and add them, weighted (fast normalized) or not (sum)."""

    def __init__(self, resample: nn.ModuleDict, fusion: Fusion):
        super().__init__()
        self.resample = resample
        self.edge_weights = nn.Parameter(torch.ones(len(resample))) if fusion == "fast_normalized" else None

    def fusion_weights(self) -> torch.Tensor | None:
        """Normalized weights; computed from parameters only, so an exporter can fold them to constants."""
        if self.edge_weights is None:
            return None
        weights = torch.relu(self.edge_weights)
        return weights / (weights.sum() + FUSION_EPS)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        inputs = [resample(features[int(offset)]) for offset, resample in self.resample.items()]
        weights = self.fusion_weights()
        if weights is not None:
            inputs = [x * weights[i] for i, x in enumerate(inputs)]
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out


class FpnNode(nn.Module):
    def __init__(self, combine: WeightedFusion, channels: int, *, activation: str, padding: PadMode,
                 bn_eps: float, conv_bias: bool, size: Size):
        super().__init__()
        self.combine = combine
        self.after_combine = nn.Sequential(OrderedDict(
            act=activation_layer(activation),
            conv=SeparableConv(channels, channels, pw_bias=conv_bias, bn_eps=bn_eps, padding=padding,
                               input_size=size),
        ))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.after_combine(self.combine(features))


class BiFpnLayer(nn.Module):
    def __init__(self, in_channels: list[int], sizes: dict[int, Size], channels: int, *, min_level: int,
                 max_level: int, fusion: Fusion, activation: str, padding: PadMode, bn_eps: float,
                 conv_bias: bool):
        super().__init__()
        levels = list(range(min_level, max_level + 1))
        feature_channels = list(in_channels)
        feature_sizes = [sizes[level] for level in levels]
        self.num_levels = len(levels)
        self.fnode = nn.ModuleList()
        for level, offsets in bifpn_nodes(min_level, max_level):
            resample = nn.ModuleDict({
                str(offset): Resample(feature_channels[offset], channels, feature_sizes[offset], sizes[level],
                                      padding=padding, bn_eps=bn_eps, conv_bias=conv_bias)
                for offset in offsets
            })
            self.fnode.append(FpnNode(WeightedFusion(resample, fusion), channels, activation=activation,
                                      padding=padding,
                                      bn_eps=bn_eps, conv_bias=conv_bias, size=sizes[level]))
            feature_channels.append(channels)
            feature_sizes.append(sizes[level])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(features)
        for node in self.fnode:
            features.append(node(features))
        return features[-self.num_levels:]


class BiFpn(nn.Module):
    """Extra pyramid levels above the backbone (P6, P7[, P8] by down-sampling), then the BiFPN layers."""

    def __init__(self, backbone_channels: tuple[int, ...], sizes: dict[int, Size], channels: int, layers: int, *,
                 min_level: int, max_level: int, fusion: Fusion, activation: str, padding: PadMode,
                 bn_eps: float, conv_bias: bool):
        super().__init__()
        in_channels = list(backbone_channels)
        self.resample = nn.ModuleDict()
        for index in range(len(backbone_channels), max_level - min_level + 1):
            level = min_level + index
            self.resample[str(index)] = Resample(in_channels[-1], channels, sizes[level - 1], sizes[level],
                                                 padding=padding, bn_eps=bn_eps, conv_bias=conv_bias)
            in_channels.append(channels)
        self.cell = nn.ModuleList()
        for _ in range(layers):
            self.cell.append(BiFpnLayer(in_channels, sizes, channels, min_level=min_level, max_level=max_level,
                                        fusion=fusion, activation=activation, padding=padding, bn_eps=bn_eps, conv_bias=conv_bias))
            in_channels = [channels] * len(in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(features)
        for extra in self.resample.values():
            features.append(extra(features[-1]))
        for layer in self.cell:
            features = layer(features)
        return features
