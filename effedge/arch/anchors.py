"""Anchor boxes of EfficientDet (NumPy only: the runtime decodes with it on devices without torch).

Per level l (stride s = 2^l) and location (y, x), anchors are centred at ((y+½)·s, (x+½)·s) with base size
``anchor_scale · s · 2^(octave/num_scales)`` stretched by each aspect pair (ax, ay). Order: level, y, x,
octave, aspect — the order of the flattened head outputs. Boxes are (ymin, xmin, ymax, xmax) in input pixels.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def generate_anchors(image_size: tuple[int, int], *, min_level: int, max_level: int, anchor_scale: float,
                     num_scales: int, aspect_ratios: Sequence[tuple[float, float]]) -> np.ndarray:
    """All anchors as a float32 array ``[N, 4]`` of (ymin, xmin, ymax, xmax)."""
    height, width = image_size
    levels = []
    size_h, size_w = height, width
    sizes = {}
    for level in range(1, max_level + 1):
        size_h, size_w = (size_h + 1) // 2, (size_w + 1) // 2
        sizes[level] = (size_h, size_w)
    for level in range(min_level, max_level + 1):
        feat_h, feat_w = sizes[level]
        stride_y, stride_x = height / feat_h, width / feat_w
        half_sizes = np.array([
            (anchor_scale * stride_y * 2 ** (octave / num_scales) * ay / 2,
             anchor_scale * stride_x * 2 ** (octave / num_scales) * ax / 2)
            for octave in range(num_scales) for ax, ay in aspect_ratios
        ])  # [A, 2] (half height, half width)
        cy = np.arange(stride_y / 2, height, stride_y)[:feat_h]
        cx = np.arange(stride_x / 2, width, stride_x)[:feat_w]
        centers = np.stack(np.meshgrid(cy, cx, indexing="ij"), axis=-1).reshape(-1, 1, 2)  # [HW, 1, 2]
        boxes = np.concatenate([centers - half_sizes, centers + half_sizes], axis=-1)  # [HW, A, 4]
        levels.append(boxes.reshape(-1, 4))
    return np.concatenate(levels).astype(np.float32)


def anchors_for(spec, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Anchors of an :class:`~effedge.arch.scaling.EfficientDetSpec` at its (or the given) input size."""
    size = image_size or (spec.image_size, spec.image_size)
    return generate_anchors(size, min_level=spec.min_level, max_level=spec.max_level,
                            anchor_scale=spec.anchor_scale, num_scales=spec.num_scales,
                            aspect_ratios=spec.aspect_ratios)
