"""COCO-style mAP of a detector on an annotated image folder, with pycocotools (the maintained evaluator).

Class index ``i`` of the model's head is COCO category id ``i + 1`` (the convention of the TF-ported
EfficientDet checkpoints and of :mod:`shapes`). Detections are taken at a low score threshold
(0.001) and at most 100 per image, as COCO evaluation expects.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Callable, Sequence

from effedge.errors import EffedgeError

EVAL_SCORE_THRESHOLD = 0.001
METRICS = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def evaluate(detect: Callable[[Sequence[Path]], list], images_dir: str | Path, annotations: str | Path,
             *, batch: int = 8, progress=lambda items, total, description: items) -> dict:
    """Run ``detect`` (e.g. a :class:`~effedge.runtime.detector.Detector`) over the annotated images; returns the COCO
    metrics and the number of images and detections."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise EffedgeError("COCO evaluation needs pycocotools (pip install pycocotools)") from exc
    annotations, images_dir = Path(annotations), Path(images_dir)
    if not annotations.is_file():
        raise EffedgeError(f"annotations {annotations} not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO(str(annotations))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:  # pycocotools asserts the format
        raise EffedgeError(f"{annotations} is not a COCO instances file ({exc})") from exc
    records = ground_truth.loadImgs(ground_truth.getImgIds())
    missing = [r["file_name"] for r in records if not (images_dir / r["file_name"]).is_file()]
    if missing:
        raise EffedgeError(f"{len(missing)} annotated image(s) missing from {images_dir}, e.g. {missing[0]}")
    results = []
    chunks = [records[i:i + batch] for i in range(0, len(records), batch)]
    for chunk in progress(chunks, len(chunks), "evaluating"):
        for record, found in zip(chunk, detect([images_dir / r["file_name"] for r in chunk])):
            for (x1, y1, x2, y2), score, cls in zip(found.boxes, found.scores, found.classes):
                results.append({"image_id": record["id"], "category_id": int(cls) + 1, "score": float(score),
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    report = {"images": len(records), "detections": len(results)}
    if not results:
        return {**report, **{metric: 0.0 for metric in METRICS}}
    with contextlib.redirect_stdout(io.StringIO()):
        predictions = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, predictions, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {**report, **{metric: max(0.0, float(value)) for metric, value in zip(METRICS, evaluator.stats[:6])}}
