"""A synthetic detection dataset: coloured shapes of several classes on textured backgrounds, with COCO
annotations — small, reproducible data to train and evaluate detectors where no dataset can be downloaded.

Classes (COCO category ids 1..4): circle, square, triangle, cross — the demo detector's (effedge/data/demo).
Each image gets a noisy gradient or striped background and 1–``max_objects`` shapes of random colour and size,
placed with limited overlap.
The default minimum size (24 px) keeps objects matchable by D0's smallest anchors (32 px at IoU ≥ 0.5).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from effedge.io import atomic_write

CATEGORIES = ("circle", "square", "triangle", "cross")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-0.4, 0.4, (2, 3))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    if rng.random() < 0.5:  # stripes
        period, angle = rng.uniform(6, 30), rng.uniform(0, np.pi)
        phase = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        image += phase[..., None] * rng.uniform(5, 25)
    image += rng.normal(0, rng.uniform(3, 12), image.shape)
    return image


def _mask(kind: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if kind == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= c ** 2
    if kind == "square":
        return np.ones((size, size), bool)
    if kind == "triangle":
        return (yy >= size - 2 * np.minimum(xx, size - xx) * 1.0) & (yy <= size)
    bar = size / 3  # cross
    return (np.abs(yy - c) <= bar / 2) | (np.abs(xx - c) <= bar / 2)


def make_image(rng: np.random.Generator, height: int, width: int, max_objects: int,
               min_size: int = 24, max_size: int = 96) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One image and its objects as (category index, [x, y, w, h])."""
    image = _background(rng, height, width)
    objects: list[tuple[int, list[float]]] = []
    for _ in range(rng.integers(1, max_objects + 1)):
        for _attempt in range(20):
            size = int(rng.integers(min_size, min(max_size, height, width) + 1))
            x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
            if all(_overlap((x, y, size, size), box) < 0.3 for _, box in objects):
                break
        else:
            continue
        category = int(rng.integers(0, len(CATEGORIES)))
        mask = _mask(CATEGORIES[category], size)
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - image[y:y + size, x:x + size].mean((0, 1))).sum() < 120:  # visible on its background
            colour = rng.uniform(0, 255, 3)
        region = image[y:y + size, x:x + size]
        region[mask] = colour + rng.normal(0, 4, (int(mask.sum()), 3))
        rows, cols = np.nonzero(mask)
        objects.append((category, [float(x + cols.min()), float(y + rows.min()), float(cols.max() - cols.min() + 1),
                                   float(rows.max() - rows.min() + 1)]))
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _overlap(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / min(aw * ah, bw * bh)


def generate(out_dir: str | Path, count: int, *, size: tuple[int, int] = (256, 256), max_objects: int = 5,
             min_size: int = 24, max_size: int = 96, seed: int = 0) -> Path:
    """Write ``count`` images (PNG) and ``instances.json`` (COCO) into ``out_dir``; returns the annotations."""
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(count):
        pixels, objects = make_image(rng, size[0], size[1], max_objects, min_size, max_size)
        name = f"{index:06d}.png"
        Image.fromarray(pixels).save(out / "images" / name)
        images.append({"id": index + 1, "file_name": name, "height": size[0], "width": size[1]})
        for category, box in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": category + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)]}
    path = out / "instances.json"
    atomic_write(path, json.dumps(coco))
    return path
