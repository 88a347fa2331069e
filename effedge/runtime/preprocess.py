"""Input conventions shared by export, calibration and the runtime (NumPy only).

Models take RGB images normalized with the mean/std their family was trained with (ImageNet's for B0–B7 and
D0–D7x, 0.5/0.5 for the Lite family): ``(pixel/255 − mean) / std``. The graph's input format
(:data:`INPUT_FORMATS`) says who normalizes: the caller, feeding NCHW float32 (``"float"``), or the graph
itself, fed raw RGB pixels 0–255 as NHWC uint8 (``"uint8"``) or as NCHW float32 (``"pixels"``: what
DeepStream's nvinfer writes with net-scale-factor 1 and offsets 0, as it cannot apply a per-channel std). A
compiled model says which normalization and format it takes in build.json's ``input`` block and, for a plain
ONNX user, in the graph's metadata (:data:`METADATA_KEYS`); :func:`preprocessing_for` and
:func:`graph_input_format` read them back.

Images reach the model's size as its family was evaluated: detectors letterbox (top-left, the rest filled with
the mean colour, i.e. zero after normalization), classifiers resize the shorter side to ``size / crop_pct``
and take the centre crop (timm's evaluation transform).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from effedge.errors import EffedgeError

MEAN = (0.485, 0.456, 0.406)  # ImageNet's, the default where a model says nothing
STD = (0.229, 0.224, 0.225)
INPUT_FORMATS = ("float", "uint8", "pixels")  # normalized NCHW float32; NHWC uint8 pixels; NCHW float32 pixels
DEFAULT_CROP_PCT = 0.875  # timm's evaluation crop for EfficientNet B0 / Lite0
RESIZES = ("letterbox", "center-crop")

# ONNX metadata_props keys: the normalization and layout a graph expects (lists and numbers as JSON, words as is)
METADATA_KEYS = {"mean": "effedge.input.mean", "std": "effedge.input.std", "layout": "effedge.input.layout",
                 "format": "effedge.input.format", "resize": "effedge.input.resize",
                 "crop_pct": "effedge.input.crop_pct"}
DEFAULT_SOURCE = "ImageNet mean/std assumed: neither build.json nor the graph's metadata says"


def mean_pixel(mean: Sequence[float] = MEAN) -> tuple[int, int, int]:
    """The mean colour as uint8 RGB: the letterbox fill, zero (to rounding) after normalization."""
    return tuple(int(round(m * 255)) for m in mean)


MEAN_PIXEL = mean_pixel(MEAN)  # ImageNet's mean colour


def normalize(images_nhwc_uint8: np.ndarray, mean: Sequence[float] = MEAN,
              std: Sequence[float] = STD) -> np.ndarray:
    """NHWC uint8 RGB -> NCHW float32 ``(pixel/255 − mean) / std``, as the ``float`` input format expects."""
    x = images_nhwc_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HWC uint8 image (half-pixel centres), in NumPy so the runtime needs no OpenCV.
    Shrinking by k ≥ 2 first averages k × k pixel blocks (antialiasing, as PIL's resize that timm's and effdet's
    evaluation transforms use), so a large photo is not point-sampled; the geometry stays the source's."""
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image
    factor_h, factor_w = max(1, src_h // height), max(1, src_w // width)
    if factor_h > 1 or factor_w > 1:  # block means; the last partial block repeats the edge pixels
        padded_h, padded_w = -(-src_h // factor_h) * factor_h, -(-src_w // factor_w) * factor_w
        padded = np.pad(image, ((0, padded_h - src_h), (0, padded_w - src_w), (0, 0)), mode="edge")
        # Integer sums of strided slices are exact (and several times faster than a mean over reshaped axes):
        # the same float32 means, each an exact sum divided by the block size.
        rows = sum(padded[i::factor_h].astype(np.int32) for i in range(factor_h))
        blocks = sum(rows[:, j::factor_w] for j in range(factor_w))
        img = blocks.astype(np.float32) / np.float32(factor_h * factor_w)
    else:
        img = image.astype(np.float32)

    def axis(dst: int, src: int, factor: int):
        # a destination pixel centre in source pixels, then in (block-averaged) image pixels
        last = -(-src // factor) - 1
        coords = np.clip((np.arange(dst) + 0.5) * (src / dst) / factor - 0.5, 0, last)
        low = np.floor(coords).astype(np.int64)
        high = np.minimum(low + 1, last)
        return low, high, (coords - low).astype(np.float32)

    y0, y1, wy = axis(height, src_h, factor_h)
    x0, x1, wx = axis(width, src_w, factor_w)
    # Separable: every source row interpolated along x once, then rows y0 and y1 blended — the same products as
    # blending each pixel's four corners, without gathering every destination row twice per corner pair.
    rows = img[:, x0] * (1 - wx)[None, :, None] + img[:, x1] * wx[None, :, None]
    out = rows[y0] * (1 - wy)[:, None, None] + rows[y1] * wy[:, None, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def letterbox(image: np.ndarray, height: int, width: int,
              fill: Sequence[int] = MEAN_PIXEL) -> tuple[np.ndarray, float]:
    """Scale an HWC uint8 RGB image to fit (height, width) keeping its aspect ratio, placed at the top-left
    corner on a ``fill`` canvas (the model's mean colour, as the reference's evaluation transform). Returns
    (canvas, scale): a box in model pixels maps back to the original image by dividing by ``scale``."""
    src_h, src_w = image.shape[:2]
    scale = min(height / src_h, width / src_w)
    new_h, new_w = max(1, round(src_h * scale)), max(1, round(src_w * scale))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[...] = fill
    canvas[:new_h, :new_w] = resize_bilinear(image, new_h, new_w)
    return canvas, scale


def center_crop(image: np.ndarray, height: int, width: int, crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """timm's evaluation transform in NumPy: resize (bilinear, aspect kept) so the image covers
    (⌊height / crop_pct⌋, ⌊width / crop_pct⌋) — for a square size, the shorter side becomes ⌊size / crop_pct⌋ —
    then take the centred (height, width) crop."""
    src_h, src_w = image.shape[:2]
    scale = max(math.floor(height / crop_pct) / src_h, math.floor(width / crop_pct) / src_w)
    new_h, new_w = max(height, int(src_h * scale)), max(width, int(src_w * scale))
    resized = resize_bilinear(image, new_h, new_w)
    top, left = int(round((new_h - height) / 2)), int(round((new_w - width) / 2))
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def input_layout(input_format: str) -> str:
    """The axis order of an input format's tensor: "NHWC" (uint8) or "NCHW"."""
    return "NHWC" if input_format == "uint8" else "NCHW"


def to_model_input(canvases: np.ndarray, input_format: str, mean: Sequence[float] = MEAN,
                   std: Sequence[float] = STD) -> np.ndarray:
    """Model-sized NHWC uint8 images -> the array the model's input takes: normalized with ``mean``/``std``
    for the float format; the pixels themselves (uint8 NHWC, or float32 NCHW) for a graph that normalizes
    itself."""
    if input_format == "float":
        return normalize(canvases, mean, std)
    if input_format == "uint8":
        return np.ascontiguousarray(canvases)
    if input_format == "pixels":
        return np.ascontiguousarray(canvases.transpose(0, 3, 1, 2), dtype=np.float32)
    raise EffedgeError(f"unknown input format {input_format!r}; use one of {', '.join(INPUT_FORMATS)}")


@dataclass(frozen=True)
class Preprocessing:
    """How one model wants its images: normalization, the resize of its family, and where that was read
    (``source``: "build.json", "graph metadata" or :data:`DEFAULT_SOURCE`)."""

    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    resize: str = "letterbox"  # or "center-crop" (classifiers)
    crop_pct: float = DEFAULT_CROP_PCT
    source: str = DEFAULT_SOURCE

    @property
    def fill(self) -> tuple[int, int, int]:
        return mean_pixel(self.mean)

    @property
    def assumed(self) -> bool:
        """True where the model said nothing and ImageNet's normalization is a guess."""
        return self.source == DEFAULT_SOURCE

    def fit(self, image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
        """(model-sized HWC uint8 image, letterbox scale; 1.0 for a centre crop, where no box maps back)."""
        if self.resize == "center-crop":
            return center_crop(image, *size, self.crop_pct), 1.0
        return letterbox(image, *size, self.fill)

    def model_input(self, canvases: np.ndarray, input_format: str) -> np.ndarray:
        return to_model_input(canvases, input_format, self.mean, self.std)

    def describe(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "resize": self.resize,
                **({"crop_pct": self.crop_pct} if self.resize == "center-crop" else {}), "source": self.source}


def is_classifier(manifest: Mapping, output_ranks: Sequence[int]) -> bool:
    """A classifier: build.json says the family is EfficientNet, or (without one) the graph's only output is
    [batch, classes] (``output_ranks``: the rank of each output)."""
    family = manifest.get("family")
    if family is not None:
        return family == "efficientnet"
    return list(output_ranks) == [2]


def preprocessing_for(manifest: Mapping, metadata: Optional[Mapping[str, str]] = None, *,
                      classifier: bool = False) -> Preprocessing:
    """A model's :class:`Preprocessing`: the mean/std of build.json's ``input`` block, else of the graph's
    metadata (:data:`METADATA_KEYS`), else ImageNet's (``assumed``); the centre crop for a ``classifier``
    (``crop_pct`` as recorded, else :data:`DEFAULT_CROP_PCT`), the letterbox for a detector."""
    metadata = metadata or {}
    recorded = manifest.get("input") or {}
    crop_pct = float(recorded.get("crop_pct") or _metadata_value(metadata, "crop_pct") or DEFAULT_CROP_PCT)
    resize = "center-crop" if classifier else "letterbox"
    mean, std = _per_channel(recorded.get("mean")), _per_channel(recorded.get("std"))
    if mean and std:
        return Preprocessing(mean, std, resize, crop_pct, "build.json")
    mean, std = _per_channel(_metadata_value(metadata, "mean")), _per_channel(_metadata_value(metadata, "std"))
    if mean and std:
        return Preprocessing(mean, std, resize, crop_pct, "graph metadata")
    return Preprocessing(MEAN, STD, resize, crop_pct, DEFAULT_SOURCE)


def _per_channel(value) -> Optional[tuple[float, ...]]:
    """Three numbers (R, G, B) as a tuple, else None (absent or not one of ours)."""
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    return None


def _metadata_value(metadata: Mapping[str, str], key: str):
    text = metadata.get(METADATA_KEYS[key])
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def graph_input_format(manifest: Mapping, metadata: Optional[Mapping[str, str]] = None, *, uint8: bool) -> str:
    """The input format of a graph whose input tensor is uint8 (``uint8``) or float. A float graph takes
    normalized input or raw pixels, which its type cannot tell: build.json's ``input`` block says which, else the
    graph's metadata, else it is "float" (a graph that records nothing). A record the tensor contradicts is
    refused rather than fed wrongly."""
    recorded = (manifest.get("input") or {}).get("format") or _metadata_value(metadata or {}, "format")
    actual = "uint8" if uint8 else "pixels" if recorded == "pixels" else "float"
    if recorded is not None and recorded != actual:
        where = "build.json" if (manifest.get("input") or {}).get("format") else "the graph's metadata"
        raise EffedgeError(f"{where} records the input format {recorded!r}, but the graph's input is "
                           f"{'uint8' if uint8 else 'float'}; re-export the model with effedge export")
    return actual


def graph_metadata(mean: Sequence[float], std: Sequence[float], input_format: str, *,
                   classifier: bool, crop_pct: float = DEFAULT_CROP_PCT) -> dict[str, str]:
    """The metadata_props an export writes into its graph (for a uint8 or pixels graph the mean/std are applied
    inside it, and the mean colour is still its letterbox fill)."""
    values = {"mean": list(mean), "std": list(std), "format": input_format, "layout": input_layout(input_format),
              "resize": "center-crop" if classifier else "letterbox"}
    if classifier:
        values["crop_pct"] = crop_pct
    return {METADATA_KEYS[key]: value if isinstance(value, str) else json.dumps(value)
            for key, value in values.items()}
