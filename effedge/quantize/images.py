"""Calibration images: a folder of photos -> preprocessed batches, exactly as the runtime prepares inputs.

Files are found recursively (jpg, jpeg, png, bmp, webp, tif, tiff), sorted, shuffled with a fixed seed and
split into held-out photos (for the fidelity report, never used to calibrate) and calibration images. A few held-out
photos are measured through several fixed views each (crops at three scales, mirrored or not), so the fidelity
figures rest on at least :data:`MIN_HOLDOUT_VIEWS` inputs; views multiply only the held-out photos. Each
image is decoded with EXIF orientation applied, converted to 8-bit RGB (grayscale, RGBA, palette, CMYK,
16-bit), reduced cheaply if huge, then brought to the model's size and normalized as the model itself wants
(:class:`effedge.runtime.preprocess.Preprocessing`: letterbox for detectors, centre crop for classifiers, the
model's mean/std; ImageNet's letterbox where none is given). Files that
cannot be decoded are skipped and counted; a folder where no calibration file is an image is refused up front,
from the headers. For a static-batch model, a last partial batch is filled up with repeats of its own images.
"""
from __future__ import annotations

import hashlib
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np

from effedge import shipped_data
from effedge.errors import EffedgeError
from effedge.runtime.images import IMAGE_SUFFIXES, ImageDecodeError, load_rgb
from effedge.runtime.preprocess import Preprocessing

RECOMMENDED_IMAGES = 500
FEW_IMAGES = 100
DEFAULT_CALIB_DIR = shipped_data("calib")
MIN_HOLDOUT_VIEWS = 8
# (left, top, right, bottom) as fractions of the photo, mirrored or not. The whole photo comes first, so a folder
# with MIN_HOLDOUT_VIEWS held-out photos or more is measured on the photos alone; then crops at 80 % and 60 %,
# which the letterbox enlarges (other scales, other content at each anchor).
VIEW_RECIPES: tuple[tuple[tuple[float, float, float, float], bool], ...] = (
    ((0.0, 0.0, 1.0, 1.0), False), ((0.0, 0.0, 1.0, 1.0), True),
    ((0.0, 0.0, 0.8, 0.8), False), ((0.2, 0.2, 1.0, 1.0), True),
    ((0.2, 0.0, 1.0, 0.8), False), ((0.0, 0.2, 0.8, 1.0), True),
    ((0.2, 0.2, 0.8, 0.8), False), ((0.2, 0.2, 0.8, 0.8), True),
)


def find_images(folder: str | Path) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.exists():
        raise EffedgeError(f"calibration folder {root} does not exist; pass --calib with a folder of images")
    if not root.is_dir():
        raise EffedgeError(f"--calib {root} is not a folder; pass a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EffedgeError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) in {root}; "
                           "pass --calib with a folder of images")
    return files


@dataclass(frozen=True)
class HeldOutView:
    """One input of the fidelity report: a crop of a photo (fractions of its width and height), maybe mirrored."""

    path: Path
    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    mirror: bool = False

    def name(self, root: Path) -> str:
        name = str(self.path.relative_to(root))
        if self.crop == (0.0, 0.0, 1.0, 1.0) and not self.mirror:
            return name
        left, top, right, bottom = self.crop
        return f"{name}[{left:g},{top:g}:{right:g},{bottom:g}{' mirrored' if self.mirror else ''}]"

    def load(self, size: tuple[int, int]) -> np.ndarray:
        """HWC uint8 RGB, decoded at enough resolution that the crop still covers ``size`` (H, W)."""
        left, top, right, bottom = self.crop
        pixels = load_rgb(self.path, (math.ceil(size[0] / (bottom - top)), math.ceil(size[1] / (right - left))))
        height, width = pixels.shape[:2]
        pixels = pixels[round(top * height):max(round(bottom * height), round(top * height) + 1),
                        round(left * width):max(round(right * width), round(left * width) + 1)]
        return np.ascontiguousarray(pixels[:, ::-1] if self.mirror else pixels)


