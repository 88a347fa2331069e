"""Activation ranges for symmetric INT8, collected in one streaming pass (memory independent of image count).

Each tensor keeps its exact max |x| and a 2048-bin histogram of |x| (from a sample of the tensor) whose range
grows with the data (old counts are re-binned when a larger value arrives). The range ("amax", scale = amax/127) is then:

* ``max`` — the largest |x| seen;
* ``percentile`` — the given percentile of |x| (default 99.99);
* ``entropy`` — the clipping threshold minimising the KL divergence between the clipped distribution and its
  128-level quantization, TensorRT's entropy calibration (candidate thresholds every 16 bins).
"""
from __future__ import annotations

import numpy as np

CALIB_METHODS = ("entropy", "max", "percentile")
ALGORITHM_VERSION = 4  # part of the calibration cache key: bump when ranges would change for the same data
BINS = 2048
LEVELS = 128  # positive int8 levels
ENTROPY_STRIDE = 16
SAMPLE_SIZE = 1 << 18  # values per tensor and update that go into the histogram


class RangeCollector:
    def __init__(self, bins: int = BINS):
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.edge = 0.0  # histogram covers [0, edge]
        self.amax = 0.0

    def update(self, values: np.ndarray, peak: float | None = None) -> None:
        """Add a tensor (or a sample of it, with the exact ``peak`` |x| of the whole tensor)."""
        flat = values.astype(np.float32, copy=False).ravel()
        if peak is None:
            if flat.size == 0:
                return
            peak = max(float(flat.max()), -float(flat.min()))  # exact max |x| without an |x| copy
        # The histogram only needs the distribution's shape: a strided sample of at most SAMPLE_SIZE values per
        # update keeps calibration close to the cost of plain inference on large feature maps.
        magnitudes = np.abs(flat[:: max(1, -(-flat.size // SAMPLE_SIZE))])
        if not np.isfinite(peak):
            magnitudes = magnitudes[np.isfinite(magnitudes)]
            peak = float(magnitudes.max()) if magnitudes.size else 0.0
        self.amax = max(self.amax, peak)
        if peak > self.edge:
            self._grow(peak)
        if magnitudes.size == 0:
            return
        if self.edge == 0.0:
            self.counts[0] += magnitudes.size
            return
        index = np.minimum((magnitudes * (self.bins / self.edge)).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)

    def _grow(self, peak: float) -> None:
        if self.edge > 0 and self.counts.any():
            centres = (np.arange(self.bins) + 0.5) * (self.edge / self.bins)
            index = np.minimum((centres * (self.bins / peak)).astype(np.int64), self.bins - 1)
            self.counts = np.bincount(index, weights=self.counts, minlength=self.bins).astype(np.int64)
        self.edge = peak

    def threshold(self, method: str, percentile: float = 99.99) -> float:
        if method == "max" or self.amax == 0.0:
            return self.amax
        if method == "percentile":
            cumulative = np.cumsum(self.counts) / max(self.counts.sum(), 1)
            index = int(np.searchsorted(cumulative, percentile / 100.0))
            return min(self.amax, (index + 1) * self.edge / self.bins)
        if method == "entropy":
            return min(self.amax, entropy_threshold(self.counts, self.edge))
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(CALIB_METHODS)}")


def entropy_threshold(counts: np.ndarray, edge: float, levels: int = LEVELS, stride: int = ENTROPY_STRIDE) -> float:
    """The |x| clipping threshold with the smallest KL(P‖Q), as TensorRT's entropy calibration: P is the
    histogram cut at the threshold with the outliers folded into its last bin; Q quantizes the cut histogram
    *without* those outliers to ``levels`` levels and spreads each level back over its non-empty bins."""
    counts = counts.astype(np.float64).copy()
    if counts.size > 1:
        counts[0] = counts[1]  # the spike of exact zeros (ReLU-like outputs, padding) would dominate the KL
    bins = counts.size
    best_kl, best_i = np.inf, bins
    for i in range(levels, bins + 1, stride):
        sliced = counts[:i]
        reference = sliced.copy()
        reference[-1] += counts[i:].sum()
        if reference.sum() == 0:
            continue
        starts = (np.arange(levels) * i) // levels
        widths = np.diff(np.append(starts, i))
        nonzero = sliced > 0
        level_sums = np.add.reduceat(sliced, starts)
        level_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)
        candidate = np.where(nonzero, np.repeat(level_sums / np.maximum(level_nonzero, 1), widths), 0.0)
        if candidate.sum() == 0:
            continue
        p = reference / reference.sum()
        q = candidate / candidate.sum()
        support = p > 0
        kl = float(np.sum(p[support] * np.log(p[support] / np.maximum(q[support], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * edge / bins
