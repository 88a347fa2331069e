"""Published accuracy of the named variants, as data, and what a custom φ can claim.

Detectors: COCO AP (single model, single scale). D0–D7x on test-dev2017, from the google/automl EfficientDet
README's checkpoint table (github.com/google/automl/blob/master/efficientdet/README.md, "Pretrained EfficientDet
Checkpoints", AP^test column; its tf2/ copy lists older D2/D3 checkpoints at 43.9/47.2). EfficientDet-Lite0–4 and
Lite3x: google/automl's EfficientDet-Lite table (float models), as quoted in issue 19 (neither the figures nor the
COCO split they were measured on are re-checked here, so a Lite and a D differing by a few tenths are a tie).

Classifiers: ImageNet top-1. B0–B7 from Tan & Le 2019 (EfficientNet, Table 2); Lite0–4 (float) from Google's
EfficientNet-Lite table (tensorflow/tpu, models/official/efficientnet/lite/README.md), as quoted in issue 19.

A custom φ was never trained, so nothing is published for it: :func:`accuracy_of` interpolates linearly on the φ
axis between the named variants of its family (D0–D7 for a detector, B0–B7 for a classifier) and says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from effedge.arch.scaling import EFFICIENTDETS, EFFICIENTNETS, NAMED_VARIANTS, EfficientDetSpec, ModelSpec

COCO_AP = "COCO AP"
IMAGENET_TOP1 = "ImageNet top-1 %"
_SOURCES = {  # by the table a variant belongs to
    "d": "COCO test-dev2017, google/automl EfficientDet README",
    "d-lite": "google/automl EfficientDet-Lite table, float model",
    "b": "ImageNet, Tan & Le 2019 Table 2",
    "lite": "ImageNet, EfficientNet-Lite table (tensorflow/tpu), float model",
}

PUBLISHED: dict[str, float] = {
    # COCO AP test-dev: google/automl efficientdet/README.md
    "d0": 34.6, "d1": 40.5, "d2": 43.0, "d3": 47.5, "d4": 49.7, "d5": 51.5, "d6": 52.6, "d7": 53.7, "d7x": 55.1,
    # COCO AP, EfficientDet-Lite (float): google/automl
    "d-lite0": 26.4, "d-lite1": 31.5, "d-lite2": 35.1, "d-lite3": 38.8, "d-lite3x": 42.6, "d-lite4": 43.2,
    # ImageNet top-1: Tan & Le 2019, Table 2
    "b0": 77.1, "b1": 79.1, "b2": 80.1, "b3": 81.6, "b4": 82.9, "b5": 83.6, "b6": 84.0, "b7": 84.3,
    # ImageNet top-1, EfficientNet-Lite (float): tensorflow/tpu lite/README.md
    "lite0": 75.1, "lite1": 76.7, "lite2": 77.6, "lite3": 79.8, "lite4": 81.5,
}


@dataclass(frozen=True)
class Accuracy:
    value: float
    metric: str  # COCO_AP or IMAGENET_TOP1
    source: Literal["published", "interpolated"]
    basis: str  # where the figure comes from, in words


def _metric(spec: ModelSpec) -> str:
    return COCO_AP if isinstance(spec, EfficientDetSpec) else IMAGENET_TOP1


def accuracy_of(spec: ModelSpec) -> Optional[Accuracy]:
    """The published accuracy of a named variant (at its own input size: a candidate costed at another size is
    still labelled with it, and the basis says so), or for a custom φ the linear interpolation between the named
    variants on either side of it on the φ axis; None for a φ outside the table."""
    metric = _metric(spec)
    if spec.name in PUBLISHED:
        basis = f"{spec.name} as published: {_SOURCES[spec.name.rstrip('0123456789x')]}"
        native = NAMED_VARIANTS[spec.name].resolution
        if native != spec.resolution:
            basis += f", at {native} px (this one runs at {spec.resolution} px)"
        return Accuracy(PUBLISHED[spec.name], metric, "published", basis)
    named = EFFICIENTDETS if isinstance(spec, EfficientDetSpec) else EFFICIENTNETS
    anchors = sorted((v.phi, name) for name, v in named.items() if name in PUBLISHED and name != "d7x")
    below = [a for a in anchors if a[0] <= spec.phi]
    above = [a for a in anchors if a[0] >= spec.phi]
    if not below or not above or not math.isfinite(spec.phi):
        return None
    (phi_low, low), (phi_high, high) = below[-1], above[0]
    if phi_high == phi_low:
        value = PUBLISHED[low]
        basis = f"interpolated on the φ axis: φ={spec.phi:g} is where {low} sits (a custom network, not {low})"
    else:
        share = (spec.phi - phi_low) / (phi_high - phi_low)
        value = PUBLISHED[low] + share * (PUBLISHED[high] - PUBLISHED[low])
        basis = (f"interpolated on the φ axis between {low} ({PUBLISHED[low]:g}) and {high} "
                 f"({PUBLISHED[high]:g}); never trained or measured")
    return Accuracy(value, metric, "interpolated", basis)
