"""Input conventions shared by export, calibration and the runtime (NumPy only).

Models take RGB images normalized with the ImageNet mean/std the reference checkpoints were trained with:
``(pixel/255 − mean) / std``, NCHW float32 (``input_format="float"``), or raw NHWC uint8 RGB with the same
normalization inside the graph (``input_format="uint8"``). Letterbox fill is the mean colour, i.e. zero after
normalization, in both formats.
"""
from __future__ import annotations

import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MEAN_PIXEL = tuple(int(round(m * 255)) for m in MEAN)  # letterbox fill for uint8 images
INPUT_FORMATS = ("float", "uint8")


def normalize(images_nhwc_uint8: np.ndarray) -> np.ndarray:
    """NHWC uint8 RGB -> NCHW float32 normalized, as the ``float`` input format expects."""
    x = images_nhwc_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HWC uint8 image (half-pixel centres), in NumPy so the runtime needs no OpenCV."""
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (height, width):
        return image

    def axis(dst: int, src: int):
        coords = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        low = np.floor(coords).astype(np.int64)
        high = np.minimum(low + 1, src - 1)
        return low, high, (coords - low).astype(np.float32)

    y0, y1, wy = axis(height, src_h)
    x0, x1, wx = axis(width, src_w)
    img = image.astype(np.float32)
    top = img[y0][:, x0] * (1 - wx)[None, :, None] + img[y0][:, x1] * wx[None, :, None]
    bottom = img[y1][:, x0] * (1 - wx)[None, :, None] + img[y1][:, x1] * wx[None, :, None]
    out = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def letterbox(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
    """Scale an HWC uint8 RGB image to fit (height, width) keeping its aspect ratio, placed at the top-left
    corner on a mean-colour canvas (as the reference's evaluation transform). Returns (canvas, scale): a box in
    model pixels maps back to the original image by dividing by ``scale``."""
    src_h, src_w = image.shape[:2]
    scale = min(height / src_h, width / src_w)
    new_h, new_w = max(1, round(src_h * scale)), max(1, round(src_w * scale))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[...] = MEAN_PIXEL
    canvas[:new_h, :new_w] = resize_bilinear(image, new_h, new_w)
    return canvas, scale


def to_model_input(canvases: np.ndarray, input_format: str) -> np.ndarray:
    """Letterboxed NHWC uint8 images -> the array the model's input takes."""
    return np.ascontiguousarray(canvases) if input_format == "uint8" else normalize(canvases)
