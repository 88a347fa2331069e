"""Reading images for the runtime and for calibration: any common file -> HWC uint8 RGB, with EXIF
orientation applied, every mode (grayscale, RGBA, palette, CMYK, 16-bit) converted, and huge files reduced
while decoding. Needs Pillow."""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from effedge.errors import EffedgeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 400_000_000  # larger files are refused rather than decoded (decompression bombs)


class ImageDecodeError(Exception):
    """One file that is not a usable image (the caller skips and counts it)."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded file: ``pixels`` (HWC uint8 RGB, reduced for a large file), the file's own ``size`` (H, W, after
    EXIF orientation) and the ``reduction``: decoded pixel i covers the file's pixels [i·r, (i+1)·r), so a
    coordinate in ``pixels`` times ``reduction`` is the same point in the file."""

    pixels: np.ndarray
    size: tuple[int, int]
    reduction: int


@dataclass
class ImageInputs:
    """What a list of command-line image arguments names: ``images`` (in argument order, folders sorted, each file
    once) and ``skipped`` (file or folder, reason): files that are not images, subfolders left out."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def find_inputs(arguments: Iterable[str | Path], *, recursive: bool = False) -> ImageInputs:
    """Expand image files, folders (their files; subfolders too with ``recursive``) and globs (``calib/*.png``,
    ``photos/**/*.jpg``, expanded here so a quoted pattern works) into image files, by suffix. Hidden files are
    ignored; other files that are not images are skipped with their reason. A path that does not exist, a glob
    that matches nothing or arguments that hold no image are refused (:class:`EffedgeError`)."""
    found = ImageInputs()
    seen: set[Path] = set()
    folders_seen: set[Path] = set()  # resolved: a symlink back up the tree (photos/up -> ..) is walked once

    def add_file(path: Path) -> None:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            found.skipped.append((str(path), f"not an image ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})"))
        elif path.resolve() not in seen:
            seen.add(path.resolve())
            found.images.append(path)

    def add(path: Path, *, named: bool) -> None:
        if path.is_dir():
            if path.resolve() in folders_seen:
                return
            folders_seen.add(path.resolve())
            for child in sorted(path.iterdir()):
                if child.name.startswith("."):
                    continue
                if child.is_dir():
                    if recursive:
                        add(child, named=False)
                    else:
                        found.skipped.append((str(child), "a subfolder (add --recursive to include it)"))
                elif child.is_file():
                    add_file(child)
        elif path.is_file() and (named or not path.name.startswith(".")):
            add_file(path)

    for argument in arguments:
        path = Path(argument).expanduser()
        if path.exists():
            add(path, named=True)
        elif glob.has_magic(str(path)):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise EffedgeError(f"no file matches {argument!r}")
            for match in matches:
                add(Path(match), named=False)
        else:
            raise EffedgeError(f"{argument} not found: give image files, folders or globs")
    if not found.images:
        subfolders = any(reason.startswith("a subfolder") for _, reason in found.skipped)
        raise EffedgeError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) in "
                           f"{', '.join(str(a) for a in arguments)}"
                           + (" (add --recursive to look in subfolders)" if subfolders else ""))
    return found


def load_rgb(path: Path, target: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to HWC uint8 RGB. With ``target`` (H, W), images far larger than it are reduced while
    decoding (JPEG draft mode, integer box reduction), so a 10000×10000 file needs little memory."""
    return decode_image(path, target).pixels


def decode_image(path: Path, target: tuple[int, int] | None = None) -> DecodedImage:
    """:func:`load_rgb` that also says how the pixels relate to the file (its size, the reduction factor)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageDecodeError(f"{image.width}x{image.height} is larger than {MAX_PIXELS} pixels")
            width, height = image.size
            reduction = 1
            if target is not None and image.format == "JPEG":
                drafted = image.draft("RGB", (2 * target[1], 2 * target[0]))  # decode at a reduced DCT scale
                if drafted is not None:  # (mode, the file's extent in decoded pixels)
                    reduction = round(width / drafted[1][2])
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright.size != image.size:  # rotated by a quarter turn
                width, height = height, width
            image = upright
            if target is not None:
                factor = min(image.width // (2 * target[1]), image.height // (2 * target[0]))
                if factor >= 2:
                    image = image.reduce(factor)
                    reduction *= factor
            return DecodedImage(_to_rgb8(image), (height, width), reduction)
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
