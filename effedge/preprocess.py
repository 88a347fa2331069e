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