@dataclass
class ImageSet:
    """Calibration and held-out images of one folder, with what was skipped while reading them."""

    root: Path
    calibration: list[Path]
    holdout: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    min_views: int = MIN_HOLDOUT_VIEWS  # held-out views the fidelity figures rest on, at least

    @classmethod
    def from_folder(cls, folder: str | Path, *, count: int | None = None, holdout: int | None = None,
                    seed: int = 0, min_views: int = MIN_HOLDOUT_VIEWS) -> "ImageSet":
        """``count`` calibration images (default all but the held-out ones) and ``holdout`` held-out images
        (default 20 %, between 1 and 16, none when the folder has a single image), measured through at least
        ``min_views`` views."""
        if count is not None and count < 1:
            raise EffedgeError(f"--calib-images {count}: use at least 1 (500+ recommended)")
        if min_views < 1:
            raise EffedgeError(f"holdout views {min_views}: use at least 1 (default {MIN_HOLDOUT_VIEWS})")
        files = find_images(folder)
        random.Random(seed).shuffle(files)
        if holdout is None:
            holdout = 0 if len(files) < 2 else min(16, max(1, len(files) // 5))
        held, rest = files[:holdout], files[holdout:]
        if not rest:
            raise EffedgeError(f"{folder} has {len(files)} image(s), all held out for the fidelity report; "
                               "add images or lower the hold-out")
        return cls(Path(folder), rest[:count] if count else rest, held, min_views=min_views)

    def holdout_views(self) -> list[HeldOutView]:
        """The held-out photos, each through as many of :data:`VIEW_RECIPES` as it takes to reach
        ``min_views`` views (all eight at most). Ordered view by view, so the first ones are different photos where there are
        several (the mixed-precision search probes the first few)."""
        if not self.holdout:
            return []
        per_photo = min(len(VIEW_RECIPES), math.ceil(self.min_views / len(self.holdout)))
        return [HeldOutView(path, crop, mirror) for crop, mirror in VIEW_RECIPES[:per_photo] for path in self.holdout]

    def content_hash(self) -> str:
        """sha256 over the calibration files' names and bytes (what calibration results are keyed by)."""
        digest = hashlib.sha256()
        for path in self.calibration:
            digest.update(str(path.relative_to(self.root)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    def batches(self, paths: list[Path | HeldOutView], size: tuple[int, int], input_format: str,
                batch: int = 1, preprocessing: Preprocessing = Preprocessing()) -> Iterator[np.ndarray]:
        """Model-ready batches of the readable images (or views) among ``paths`` (the last one may be smaller);
        unreadable files are recorded in ``skipped``, once each."""
        for images, real in self.padded_batches(paths, size, input_format, batch, preprocessing):
            yield images[:real]

    def padded_batches(self, paths: list[Path | HeldOutView], size: tuple[int, int], input_format: str,
                       batch: int, preprocessing: Preprocessing = Preprocessing()
                       ) -> Iterator[tuple[np.ndarray, int]]:
        """Batches of exactly ``batch`` images, for a model with a static batch, each with the number of real
        images at its start, prepared as ``preprocessing`` says (the model's own: see
        :func:`effedge.runtime.preprocess.preprocessing_for`). A last partial batch is filled up by repeating its
        own images: the model sees only real data (so maxima are unchanged), and callers drop the repeats from
        their statistics."""
        pending = []
        for item in paths:
            view = item if isinstance(item, HeldOutView) else HeldOutView(item)
            try:
                pending.append(preprocessing.fit(view.load(size), size)[0])
            except ImageDecodeError as exc:
                entry = (str(view.path.relative_to(self.root)), str(exc))
                if entry not in self.skipped:  # one file, several views: skipped once
                    self.skipped.append(entry)
                continue
            if len(pending) == batch:
                yield preprocessing.model_input(np.stack(pending), input_format), batch
                pending = []
        if pending:
            real = len(pending)
            yield preprocessing.model_input(np.stack([pending[i % real] for i in range(batch)]), input_format), real

    def require_readable(self) -> None:
        """Fail fast, before any export or inference, when no calibration file is an image (only the headers
        are read: files that are truncated further on are still skipped and counted while calibrating)."""
        from PIL import Image

        for path in self.calibration:
            try:
                with Image.open(path):
                    return
            except Exception:  # PIL raises many types for files that are not images
                continue
        raise EffedgeError(f"none of the {len(self.calibration)} calibration files in {self.root} is an image "
                           f"(e.g. {self.calibration[0].relative_to(self.root)}); pass --calib with a folder of photos")

    def warnings(self, used: int) -> list[str]:
        notes = []
        if self.skipped:
            notes.append(f"skipped {len(self.skipped)} unreadable file(s), e.g. {self.skipped[0][0]}: "
                         f"{self.skipped[0][1]}")
        if used < FEW_IMAGES:
            notes.append(f"calibrated on only {used} image(s); use {RECOMMENDED_IMAGES}+ images from the "
                         "deployment domain for production (--calib DIR)")
        return notes


Item = TypeVar("Item")


def read_ahead(items: Iterable[Item]) -> Iterator[Item]:
    """``items`` in order, the next one made in a worker thread while the caller uses the current one: decoding
    and resizing the next image overlaps the current forward (both release the GIL). One item is made ahead;
    an error making it is raised where the caller asks for that item."""
    iterator = iter(items)
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="effedge-read-ahead") as pool:
        upcoming = pool.submit(next, iterator, end)
        while True:
            item = upcoming.result()
            if item is end:
                return
            upcoming = pool.submit(next, iterator, end)
            yield item
