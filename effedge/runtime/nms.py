"""Non-maximum suppression in NumPy: the reference the ONNX tails are tested against, and the runtime's NMS for
graphs without a tail (TensorRT-RTX, ``--nms none``)."""
from __future__ import annotations

import numpy as np

def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=1)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best first. A box is suppressed when IoU > threshold."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[iou_one_to_many(boxes[best], boxes[order]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, iou_threshold: float,
                max_per_class: int | None = None) -> np.ndarray:
    """Per-class NMS of one image: ``boxes [N, 4]``, ``scores [N, C]`` -> rows (class, anchor), by class then
    descending score (the order ONNX ``NonMaxSuppression`` reports)."""
    selected = []
    for cls in range(scores.shape[1]):
        candidates = np.flatnonzero(scores[:, cls] > score_threshold)
        if candidates.size == 0:
            continue
        kept = candidates[nms(boxes[candidates], scores[candidates, cls], iou_threshold, max_per_class)]
        selected.extend((cls, int(i)) for i in kept)
    return np.asarray(selected, dtype=np.int64).reshape(-1, 2)


def select_detections(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, iou_threshold: float,
                      max_detections: int, pre_nms_top: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image from decoded ``boxes [N, 4]`` and ``scores [N, C]``: per-class NMS over the
    ``pre_nms_top`` best (anchor, class) candidates above the threshold. Returns (boxes, scores, classes),
    best first, at most ``max_detections``."""
    anchors, classes = np.nonzero(scores > score_threshold)
    candidate_scores = scores[anchors, classes]
    if candidate_scores.size > pre_nms_top:
        top = np.argpartition(-candidate_scores, pre_nms_top)[:pre_nms_top]
        anchors, classes, candidate_scores = anchors[top], classes[top], candidate_scores[top]
    kept = []
    for cls in np.unique(classes):
        members = np.flatnonzero(classes == cls)
        kept.extend(members[nms(boxes[anchors[members]], candidate_scores[members], iou_threshold)])
    kept = np.asarray(kept, dtype=np.int64)
    kept = kept[np.argsort(-candidate_scores[kept], kind="stable")][:max_detections]
    return boxes[anchors[kept]], candidate_scores[kept], classes[kept]
