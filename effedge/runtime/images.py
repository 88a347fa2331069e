"""Reading images for the runtime and for calibration: any common file -> HWC uint8 RGB, with EXIF
orientation applied, every mode (grayscale, RGBA, palette, CMYK, 16-bit) converted, and huge files reduced
while decoding. Needs Pillow."""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 400_000_000  # larger files are refused rather than decoded (decompression bombs)


class ImageDecodeError(Exception):
    """One file that is not a usable image (the caller skips and counts it)."""


def load_rgb(path: Path, target: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to HWC uint8 RGB. With ``target`` (H, W), images far larger than it are reduced while
    decoding (JPEG draft mode, integer box reduction), so a 10000×10000 file needs little memory."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageDecodeError(f"{image.width}x{image.height} is larger than {MAX_PIXELS} pixels")
            if target is not None and image.format == "JPEG":
                image.draft("RGB", (2 * target[1], 2 * target[0]))  # decode at a reduced DCT scale
            image.load()
            image = ImageOps.exif_transpose(image)
            if target is not None:
                factor = min(image.width // (2 * target[1]), image.height // (2 * target[0]))
                if factor >= 2:
                    image = image.reduce(factor)
            return _to_rgb8(image)
    except ImageDecodeError:
        raise
    except Exception as exc:  # PIL raises many types for unreadable, truncated or unsupported files
        raise ImageDecodeError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def _to_rgb8(image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit int) grayscale: scale, don't clip
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        gray = ((array - array.min()) * (255.0 / span)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        from PIL import Image

        background = Image.new("RGBA", image.size, (124, 116, 104, 255))  # transparent -> letterbox colour
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
