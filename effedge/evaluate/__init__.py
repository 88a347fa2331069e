"""COCO evaluation of detectors (pycocotools)."""
from effedge.evaluate.coco import EVAL_SCORE_THRESHOLD, METRICS, evaluate

__all__ = ["EVAL_SCORE_THRESHOLD", "METRICS", "evaluate"]
