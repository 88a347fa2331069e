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

The same walk also lists a detector's layers as its simplified ONNX export has them (:func:`analytic_layers`, what
the latency predictor costs): BatchNorm folded into the convolution before it (which then has a bias), SiLU as
Sigmoid and Mul (ReLU6, the Lite family's, as one Clip), squeeze-excite's mean, pooling, up-sampling, fusion and
residual sums, and the output tail (reshapes, concatenations, box decoding). The export's constant folding moves
fast-normalized fusion weights into the producing convolutions where it can, leaving about one Mul per fused input
but one per node (the count differs by a layer or so per BiFPN cell); ``tests/test_profiles.py`` holds the list's
totals to the exported graph's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
             bias: bool = False, in_size: Size | None = None) -> None:
        weights = out_ch * (in_ch // groups) * kernel * kernel
        self.params += weights + (out_ch if bias else 0)
        self.macs += weights * out_size[0] * out_size[1]

    # Layers without params or MACs: only the layer list (_Layers) records them.
    def activate(self, channels: int, size: Size) -> None:
        pass

    def add(self, channels: int, size: Size, inputs: int = 2, *, weighted: bool = False) -> None:
        pass

    def resize(self, channels: int, in_size: Size, out_size: Size, *, pool: bool) -> None:
        pass

    def detector_outputs(self, sizes: list[Size], anchors: int, num_classes: int) -> None:
        pass

    def batch_norm(self, channels: int) -> None:
        self.params += 2 * channels

    def linear(self, in_features: int, out_features: int) -> None:
        self.params += in_features * out_features + out_features
        self.macs += in_features * out_features

    def squeeze_excite(self, channels: int, reduced: int, size: Size) -> None:
        """Two biased 1×1 convs on the pooled (1×1) map; a width of 0 means the block has none."""
        if reduced:
            self.conv(channels, reduced, 1, (1, 1), bias=True)
            self.conv(reduced, channels, 1, (1, 1), bias=True)

    def head(self, channels: int, outputs: int, layers: int, sizes: list[Size], *, conv_bias: bool) -> None:
        """A class or box head: stride-1 convs shared across levels (their params once, their MACs at every
        level's positions), and a BatchNorm per level and repeat."""
        per_position = _Tally()
        for _ in range(layers):
            per_position.separable(channels, channels, (1, 1), pw_bias=conv_bias)
        per_position.separable(channels, outputs, (1, 1), pw_bias=True)
        self.params += per_position.params
        self.macs += per_position.macs * sum(h * w for h, w in sizes)
        for _ in range(layers * len(sizes)):
            self.batch_norm(channels)

    def separable(self, channels: int, out_ch: int, size: Size, *, pw_bias: bool) -> None:
        """Depthwise 3×3 (no bias) then pointwise 1×1, stride 1."""
        self.conv(channels, channels, 3, size, groups=channels)
        self.conv(channels, out_ch, 1, size, bias=pw_bias)


@dataclass(frozen=True)
class Layer:
    """One layer of the exported graph: its op class (conv, pointwise, depthwise or memory), its MACs, and
    the elements it reads and writes (activations: inputs and outputs; weights: constant inputs)."""
    op_class: str
    macs: int
    activations: int
    weights: int


def _area(size: Size) -> int:
    return size[0] * size[1]


@dataclass
class _Layers(_Tally):
    """The walk as a list of the exported graph's layers (see the module docstring)."""
    layers: list[Layer] = field(default_factory=list)
    activation: str = "silu"  # the network's (spec.activation): what each activation exports as
    _unbiased: bool = False  # the last layer is a convolution without a bias

    def _memory(self, activations: int, weights: int = 0) -> None:
        self.layers.append(Layer("memory", 0, activations, weights))
        self._unbiased = False

    def _record_conv(self, in_ch: int, out_ch: int, kernel: int, out_size: Size, *, groups: int = 1,
                     bias: bool = False, in_size: Size | None = None) -> None:
        weights = out_ch * (in_ch // groups) * kernel * kernel
        kind = "depthwise" if groups > 1 and groups == in_ch else "pointwise" if kernel == 1 else "conv"
        self.layers.append(Layer(kind, weights * _area(out_size),
                                 in_ch * _area(in_size or out_size) + out_ch * _area(out_size),
                                 weights + (out_ch if bias else 0)))
        self._unbiased = not bias

    def conv(self, in_ch: int, out_ch: int, kernel: int, out_size: Size, *, groups: int = 1,
             bias: bool = False, in_size: Size | None = None) -> None:
        super().conv(in_ch, out_ch, kernel, out_size, groups=groups, bias=bias, in_size=in_size)
        self._record_conv(in_ch, out_ch, kernel, out_size, groups=groups, bias=bias, in_size=in_size)

    def batch_norm(self, channels: int) -> None:
        super().batch_norm(channels)
        if self._unbiased:  # folded into the convolution before it, whose bias its shift becomes
            last = self.layers[-1]
            self.layers[-1] = Layer(last.op_class, last.macs, last.activations, last.weights + channels)
            self._unbiased = False

    def activate(self, channels: int, size: Size) -> None:
        n = channels * _area(size)
        if self.activation == "relu6":
            self._memory(2 * n, 2)  # Clip, its bounds two constants
            return
        self._memory(2 * n)  # SiLU: Sigmoid
        self._memory(3 * n)  # and Mul

    def add(self, channels: int, size: Size, inputs: int = 2, *, weighted: bool = False) -> None:
        n = channels * _area(size)
        for _ in range(inputs - 1):
            if weighted:  # a fusion weight that the export could not fold into a convolution
                self._memory(2 * n, 1)
            self._memory(3 * n)

    def resize(self, channels: int, in_size: Size, out_size: Size, *, pool: bool) -> None:
        # MaxPool; or Resize, which takes its 4 scales as a constant
        self._memory(channels * (_area(in_size) + _area(out_size)), 0 if pool else 4)

    def squeeze_excite(self, channels: int, reduced: int, size: Size) -> None:
        if not reduced:
            return
        n = channels * _area(size)
        self._memory(n + channels)  # ReduceMean
        self.conv(channels, reduced, 1, (1, 1), bias=True)
        self.activate(reduced, (1, 1))
        self.conv(reduced, channels, 1, (1, 1), bias=True)
        self._memory(2 * channels)  # Sigmoid
        self._memory(2 * n + channels)  # Mul: the map by its channel gates

    def head(self, channels: int, outputs: int, layers: int, sizes: list[Size], *, conv_bias: bool) -> None:
        counted = _Tally()
        _Tally.head(counted, channels, outputs, layers, sizes, conv_bias=conv_bias)
        self.params += counted.params
        self.macs += counted.macs
        for size in sizes:  # the shared convs once per level; each pointwise one has a bias (or a folded BN)
            for _ in range(layers):
                self._record_conv(channels, channels, 3, size, groups=channels)
                self._record_conv(channels, channels, 1, size, bias=True)
                self.activate(channels, size)
            self._record_conv(channels, channels, 3, size, groups=channels)
            self._record_conv(channels, outputs, 1, size, bias=True)

    def detector_outputs(self, sizes: list[Size], anchors: int, num_classes: int) -> None:
        cells = [_area(size) for size in sizes]
        for width in (num_classes, 4):  # class logits, box regression: a reshape per level, then one tensor
            channels = anchors * width
            for count in cells:
                self._memory(2 * channels * count, 3)
            total = channels * sum(cells)
            self._memory(2 * total)  # Concat
            self._memory(2 * total)  # Transpose
            self._memory(2 * total, 3)  # Reshape
        n = anchors * sum(cells)  # box decoding, on (x, y) pairs
        self._memory(8 * n, 2)  # Split
        self._memory(4 * n, 2 * n)  # Mul by the anchor sizes
        self._memory(4 * n, 2 * n)  # Add the anchor centres
        self._memory(4 * n)  # Exp
        self._memory(4 * n, 2 * n)  # Mul by the anchor half sizes
        self._memory(6 * n)  # Sub
        self._memory(6 * n)  # Add
        self._memory(8 * n)  # Concat
        self._memory(2 * n * num_classes)  # Sigmoid: the scores


def _backbone(tally: _Tally, spec: EfficientNetSpec, image_size: Size) -> tuple[list[int], Size, int]:
    """Stem and stages; returns (channels of the detector's features, last size, last channels)."""
    size = _strided(image_size, 2)
    tally.conv(3, spec.stem_channels, 3, size, in_size=image_size)
    tally.batch_norm(spec.stem_channels)
    tally.activate(spec.stem_channels, size)
    in_ch = spec.stem_channels
    features = []
    for index, stage in enumerate(spec.stages):
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            out_size = _strided(size, stride)
            # Squeeze width is a fraction of the block's input channels, as the model builds it.
            reduced = round(in_ch * stage.se_ratio)
            if stage.block == "ds":
                mid = in_ch
            else:
                mid = in_ch * stage.expansion
                tally.conv(in_ch, mid, 1, size)
                tally.batch_norm(mid)
                tally.activate(mid, size)
            tally.conv(mid, mid, stage.kernel, out_size, groups=mid, in_size=size)
            tally.batch_norm(mid)
            tally.activate(mid, out_size)
            tally.squeeze_excite(mid, reduced, out_size)
            tally.conv(mid, stage.out_channels, 1, out_size)
            tally.batch_norm(stage.out_channels)
            if stride == 1 and in_ch == stage.out_channels:  # the residual
                tally.add(in_ch, out_size)
            size, in_ch = out_size, stage.out_channels
        if index in FEATURE_STAGES:
            features.append(in_ch)
    return features, size, in_ch


def _resample(tally: _Tally, in_ch: int, channels: int, in_size: Size, out_size: Size, *, conv_bias: bool) -> None:
    """A 1×1 conv+BN (before any pooling or up-sampling, at the input's size) where channels differ, then a
    max-pool down or an up-sampling to ``out_size``."""
    if in_ch != channels:
        tally.conv(in_ch, channels, 1, in_size, bias=conv_bias)
        tally.batch_norm(channels)
    if in_size != out_size:
        tally.resize(channels, in_size, out_size, pool=in_size[0] > out_size[0])


def _detector(tally: _Tally, spec: EfficientDetSpec, image_size: Size, num_classes: int) -> None:
    conv_bias = True  # the TF layout: a bias in every BiFPN/head conv that precedes a BatchNorm
    backbone_channels, _, _ = _backbone(tally, spec.backbone, image_size)
    sizes = pyramid_sizes(image_size, spec.max_level)
    levels = list(range(spec.min_level, spec.max_level + 1))
    channels = spec.fpn_channels

    # Levels above the backbone's: each resamples (conv where channels differ, then max-pool) the one below.
    in_channels = list(backbone_channels)
    for level in levels[len(backbone_channels):]:
        _resample(tally, in_channels[-1], channels, sizes[level - 1], sizes[level], conv_bias=conv_bias)
        in_channels.append(channels)

    for _ in range(spec.fpn_layers):
        feature_channels, feature_levels = list(in_channels), list(levels)
        for level, offsets in bifpn_nodes(spec.min_level, spec.max_level):
            for offset in offsets:
                _resample(tally, feature_channels[offset], channels, sizes[feature_levels[offset]], sizes[level],
                          conv_bias=conv_bias)
            if spec.fusion == "fast_normalized":
                tally.params += len(offsets)  # one weight per input
            tally.add(channels, sizes[level], len(offsets), weighted=spec.fusion == "fast_normalized")
            tally.activate(channels, sizes[level])
            tally.separable(channels, channels, sizes[level], pw_bias=conv_bias)
            tally.batch_norm(channels)
            feature_channels.append(channels)
            feature_levels.append(level)
        in_channels = [channels] * len(in_channels)

    for outputs in (spec.num_anchors * num_classes, spec.num_anchors * 4):
        tally.head(channels, outputs, spec.head_layers, [sizes[level] for level in levels], conv_bias=conv_bias)
    tally.detector_outputs([sizes[level] for level in levels], spec.num_anchors, num_classes)


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


def analytic_layers(variant: Union[str, float, ModelSpec], image_size: Union[int, Size, None] = None,
                    num_classes: int | None = None, activation: str | None = None) -> list[Layer]:
    """The layers of detector ``variant``'s simplified ONNX export (raw outputs, no NMS tail), in graph order up
    to the output tail, without building or exporting it. Defaults as :func:`analytic_complexity`; the
    activation is the spec's (``activation`` prices the same network with the other one)."""
    spec = resolve(variant)
    if not isinstance(spec, EfficientDetSpec):
        raise TypeError(f"{spec.name}: the analytic layer list covers detectors only")
    recorder = _Layers(activation=activation or spec.activation)
    _detector(recorder, spec, input_size_for(spec, image_size), num_classes or DEFAULT_NUM_CLASSES[spec.family])
    return recorder.layers
