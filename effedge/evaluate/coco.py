"""COCO-style mAP of a detector on an annotated image folder, with pycocotools (the maintained evaluator).

Head classes map onto the annotation file's categories (:func:`category_mapping`): by COCO category id for a COCO
head, by name where the file's category names are among the model's class names, else class ``i`` → id ``i + 1``
(the convention of the TF-ported EfficientDet checkpoints and of :mod:`effedge.demo.shapes`). Detections are
taken at a low score threshold (0.001) and at most 100 per image, as COCO evaluation expects. An image that
cannot be read is left out of the evaluation and listed in ``failed``.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from effedge.errors import EffedgeError
from effedge.runtime.labels import Labels

EVAL_SCORE_THRESHOLD = 0.001
METRICS = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")  # None: nothing of that size annotated
AREA_RANGES = {"AP_small": (0, 32 ** 2), "AP_medium": (32 ** 2, 96 ** 2), "AP_large": (96 ** 2, float("inf"))}  # COCO's


def category_mapping(labels: Optional[Labels], categories: list[dict]) -> tuple[Callable[[int], Optional[int]], str]:
    """(head class -> annotation category id, how): ``category_id`` for a COCO head whose ids agree with the file's
    names, ``name`` where every category name of the file is one of the model's class names, else ``class+1``."""
    file_names = {c["id"]: c.get("name") for c in categories}
    if labels is not None and labels.category_ids is not None:
        by_id = {labels.category_id(i): labels.name(i) for i in range(len(labels.names))}
        named = {cid: name for cid, name in file_names.items() if name is not None}
        # COCO's own ids: some named category sits at its head id, none elsewhere (a renumbered file whose ids
        # all fall on COCO's unused ids or past 90 is matched by name, not silently by id)
        if any(by_id.get(cid) == name for cid, name in named.items()) and all(
                cid in by_id and by_id[cid] in (None, name) for cid, name in named.items()):
            return labels.category_id, "category_id"
    if labels is not None and file_names and all(name is not None for name in file_names.values()):
        ids = {name: cid for cid, name in file_names.items()}
        if set(ids) <= {name for name in labels.names if name is not None}:
            return (lambda cls: ids.get(labels.name(cls))), "name"
    return (lambda cls: cls + 1), "class+1"


def evaluate(detect: Callable[[Sequence[Path]], list], images: Union[str, Path, Sequence[Path]],
             annotations: str | Path, *, batch: int = 8, labels: Optional[Labels] = None,
             progress=lambda items, total, description: items) -> dict:
    """Run ``detect`` (e.g. a :class:`~effedge.runtime.detector.Detector`) over the annotated images — all of an
    image folder's, or those among a list of files (matched by their annotated ``file_name``) — and return the COCO
    metrics, the number of images and detections, the class mapping used and the images that failed."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise EffedgeError("COCO evaluation needs pycocotools (pip install pycocotools)") from exc
    annotations = Path(annotations)
    if not annotations.is_file():
        raise EffedgeError(f"annotations {annotations} not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO(str(annotations))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:  # pycocotools asserts the format
        raise EffedgeError(f"{annotations} is not a COCO instances file ({exc})") from exc
    records = ground_truth.loadImgs(ground_truth.getImgIds())
    files = _annotated_files(records, images)
    to_category, mapping = category_mapping(labels, ground_truth.loadCats(ground_truth.getCatIds()))
    results, failed = [], []
    chunks = [files[i:i + batch] for i in range(0, len(files), batch)]
    for chunk in progress(chunks, len(chunks), "evaluating"):
        for (record, path), found in zip(chunk, _detect_each(detect, [path for _, path in chunk], failed)):
            for (x1, y1, x2, y2), score, cls in (zip(found.boxes, found.scores, found.classes) if found is not None else ()):
                category = to_category(int(cls))
                if category is not None:  # a class the annotation file has no category for
                    results.append({"image_id": record["id"], "category_id": category, "score": float(score),
                                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    failed_names = {str(path) for path, _ in failed}
    evaluated = [record["id"] for record, path in files if str(path) not in failed_names]
    if not evaluated:
        raise EffedgeError(f"none of the {len(files)} annotated image(s) could be read, e.g. {failed[0][0]}: "
                           f"{failed[0][1]}")
    report = {"images": len(evaluated), "detections": len(results), "category_mapping": mapping,
              "unnamed_categories": _unnamed_categories(labels, ground_truth.loadCats(ground_truth.getCatIds()))
              if mapping == "class+1" else [],
              "failed": [{"image": str(path), "error": error} for path, error in failed]}
    if not results:  # pycocotools cannot load no results: nothing found is 0 where there was something to find
        areas = [a["area"] for a in ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=evaluated, iscrowd=False))]
        ranges = {"mAP": (0, float("inf")), "AP50": (0, float("inf")), "AP75": (0, float("inf")), **AREA_RANGES}
        return {**report, **{metric: 0.0 if any(low <= a <= high for a in areas) else None
                             for metric, (low, high) in ranges.items()}}
    with contextlib.redirect_stdout(io.StringIO()):
        predictions = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, predictions, "bbox")
        evaluator.params.imgIds = evaluated  # images that failed are left out, not counted as finding nothing
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval's -1: no ground truth in that area range (e.g. no large objects), not an AP of 0
    return {**report, **{metric: None if value < 0 else float(value)
                         for metric, value in zip(METRICS, evaluator.stats[:6])}}


def _unnamed_categories(labels: Optional[Labels], categories: list[dict]) -> list[str]:
    """The file's category names the model's class names lack, where the model has names (a typo in --labels
    turns a match by name into class+1, which is right only if the file numbers its categories class + 1)."""
    if labels is None:
        return []
    known = {name for name in labels.names if name is not None}
    return sorted({c["name"] for c in categories if c.get("name") is not None and c["name"] not in known})


def _annotated_files(records: list[dict], images: Union[str, Path, Sequence[Path]]) -> list[tuple[dict, Path]]:
    if isinstance(images, (str, Path)):
        folder = Path(images)
        missing = [r["file_name"] for r in records if not (folder / r["file_name"]).is_file()]
        if missing:
            raise EffedgeError(f"{len(missing)} annotated image(s) missing from {folder}, e.g. {missing[0]}")
        return [(r, folder / r["file_name"]) for r in records]
    given = [Path(p) for p in images]
    chosen = []
    for record in records:
        tail = Path(record["file_name"]).parts
        matches = [p for p in given if p.parts[-len(tail):] == tail]
        if len(matches) > 1:  # e.g. train/0001.png and val/0001.png: which one was annotated is unknown
            raise EffedgeError(f"{len(matches)} of the images given are the annotated {record['file_name']} "
                               f"({matches[0]}, {matches[1]}); give the annotated images' folder as --images")
        if matches:
            chosen.append((record, matches[0]))
    if not chosen:
        raise EffedgeError(f"none of the {len(given)} image(s) given is in the annotations (matched by file_name, "
                           f"e.g. {records[0]['file_name'] if records else '-'})")
    return chosen


def _detect_each(detect, paths: list[Path], failed: list[tuple[Path, str]]) -> list:
    """``detect(paths)``; when that fails on an unreadable file, one image at a time, so only that one is lost."""
    try:
        return detect(paths)
    except EffedgeError:
        pass
    found = []
    for path in paths:
        try:
            found.extend(detect([path]))
        except EffedgeError as exc:
            failed.append((path, str(exc)))
            found.append(None)
    return found
