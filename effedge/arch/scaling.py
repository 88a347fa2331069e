"""Compound scaling: the EfficientNet / EfficientDet families as data, and custom φ.

Named variants reproduce the published tables (Tan & Le 2019, Tan et al. 2020, as implemented by the
reference ports), which deviate from the formula in places (B1's width, D5's BiFPN depth, D7's backbone).
The Lite family (EfficientNet-Lite0–4, EfficientDet-Lite0–4 and Lite3x; Google's edge variants, as in timm's
``tf_efficientnet_lite*`` and effdet's ``tf_efficientdet_lite*``) is the same network made friendly to integer
accelerators: ReLU6 instead of SiLU, no squeeze-excitation, a stem and head that are not scaled, first and last
stages whose depth is not scaled, plain-sum BiFPN fusion, and inputs normalized with mean = std = 0.5.

A custom compound coefficient φ (any float in [0, 7]) follows the formulas:

* backbone: width β^φ, depth α^φ, classifier resolution 224·γ^φ (α=1.2, β=1.1, γ=1.15);
* BiFPN: width 64·1.35^φ, depth 3+φ; box/class heads: 3+⌊φ/3⌋ layers; detector input 512+128φ;
* fusion: fast normalized for φ ≤ 5, plain sum above (as D6+ do, for training stability).

Rounding (the same rules the named variants were derived with):

* channels: ``make_divisible`` — nearest multiple of 8, never more than 10 % below the exact value;
* repeats and layer counts: ceil;
* input size: nearest multiple of the largest feature stride (32 for a classifier, 2^max_level for a
  detector), so every pyramid level has an integer size and up-sampling is exactly ×2.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Union

from effedge.errors import VariantError

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases of compound scaling
BIFPN_WIDTH_BASE = 1.35
CHANNEL_DIVISOR = 8
PHI_RANGE = (0.0, 7.0)

Fusion = Literal["fast_normalized", "sum"]
Activation = Literal["silu", "relu6"]
ACTIVATIONS: tuple[str, ...] = ("silu", "relu6")


@dataclass(frozen=True)
class Normalization:
    """What the network expects of an RGB pixel p in [0, 255]: (p/255 − mean) / std, per channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_NORMALIZATION = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # B0–B7, D0–D7x
LITE_NORMALIZATION = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the Lite family (timm, effdet)


@dataclass(frozen=True)
class StageSpec:
    """One stage of the B0 base network before scaling."""

    block: Literal["ds", "ir"]  # depthwise-separable, or inverted residual (MBConv)
    repeats: int
    kernel: int
    stride: int
    expansion: int
    channels: int
    se_ratio: float = 0.25  # squeeze-excite width relative to the block's *input* channels


BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec("ds", 1, 3, 1, 1, 16),
    StageSpec("ir", 2, 3, 2, 6, 24),
    StageSpec("ir", 2, 5, 2, 6, 40),
    StageSpec("ir", 3, 3, 2, 6, 80),
    StageSpec("ir", 3, 5, 1, 6, 112),
    StageSpec("ir", 4, 5, 2, 6, 192),
    StageSpec("ir", 1, 3, 1, 6, 320),
)
BASE_STEM_CHANNELS = 32
BASE_HEAD_CHANNELS = 1280
# Stages whose output feeds the detector's P3, P4, P5 (strides 8, 16, 32).
FEATURE_STAGES = (2, 4, 6)


