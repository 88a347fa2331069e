"""Accuracy of compiled models: COCO mAP of detectors (pycocotools), top-1/top-5 of classifiers."""
from effedge.evaluate.classification import evaluate_classifier
from effedge.evaluate.coco import EVAL_SCORE_THRESHOLD, METRICS, evaluate

__all__ = ["EVAL_SCORE_THRESHOLD", "METRICS", "evaluate", "evaluate_classifier"]
