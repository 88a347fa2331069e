"""How closely a reduced-precision model follows the fp32 one, on held-out images.

Per output: SQNR (10·log10 of signal over error power) and cosine similarity, accumulated over all images.
For detectors also detection agreement: fp32 detections (score ≥ threshold, per-class NMS) matched one-to-one
by a detection of the same class with IoU ≥ 0.5; reported as recall, precision and F1 against fp32.

A non-finite value where fp32 has a finite one (or a different non-finite one) is a fidelity failure, not
noise to drop: such an output is reported with its count of non-finite values and no SQNR or cosine, and
:func:`min_sqnr` gives it −∞ so no fidelity target counts as met.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from effedge.runtime.nms import iou_one_to_many, select_detections

MATCH_IOU = 0.5


@dataclass
class _Sums:
    signal: float = 0.0
    error: float = 0.0
    dot: float = 0.0
    test: float = 0.0
    nonfinite: int = 0  # values the test model made non-finite where fp32 is finite (or another non-finite)


@dataclass
class FidelityMeter:
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_detections: int = 100
    sums: dict[str, _Sums] = field(default_factory=dict)
    reference_detections: int = 0
    test_detections: int = 0
    matched: int = 0

    def update(self, reference: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> None:
        for name, ref in reference.items():
            if not np.issubdtype(ref.dtype, np.floating):
                continue
            r = ref.astype(np.float64).ravel()
            t = test[name].astype(np.float64).ravel()
            finite = np.isfinite(r) & np.isfinite(t)
            same = (r == t) | (np.isnan(r) & np.isnan(t))  # fp32's own inf/NaN, reproduced exactly
            s = self.sums.setdefault(name, _Sums())
            s.nonfinite += int(np.count_nonzero(~finite & ~same))
            r, t = r[finite], t[finite]
            s.signal += float(r @ r)
            s.error += float((r - t) @ (r - t))
            s.dot += float(r @ t)
            s.test += float(t @ t)
        if "boxes" in reference and "scores" in reference:
            for i in range(reference["boxes"].shape[0]):
                self._match(reference["boxes"][i], reference["scores"][i], test["boxes"][i], test["scores"][i])

    def _match(self, ref_boxes, ref_scores, test_boxes, test_scores) -> None:
        options = dict(score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                       max_detections=self.max_detections)
        rb, _, rc = select_detections(ref_boxes, ref_scores, **options)
        tb, _, tc = select_detections(test_boxes, test_scores, **options)
        self.reference_detections += len(rb)
        self.test_detections += len(tb)
        free = np.ones(len(tb), bool)
        for box, cls in zip(rb, rc):
            candidates = np.flatnonzero(free & (tc == cls))
            if candidates.size == 0:
                continue
            ious = iou_one_to_many(box, tb[candidates])
            best = int(np.argmax(ious))
            if ious[best] >= MATCH_IOU:
                free[candidates[best]] = False
                self.matched += 1

    def report(self) -> dict:
        outputs = {}
        for name, s in self.sums.items():
            if s.nonfinite:
                outputs[name] = {"sqnr_db": None, "cosine": None, "nonfinite": s.nonfinite,
                                 "sqnr_note": f"{s.nonfinite} non-finite value(s) where fp32 is finite: a failure"}
                continue
            cosine = float(s.dot / np.sqrt(max(s.signal * s.test, 1e-300)))
            if s.error == 0:  # JSON has no infinity: null, and why
                outputs[name] = {"sqnr_db": None, "sqnr_note": "identical to fp32 (infinite SQNR)", "cosine": cosine}
            else:
                outputs[name] = {"sqnr_db": float(10 * np.log10(max(s.signal, 1e-30) / s.error)), "cosine": cosine}
        report = {"outputs": outputs}
        broken = {name: s.nonfinite for name, s in self.sums.items() if s.nonfinite}
        if broken:
            report["nonfinite"] = broken
        if self.reference_detections or self.test_detections:
            recall = self.matched / self.reference_detections if self.reference_detections else 1.0
            precision = self.matched / self.test_detections if self.test_detections else 1.0
            f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
            report["detections"] = {"fp32": self.reference_detections, "test": self.test_detections,
                                    "matched": self.matched, "recall": recall, "precision": precision, "f1": f1,
                                    "score_threshold": self.score_threshold}
        return report


def finite_or_none(value: float) -> float | None:
    """A figure for JSON, which has no infinity or NaN."""
    return float(value) if np.isfinite(value) else None


def min_sqnr(report: dict, outputs: tuple[str, ...] = ("class_logits", "box_regression", "logits")) -> float:
    """The fidelity figure the mixed-precision search targets: the worst SQNR over the raw outputs (−∞ where
    an output holds non-finite values that fp32 does not: no target is met)."""
    def db(entry: dict) -> float:
        if entry.get("nonfinite"):
            return float("-inf")
        return float("inf") if entry["sqnr_db"] is None else entry["sqnr_db"]

    values = [db(v) for k, v in report["outputs"].items() if k in outputs]
    return min(values) if values else min(db(v) for v in report["outputs"].values())


def nonfinite_warning(report: dict, precision: str) -> str | None:
    """One line naming the outputs ``precision`` made non-finite, or None."""
    broken = report.get("nonfinite")
    if not broken:
        return None
    counts = ", ".join(f"{name} {count}" for name, count in broken.items())
    # mixed keeps blocks in the high-precision dtype (fp16 for TensorRT): it helps int8, not an fp16 overflow
    fix = ("use --precision mixed (it keeps blocks out of int8 until the outputs are right) or fp32"
           if precision == "int8" else "deploy it in fp32 (effedge compile --precision fp32)")
    return (f"{precision} gives non-finite values where fp32 is finite ({counts} on held-out images): the graph "
            f"overflows; {fix}")