def make_divisible(value: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping more than 10 % below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_repeats(repeats: int, depth: float) -> int:
    """Scale a repeat count by the depth multiplier (ceil, as the reference networks do)."""
    return int(math.ceil(repeats * depth - 1e-9))


def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (ties up), at least ``multiple``."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


@dataclass(frozen=True)
class ScaledStage:
    block: Literal["ds", "ir"]
    repeats: int
    kernel: int
    stride: int
    expansion: int
    out_channels: int
    se_ratio: float


@dataclass(frozen=True)
class EfficientNetSpec:
    """A scaled EfficientNet: the classifier, or the backbone of a detector."""

    name: str
    phi: float
    width: float
    depth: float
    resolution: int
    dropout: float  # classifier dropout; training only, kept for completeness of the table
    lite: bool = False  # the Lite rules: ReLU6, no SE, fixed stem/head and first/last stage depth
    normalization: Normalization = IMAGENET_NORMALIZATION

    @property
    def activation(self) -> Activation:
        return "relu6" if self.lite else "silu"

    @property
    def crop_pct(self) -> float:
        """The evaluation centre crop: TF's EfficientNet evaluation pads the crop by 32 px, so the crop is
        ``resolution / (resolution + 32)`` of the resized image (0.875 at 224 … 0.949 at 600: timm's crop_pct of
        tf_efficientnet_b0–b7 and lite0–2)."""
        return self.resolution / (self.resolution + 32)

    @property
    def stem_channels(self) -> int:
        return BASE_STEM_CHANNELS if self.lite else make_divisible(BASE_STEM_CHANNELS * self.width)

    @property
    def head_channels(self) -> int:
        return BASE_HEAD_CHANNELS if self.lite else make_divisible(BASE_HEAD_CHANNELS * self.width)

    @property
    def stages(self) -> tuple[ScaledStage, ...]:
        last = len(BASE_STAGES) - 1
        return tuple(
            ScaledStage(
                block=s.block,
                repeats=s.repeats if self.lite and i in (0, last) else scale_repeats(s.repeats, self.depth),
                kernel=s.kernel,
                stride=s.stride,
                expansion=s.expansion,
                out_channels=make_divisible(s.channels * self.width),
                se_ratio=0.0 if self.lite else s.se_ratio,
            )
            for i, s in enumerate(BASE_STAGES)
        )

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of the P3, P4, P5 features the detector takes from this backbone."""
        return tuple(self.stages[i].out_channels for i in FEATURE_STAGES)

    family: ClassVar[str] = "efficientnet"


@dataclass(frozen=True)
class EfficientDetSpec:
    name: str
    phi: float
    image_size: int
    backbone: EfficientNetSpec
    fpn_channels: int
    fpn_layers: int
    head_layers: int
    fusion: Fusion
    min_level: int = 3
    max_level: int = 7
    anchor_scale: float = 4.0
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    lite: bool = False  # ReLU6 in the BiFPN and heads (the backbone says the rest)
    normalization: Normalization = IMAGENET_NORMALIZATION
    family: ClassVar[str] = "efficientdet"

    @property
    def activation(self) -> Activation:
        return "relu6" if self.lite else "silu"

    @property
    def resolution(self) -> int:
        return self.image_size

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def largest_stride(self) -> int:
        return 2**self.max_level

    @property
    def size_multiple(self) -> int:
        """What input sizes must be a multiple of: the largest stride, so every level is exactly half the one
        below; 32 (the backbone's stride) for the Lite family, whose published 320 and 448 px are not multiples of
        128 (P6/P7 round up, as the reference does)."""
        return 32 if self.lite else self.largest_stride

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return self.num_scales * len(self.aspect_ratios)


ModelSpec = Union[EfficientNetSpec, EfficientDetSpec]

DEFAULT_NUM_CLASSES = {"efficientnet": 1000, "efficientdet": 90}  # per family: ImageNet, COCO

# name: (width, depth, resolution, dropout) — Tan & Le 2019, Table/appendix as in the reference ports.
_EFFICIENTNET_TABLE = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

EFFICIENTNETS: dict[str, EfficientNetSpec] = {
    name: EfficientNetSpec(name, float(i), w, d, r, drop)
    for i, (name, (w, d, r, drop)) in enumerate(_EFFICIENTNET_TABLE.items())
}

# name: (width, depth, resolution, dropout) — Google's EfficientNet-Lite table (tensorflow/tpu, lite/), as in timm.
# φ places each on the compound-scaling axis of the B variant with the same width/depth (Lite3 ≈ B3, Lite4 ≈ B4).
_LITE_TABLE = {
    "lite0": (0, 1.0, 1.0, 224, 0.2),
    "lite1": (1, 1.0, 1.1, 240, 0.2),
    "lite2": (2, 1.1, 1.2, 260, 0.3),
    "lite3": (3, 1.2, 1.4, 280, 0.3),
    "lite4": (4, 1.4, 1.8, 300, 0.3),
}

EFFICIENTNET_LITES: dict[str, EfficientNetSpec] = {
    name: EfficientNetSpec(name, float(phi), w, d, r, drop, lite=True, normalization=LITE_NORMALIZATION)
    for name, (phi, w, d, r, drop) in _LITE_TABLE.items()
}

# name: (φ, input, backbone, BiFPN channels, BiFPN layers, head layers, max level, fusion, anchor scale)
_EFFICIENTDET_TABLE = {
    "d0": (0, 512, "b0", 64, 3, 3, 7, "fast_normalized", 4.0),
    "d1": (1, 640, "b1", 88, 4, 3, 7, "fast_normalized", 4.0),
    "d2": (2, 768, "b2", 112, 5, 3, 7, "fast_normalized", 4.0),
    "d3": (3, 896, "b3", 160, 6, 4, 7, "fast_normalized", 4.0),
    "d4": (4, 1024, "b4", 224, 7, 4, 7, "fast_normalized", 4.0),
    "d5": (5, 1280, "b5", 288, 7, 4, 7, "fast_normalized", 4.0),
    "d6": (6, 1280, "b6", 384, 8, 5, 7, "sum", 4.0),
    "d7": (7, 1536, "b6", 384, 8, 5, 7, "sum", 5.0),
    "d7x": (7, 1536, "b7", 384, 8, 5, 8, "sum", 4.0),
}

EFFICIENTDETS: dict[str, EfficientDetSpec] = {
    name: EfficientDetSpec(
        name=name,
        phi=float(phi),
        image_size=size,
        backbone=EFFICIENTNETS[backbone],
        fpn_channels=channels,
        fpn_layers=layers,
        head_layers=heads,
        fusion=fusion,
        max_level=max_level,
        anchor_scale=anchor_scale,
    )
    for name, (phi, size, backbone, channels, layers, heads, max_level, fusion, anchor_scale)
    in _EFFICIENTDET_TABLE.items()
}

# name: (φ, input, backbone, BiFPN channels, BiFPN layers, head layers, anchor scale) — effdet's
# tf_efficientdet_lite* (google/automl): plain-sum fusion, ReLU6, levels P3–P7, 9 anchors per location.
_EFFICIENTDET_LITE_TABLE = {
    "d-lite0": (0, 320, "lite0", 64, 3, 3, 3.0),
    "d-lite1": (1, 384, "lite1", 88, 4, 3, 3.0),
    "d-lite2": (2, 448, "lite2", 112, 5, 3, 3.0),
    "d-lite3": (3, 512, "lite3", 160, 6, 4, 4.0),
    "d-lite3x": (3, 640, "lite3", 200, 6, 4, 3.0),
    "d-lite4": (4, 640, "lite4", 224, 7, 4, 4.0),
}

EFFICIENTDET_LITES: dict[str, EfficientDetSpec] = {
    name: EfficientDetSpec(
        name=name, phi=float(phi), image_size=size, backbone=EFFICIENTNET_LITES[backbone], fpn_channels=channels,
        fpn_layers=layers, head_layers=heads, fusion="sum", anchor_scale=anchor_scale, lite=True,
        normalization=LITE_NORMALIZATION)
    for name, (phi, size, backbone, channels, layers, heads, anchor_scale) in _EFFICIENTDET_LITE_TABLE.items()
}

NAMED_VARIANTS: dict[str, ModelSpec] = {**EFFICIENTNETS, **EFFICIENTNET_LITES, **EFFICIENTDETS,
                                        **EFFICIENTDET_LITES}


def check_phi(phi: float) -> float:
    low, high = PHI_RANGE
    if not (isinstance(phi, (int, float)) and math.isfinite(phi) and low <= phi <= high):
        raise VariantError(
            f"compound coefficient φ={phi} is out of range; use a value between {low:g} and {high:g} "
            "(d0 is φ=0, d7 is φ=7)"
        )
    return float(phi)


def _phi_name(phi: float) -> str:
    return f"phi{phi:g}"


def efficientnet_for_phi(phi: float) -> EfficientNetSpec:
    """A custom EfficientNet at compound coefficient φ (classifier resolution rounded to a multiple of 32)."""
    phi = check_phi(phi)
    return EfficientNetSpec(
        name=_phi_name(phi),
        phi=phi,
        width=BETA**phi,
        depth=ALPHA**phi,
        resolution=round_to_multiple(224 * GAMMA**phi, 32),
        dropout=min(0.2 + 0.05 * phi, 0.5),
    )


def efficientdet_for_phi(phi: float) -> EfficientDetSpec:
    """A custom EfficientDet at compound coefficient φ, from the scaling formulas (module docstring)."""
    phi = check_phi(phi)
    max_level = 7
    return EfficientDetSpec(
        name=_phi_name(phi),
        phi=phi,
        image_size=round_to_multiple(512 + 128 * phi, 2**max_level),
        backbone=efficientnet_for_phi(phi),
        fpn_channels=make_divisible(64 * BIFPN_WIDTH_BASE**phi),
        fpn_layers=scale_repeats(1, 3 + phi),
        head_layers=3 + int(math.floor(phi / 3 + 1e-9)),
        fusion="fast_normalized" if phi <= 5 else "sum",
        max_level=max_level,
    )


def resolve(variant: Union[str, float, int, ModelSpec]) -> ModelSpec:
    """A named variant ("b0".."b7", "d0".."d7x", "lite0".."lite4", "d-lite0".."d-lite4", "d-lite3x"; the timm and
    effdet names too) or a φ (float, or a numeric string) -> its spec; a spec is
    returned as it is, so a caller resolves once and passes the spec on.

    A φ means a custom EfficientDet; use :func:`efficientnet_for_phi` for a custom classifier.
    """
    if isinstance(variant, (EfficientNetSpec, EfficientDetSpec)):
        return variant
    return _lookup(variant)


def _lookup(variant: Union[str, float, int]) -> ModelSpec:
    if isinstance(variant, bool):
        raise VariantError(f"unknown variant {variant!r}; use b0..b7, d0..d7x, lite0..lite4, d-lite0..d-lite4 "
                           "or a number φ")
    if isinstance(variant, (int, float)):
        return efficientdet_for_phi(variant)
    text = str(variant).strip().lower()
    for prefix in ("tf_efficientdet_", "efficientdet_", "efficientdet-", "tf_efficientnet_", "efficientnet_",
                   "efficientnet-"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            if "det" in prefix and text.startswith("lite"):  # tf_efficientdet_lite0 is the detector d-lite0
                if prefix == "efficientdet_":
                    raise VariantError(f"{variant!r} is effdet's own untrained PyTorch config (other input size "
                                       "and anchors), not EfficientDet-Lite; use d-" + text + " (tf_efficientdet_"
                                       + text + ")")
                text = "d-" + text
            break
    if text in NAMED_VARIANTS:
        return NAMED_VARIANTS[text]
    number = text.removeprefix("phi").removeprefix("φ")
    try:
        phi = float(number)
    except ValueError:
        phi = None
    if phi is not None:
        return efficientdet_for_phi(phi)
    family_top = {"b": "b7", "d": "d7x", "lite": "lite4", "d-lite": "d-lite4"}
    head = text.rstrip("0123456789")
    if head in family_top and head != text:  # e.g. "d8", "lite5": past the end of the table
        close = [family_top[head]]
    else:
        close = difflib.get_close_matches(text, list(NAMED_VARIANTS), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else "use b0..b7, d0..d7x, lite0..lite4, d-lite0..d-lite4 (and d-lite3x), or a number φ such as 1.5"
    raise VariantError(f"unknown variant {variant!r}; {hint}")
