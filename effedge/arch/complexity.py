"""Params and MACs of a variant, computed from its spec alone (pure Python: ``effedge models`` needs no torch).

The walk mirrors, layer by layer, the network :mod:`effedge.models` builds with its default layout (TF 'same'
padding, the ``tf_*`` checkpoints' biases before the BiFPN and head BatchNorms), and counts as
``effedge.models.count_params`` / ``count_macs`` do, which ``tests/test_complexity.py`` holds it to exactly:

* params: every weight and bias; a BatchNorm has two (scale, shift; its running statistics are buffers);
  fast normalized fusion has one weight per node input;
* MACs: convolutions (output positions × output channels × input channels per group × kernel area, biases
  not counted) and linear layers (in × out); pooling, up-sampling, BatchNorm, activations, squeeze-excite's
  mean and the elementwise products and sums are free.

Feature maps follow TF 'same' arithmetic: a stride-s layer gives ceil(size / s).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from effedge.arch.scaling import DEFAULT_NUM_CLASSES, FEATURE_STAGES, EfficientDetSpec, EfficientNetSpec, ModelSpec, \
    resolve
from effedge.arch.topology import Size, bifpn_nodes, input_size_for, pyramid_sizes


def _strided(size: Size, stride: int) -> Size:
    return -(-size[0] // stride), -(-size[1] // stride)


@dataclass
class _Tally:
    params: int = 0
    macs: int = 0

    def conv(self, in_ch: int, out_ch: int, kernel: int, out_size: Size, *, groups: int = 1,
             bias: bool = False) -> None:
        weights = out_ch * (in_ch // groups) * kernel * kernel
        self.params += weights + (out_ch if bias else 0)
        self.macs += weights * out_size[0] * out_size[1]

    def batch_norm(self, channels: int) -> None:
        self.params += 2 * channels

    def linear(self, in_features: int, out_features: int) -> None:
        self.params += in_features * out_features + out_features
        self.macs += in_features * out_features

    def squeeze_excite(self, channels: int, reduced: int) -> None:
        """Two biased 1×1 convs on the pooled (1×1) map; a width of 0 means the block has none."""
        if reduced:
            self.conv(channels, reduced, 1, (1, 1), bias=True)
            self.conv(reduced, channels, 1, (1, 1), bias=True)

    def separable(self, channels: int, out_ch: int, size: Size, *, pw_bias: bool) -> None:
        """Depthwise 3×3 (no bias) then pointwise 1×1, stride 1."""
        self.conv(channels, channels, 3, size, groups=channels)
        self.conv(channels, out_ch, 1, size, bias=pw_bias)


def _backbone(tally: _Tally, spec: EfficientNetSpec, image_size: Size) -> tuple[list[int], Size, int]:
    """Stem and stages; returns (channels of the detector's features, last size, last channels)."""
    size = _strided(image_size, 2)
    tally.conv(3, spec.stem_channels, 3, size)
    tally.batch_norm(spec.stem_channels)
    in_ch = spec.stem_channels
    features = []
    for index, stage in enumerate(spec.stages):
        for repeat in range(stage.repeats):
            out_size = _strided(size, stage.stride if repeat == 0 else 1)
            # Squeeze width is a fraction of the block's input channels, as the model builds it.
            reduced = round(in_ch * stage.se_ratio)
            if stage.block == "ds":
                mid = in_ch
            else:
                mid = in_ch * stage.expansion
                tally.conv(in_ch, mid, 1, size)
                tally.batch_norm(mid)
            tally.conv(mid, mid, stage.kernel, out_size, groups=mid)
            tally.batch_norm(mid)
            tally.squeeze_excite(mid, reduced)
            tally.conv(mid, stage.out_channels, 1, out_size)
            tally.batch_norm(stage.out_channels)
            size, in_ch = out_size, stage.out_channels
        if index in FEATURE_STAGES:
            features.append(in_ch)
    return features, size, in_ch


def _resample(tally: _Tally, in_ch: int, channels: int, in_size: Size, *, conv_bias: bool) -> None:
    """A 1×1 conv+BN (before any pooling or up-sampling, at the input's size) where channels differ."""
    if in_ch != channels:
        tally.conv(in_ch, channels, 1, in_size, bias=conv_bias)
        tally.batch_norm(channels)


def _detector(tally: _Tally, spec: EfficientDetSpec, image_size: Size, num_classes: int) -> None:
    conv_bias = True  # the TF layout: a bias in every BiFPN/head conv that precedes a BatchNorm
    backbone_channels, _, _ = _backbone(tally, spec.backbone, image_size)
    sizes = pyramid_sizes(image_size, spec.max_level)
    levels = list(range(spec.min_level, spec.max_level + 1))
    channels = spec.fpn_channels

    # Levels above the backbone's: each resamples (conv where channels differ, then max-pool) the one below.
    in_channels = list(backbone_channels)
    for level in levels[len(backbone_channels):]:
        _resample(tally, in_channels[-1], channels, sizes[level - 1], conv_bias=conv_bias)
        in_channels.append(channels)

    for _ in range(spec.fpn_layers):
        feature_channels, feature_levels = list(in_channels), list(levels)
        for level, offsets in bifpn_nodes(spec.min_level, spec.max_level):
            for offset in offsets:
                _resample(tally, feature_channels[offset], channels, sizes[feature_levels[offset]],
                          conv_bias=conv_bias)
            if spec.fusion == "fast_normalized":
                tally.params += len(offsets)  # one weight per input
            tally.separable(channels, channels, sizes[level], pw_bias=conv_bias)
            tally.batch_norm(channels)
            feature_channels.append(channels)
            feature_levels.append(level)
        in_channels = [channels] * len(in_channels)

    # Class and box heads: stride-1 convs shared across levels (their params once, their MACs at every level's
    # positions), and a BatchNorm per level and repeat.
    positions = sum(sizes[level][0] * sizes[level][1] for level in levels)
    for outputs in (spec.num_anchors * num_classes, spec.num_anchors * 4):
        head = _Tally()  # counted on a 1×1 map: MACs per position
        for _ in range(spec.head_layers):
            head.separable(channels, channels, (1, 1), pw_bias=conv_bias)
        head.separable(channels, outputs, (1, 1), pw_bias=True)
        tally.params += head.params
        tally.macs += head.macs * positions
        for _ in range(spec.head_layers * len(levels)):
            tally.batch_norm(channels)


def _classifier(tally: _Tally, spec: EfficientNetSpec, image_size: Size, num_classes: int) -> None:
    _, size, in_ch = _backbone(tally, spec, image_size)
    tally.conv(in_ch, spec.head_channels, 1, size)
    tally.batch_norm(spec.head_channels)
    tally.linear(spec.head_channels, num_classes)


def analytic_complexity(variant: Union[str, float, ModelSpec], image_size: Union[int, Size, None] = None,
                        num_classes: int | None = None) -> tuple[int, int]:
    """(params, MACs for one image) of the network ``build_model(variant, image_size=..., num_classes=...)``
    builds, without building it. Defaults: the variant's resolution; 90 classes (detector), 1000 (classifier)."""
    spec = resolve(variant)
    size = input_size_for(spec, image_size)
    classes = num_classes or DEFAULT_NUM_CLASSES[spec.family]
    tally = _Tally()
    if isinstance(spec, EfficientDetSpec):
        _detector(tally, spec, size, classes)
    else:
        _classifier(tally, spec, size, classes)
    return tally.params, tally.macs
