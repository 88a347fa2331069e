"""How closely a reduced-precision model follows the fp32 one, on held-out images.

Per output: SQNR (10·log10 of signal over error power) and cosine similarity, accumulated over all images.
For detectors also detection agreement: fp32 detections (score ≥ threshold, per-class NMS) matched one-to-one
by a detection of the same class with IoU ≥ 0.5; reported as recall, precision and F1 against fp32 — but only
where fp32's detections are decisions worth agreeing with. It is null, with the reason, when the weights are known
to be random, when fp32 detects nothing, or when most of fp32's detections are ties: a detection is fragile when
a score change of :data:`TIE_MARGIN` would drop it (it scores within the margin of the threshold, or of the best
candidate the max-detections limit left out). Reduced precision moves scores by more than that (int8) or close
to it (fp16 moves a near-tied crowd enough to reorder it), so where over :data:`TIE_FRACTION` of fp32's
detections are fragile, F1 measures how ties break, not the precision. Random weights give exactly that crowd
(e.g. D0: 12 000 anchors at 0.536–0.537), a trained detector a few detections far from any cut.

For classifiers (a ``logits [B, classes]`` output) also class agreement: the share of images whose top-1 class
is fp32's, and the mean KL divergence KL(fp32 softmax ‖ test softmax) in nats (0 for identical outputs).

A non-finite value where fp32 has a finite one (or a different non-finite one) is a fidelity failure, not
noise to drop: such an output is reported with its count of non-finite values and no SQNR or cosine, and
:func:`min_sqnr` gives it −∞ so no fidelity target counts as met.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from effedge.runtime.nms import iou_one_to_many, select_detections

MATCH_IOU = 0.5
TIE_MARGIN = 0.01  # a score change this small flips a fragile detection
TIE_FRACTION = 0.5  # above this share of fragile fp32 detections, agreement is not reported
CHUNK = 1 << 20  # values per output summed at a time
RANDOM_WEIGHTS_NOTE = "random weights: the fp32 model's detections are noise (export with --weights to measure them)"


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
    reference_noise: str | None = None  # why fp32's detections mean nothing, known beforehand (random weights)
    sums: dict[str, _Sums] = field(default_factory=dict)
    detector: bool = False
    reference_detections: int = 0
    fragile: int = 0  # fp32 detections a score change of TIE_MARGIN would drop
    test_detections: int = 0
    matched: int = 0
    classified: int = 0  # classifier images seen (a logits [B, classes] output)
    top1_agreed: int = 0
    kl_sum: float = 0.0  # Σ KL(fp32 softmax ‖ test softmax), nats; ∞ once a test probability underflows to 0

    def update(self, reference: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> None:
        for name, ref in reference.items():
            if not np.issubdtype(ref.dtype, np.floating):
                continue
            s = self.sums.setdefault(name, _Sums())
            whole_ref, whole_test = ref.ravel(), test[name].ravel()
            # In float64 a chunk at a time: a D7 class output is 160 MB in fp32, its float64 temporaries many times
            # that at once.
            for start in range(0, whole_ref.size, CHUNK):
                r = whole_ref[start:start + CHUNK].astype(np.float64)
                t = whole_test[start:start + CHUNK].astype(np.float64)
                finite = np.isfinite(r) & np.isfinite(t)
                same = (r == t) | (np.isnan(r) & np.isnan(t))  # fp32's own inf/NaN, reproduced exactly
                s.nonfinite += int(np.count_nonzero(~finite & ~same))
                r, t = r[finite], t[finite]
                s.signal += float(r @ r)
                s.error += float((r - t) @ (r - t))
                s.dot += float(r @ t)
                s.test += float(t @ t)
        if "logits" in reference and reference["logits"].ndim == 2:
            self._classify(reference["logits"], test["logits"])
        if "boxes" in reference and "scores" in reference:
            self.detector = True
            for i in range(reference["boxes"].shape[0]):
                self._match(reference["boxes"][i], reference["scores"][i], test["boxes"][i], test["scores"][i])

    def _classify(self, reference: np.ndarray, test: np.ndarray) -> None:
        def log_softmax(logits: np.ndarray) -> np.ndarray:
            shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
            return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

        log_p, log_q = log_softmax(reference), log_softmax(test)
        with np.errstate(invalid="ignore"):  # a non-finite test logit: counted above, here a disagreement
            kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
        self.classified += len(reference)
        self.top1_agreed += int(np.count_nonzero(reference.argmax(axis=1) == test.argmax(axis=1)))
        self.kl_sum += float(np.where(np.isfinite(kl), np.maximum(kl, 0.0), np.inf).sum())

    def _match(self, ref_boxes, ref_scores, test_boxes, test_scores) -> None:
        options = dict(score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                       max_detections=self.max_detections)
        # fp32 without the limit, to see where it cuts: the threshold, or the best candidate left out
        rb, rs, rc = select_detections(ref_boxes, ref_scores, **{**options, "max_detections": ref_scores.size})
        cut = rs[self.max_detections] if len(rs) > self.max_detections else self.score_threshold
        rb, rs, rc = rb[:self.max_detections], rs[:self.max_detections], rc[:self.max_detections]
        tb, _, tc = select_detections(test_boxes, test_scores, **options)
        self.reference_detections += len(rb)
        self.fragile += int(np.count_nonzero(rs < cut + TIE_MARGIN))
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
        if self.classified:
            report["class_agreement"] = {
                "top1": self.top1_agreed / self.classified, "images": self.classified,
                "kl_divergence": finite_or_none(self.kl_sum / self.classified)}
            if self.reference_noise:
                report["class_agreement_note"] = self.reference_noise.replace("detections", "classes")
        if self.detector:
            reason = self._meaningless()
            if reason:
                report["detection_agreement"] = None
                report["detection_agreement_note"] = reason
            else:
                recall = self.matched / self.reference_detections
                precision = self.matched / self.test_detections if self.test_detections else 1.0
                f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
                report["detection_agreement"] = {
                    "f1": f1, "recall": recall, "precision": precision, "fp32": self.reference_detections,
                    "test": self.test_detections, "matched": self.matched, "fp32_fragile": self.fragile,
                    "score_threshold": self.score_threshold}
        return report

    def _meaningless(self) -> str | None:
        """Why fp32's detections are no reference to agree with, or None."""
        if self.reference_noise:
            return self.reference_noise
        if not self.reference_detections:
            return (f"fp32 detects nothing at score ≥ {self.score_threshold:g} on the held-out views (the test "
                    f"model: {self.test_detections}): nothing to agree on")
        if self.fragile > TIE_FRACTION * self.reference_detections:
            return (f"fp32's detections are near-tied: {self.fragile} of {self.reference_detections} would drop with "
                    f"a score change of {TIE_MARGIN:g} (at the {self.score_threshold:g} threshold or the "
                    f"{self.max_detections}-detection limit), so F1 would measure tie-breaking, not precision")
        return None


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
