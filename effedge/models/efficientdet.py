"""EfficientDet: EfficientNet backbone, BiFPN, and class/box heads shared across pyramid levels.

``forward`` returns ``(class_logits, box_regression)``, each a list over levels P_min..P_max of
``[B, A·C, H, W]`` and ``[B, A·4, H, W]`` (A anchors per location, C classes; channel index ``a·C + c``),
the order of the reference implementation. Box regression is (dy, dx, dh, dw) relative to anchors
(see :mod:`effedge.arch.anchors`).
"""
from __future__ import annotations

import torch
from torch import nn

from effedge.models.bifpn import BiFpn
from effedge.models.efficientnet import EfficientNet
from effedge.models.layers import PadMode, SeparableConv, Size, activation_layer
from effedge.arch.scaling import EfficientDetSpec
from effedge.arch.topology import pyramid_sizes

HEAD_BN_EPS = 1e-3


class Head(nn.Module):
    """Separable conv repeats shared across levels, with a BatchNorm per level and repeat, then a predictor."""

    def __init__(self, channels: int, layers: int, num_levels: int, out_channels: int, *, activation: str,
                 padding: PadMode, conv_bias: bool, input_size: Size):
        super().__init__()
        # Stride-1 3×3 padding is the same for every level, which is what lets the convs be shared.
        conv = dict(padding=padding, input_size=input_size)
        self.conv_rep = nn.ModuleList(
            SeparableConv(channels, channels, pw_bias=conv_bias, bn_eps=None, **conv) for _ in range(layers))
        self.bn_rep = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(channels, eps=HEAD_BN_EPS) for _ in range(num_levels))
            for _ in range(layers))
        self.act = activation_layer(activation)
        self.predict = SeparableConv(channels, out_channels, pw_bias=True, bn_eps=None, **conv)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(features):
            for conv, bns in zip(self.conv_rep, self.bn_rep):
                x = self.act(bns[level](conv(x)))
            outputs.append(self.predict(x))
        return outputs


class EfficientDet(nn.Module):
    """A scaled EfficientDet for a fixed input size.

    ``padding="same"`` builds the layout of the TensorFlow-ported checkpoints (``tf_efficientdet_*``: TF
    'same' padding, backbone BN eps 1e-3, a bias before every BN); ``"symmetric"`` that of the PyTorch-trained
    ones (``efficientdet_d*``: symmetric padding, backbone BN eps 1e-5, no redundant biases).
    """

    def __init__(self, spec: EfficientDetSpec, *, num_classes: int = 90, image_size: Size,
                 padding: PadMode = "same"):
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.image_size = image_size
        tf_layout = padding == "same"
        sizes = pyramid_sizes(image_size, spec.max_level)
        self.backbone = EfficientNet(spec.backbone, num_classes=None, image_size=image_size, padding=padding,
                                     bn_eps=1e-3 if tf_layout else 1e-5)
        self.fpn = BiFpn(spec.backbone.feature_channels, sizes, spec.fpn_channels, spec.fpn_layers,
                         min_level=spec.min_level, max_level=spec.max_level, fusion=spec.fusion,
                         activation=spec.activation, padding=padding, bn_eps=HEAD_BN_EPS, conv_bias=tf_layout)
        head = dict(activation=spec.activation, padding=padding, conv_bias=tf_layout, input_size=sizes[spec.min_level])
        self.class_net = Head(spec.fpn_channels, spec.head_layers, spec.num_levels,
                              spec.num_anchors * num_classes, **head)
        self.box_net = Head(spec.fpn_channels, spec.head_layers, spec.num_levels, spec.num_anchors * 4, **head)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.fpn(self.backbone(x))
        return self.class_net(features), self.box_net(features)
