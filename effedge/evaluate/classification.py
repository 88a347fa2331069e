"""Top-1 / top-5 accuracy of a classifier on labelled images.

The labels come from the folder layout (one subfolder per class, named by the class's label or its integer
index, as ImageNet's validation set is usually laid out) or from a CSV file of ``file,label`` rows (file relative
to the images folder; label a class name or index; a ``file,label`` header is allowed). A name is looked up in
the model's label list (build.json's class names, ``--labels``, or ImageNet-1k); a name the list holds twice
(ImageNet has two "crane"s) is refused: name the folder by its index. An image that cannot be read is left out
and listed in ``failed``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np

from effedge.errors import EffedgeError
from effedge.runtime.images import IMAGE_SUFFIXES
from effedge.runtime.labels import Labels

TOP_K = (1, 5)


def class_index(label: str, labels: Optional[Labels], num_classes: Optional[int], where: str) -> int:
    """The class of ``label``: a name of the model's label list, or an integer index below ``num_classes``."""
    label = label.strip()
    if labels is not None:
        matches = [i for i, name in enumerate(labels.names) if name == label]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise EffedgeError(f"{where}: {label!r} names classes {matches} of the {labels.source} labels; use the "
                               "class index instead")
    if label.isdigit() and (num_classes is None or int(label) < num_classes):
        return int(label)
    known = f"a name of the {labels.source} labels or " if labels is not None else ""
    raise EffedgeError(f"{where}: {label!r} is no class of the model: use {known}a class index "
                       f"0–{(num_classes or 1) - 1} (or give the class names with --labels)")


def from_folders(root: str | Path, labels: Optional[Labels], num_classes: Optional[int]) -> list[tuple[Path, int]]:
    """(image, class) for the images in each class-named subfolder of ``root`` (its own images, sorted)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EffedgeError(f"--images {root} is not a folder; give a folder of class-named subfolders, or "
                           "--labels-csv")
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cls = class_index(folder.name, labels, num_classes, f"subfolder {folder.name}")
        samples.extend((path, cls) for path in sorted(folder.iterdir())
                       if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not samples:
        raise EffedgeError(f"no images in class-named subfolders of {root}; lay it out as {root}/<label>/*.jpg, or "
                           "give --labels-csv")
    return samples


def from_csv(csv_file: str | Path, root: str | Path, labels: Optional[Labels],
             num_classes: Optional[int]) -> list[tuple[Path, int]]:
    """(image, class) for each ``file,label`` row of ``csv_file`` (files relative to ``root``)."""
    csv_file, root = Path(csv_file), Path(root).expanduser()
    try:
        rows = list(csv.reader(csv_file.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EffedgeError(f"cannot read --labels-csv {csv_file}: {exc}") from exc
    samples = []
    for number, row in enumerate(rows, 1):
        if not row or (number == 1 and [c.strip().lower() for c in row] == ["file", "label"]):
            continue
        if len(row) != 2:
            raise EffedgeError(f"{csv_file} line {number}: expected 'file,label', got {len(row)} field(s)")
        samples.append((root / row[0].strip(), class_index(row[1], labels, num_classes, f"{csv_file} line {number}")))
    if not samples:
        raise EffedgeError(f"--labels-csv {csv_file} holds no 'file,label' row")
    return samples


def evaluate_classifier(classifier, samples: list[tuple[Path, int]],
                        progress=lambda items, total, description: items) -> dict:
    """Top-1 and top-5 accuracy of ``classifier`` (a :class:`~effedge.runtime.classifier.Classifier`) on
    ``samples``, the number of images evaluated and those that failed."""
    results = classifier.classify_files([path for path, _ in samples], progress=progress)
    hits = {k: 0 for k in TOP_K}
    failed, evaluated = [], 0
    for result, (_, truth) in zip(results, samples):
        if result.error is not None:
            failed.append({"image": str(result.path), "error": result.error})
            continue
        evaluated += 1
        order = np.argsort(-result.classes, kind="stable")
        for k in TOP_K:
            hits[k] += int(truth in order[:k])
    if not evaluated:
        raise EffedgeError(f"none of the {len(samples)} image(s) could be read")
    return {"top1": hits[1] / evaluated, "top5": hits[5] / evaluated, "images": evaluated, "failed": failed}
