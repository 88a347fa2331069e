"""Activation ranges for symmetric INT8, collected in one streaming pass (memory independent of image count).

Each tensor keeps the max |x| of what it was given and a histogram of |x| (from a sample of it: the calibration
pass gives it the exact max for ``max``, and a strided sample for the histogram methods). The bin width is a
power of two, chosen so that [0, max |x|] spans at least :data:`BINS` and fewer than 2·:data:`BINS` bins; when
a larger value arrives, neighbouring bins merge in pairs (doubling the width) until the range covers it. Bin
edges stay aligned, so no count is ever split between bins: the result is exactly the histogram of all the data
at the final width, whatever the order and size of the updates. The range ("amax", scale = amax/127) is then:

* ``max`` — the largest |x| seen;
* ``percentile`` — the given percentile of |x| (default 99.99);
* ``entropy`` — the clipping threshold minimising the KL divergence between the clipped distribution and its
  128-level quantization, TensorRT's entropy calibration (every bin edge from the 128th on is a candidate).
"""
from __future__ import annotations

import math

import numpy as np

CALIB_METHODS = ("entropy", "max", "percentile")
DEFAULT_METHOD = "percentile"  # the best fixture mAP (README, tools/accuracy_report.py)
ALGORITHM_VERSION = 6  # part of the calibration cache key: bump when ranges would change for the same data
BINS = 2048  # least number of bins across [0, max |x|]
LEVELS = 128  # positive int8 levels
SAMPLE_SIZE = 1 << 18  # values per tensor and update that go into the histogram


class RangeCollector:
    def __init__(self, bins: int = BINS):
        self.bins = bins
        self.counts = np.zeros(2 * bins, np.int64)
        self.exponent: int | None = None  # bin width 2**exponent; None until a non-zero value arrives
        self.amax = 0.0

    @property
    def width(self) -> float:
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent)

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
        if peak > 0:
            self._cover(peak)
        if magnitudes.size == 0:
            return
        if self.exponent is None:  # every value so far is 0: bin 0 at any width
            self.counts[0] += magnitudes.size
            return
        # Scaling by a power of two is exact, so a value lands in the bin it would land in at any coarser width.
        # In float32 where 2**-exponent is a normal float32 (always, but for widths below 2**-126 or above 2**126):
        # np.ldexp with a Python int exponent computes in float64, a third of the calibration pass's time at D0.
        scale = np.float32(math.ldexp(1.0, -self.exponent)) if -126 <= -self.exponent <= 127 else None
        if scale is not None:
            scaled = np.multiply(magnitudes, scale, out=magnitudes)  # magnitudes is our own copy
        else:
            scaled = np.ldexp(magnitudes.astype(np.float64), -self.exponent)
        index = scaled.astype(np.int64)
        np.minimum(index, self.counts.size - 1, out=index)
        self.counts += np.bincount(index, minlength=self.counts.size)

    def _cover(self, peak: float) -> None:
        """Widen the bins (merging pairs) until ``peak`` falls inside the histogram."""
        # The smallest exponent with peak < 2·bins·2**exponent: peak/(2·bins) = m·2**exponent with ½ ≤ m < 1.
        _, needed = math.frexp(peak / (2 * self.bins))
        if self.exponent is None:
            self.exponent = needed
            return
        while self.exponent < needed:
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)])
            self.exponent += 1

    def threshold(self, method: str, percentile: float = 99.99) -> float:
        if method not in CALIB_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(CALIB_METHODS)}")
        if method == "max" or self.amax == 0.0:
            return self.amax
        counts = self.counts[: min(self.counts.size, math.floor(self.amax / self.width) + 1)]
        if method == "percentile":
            cumulative = np.cumsum(counts) / max(counts.sum(), 1)
            index = int(np.searchsorted(cumulative, percentile / 100.0))
            return min(self.amax, (index + 1) * self.width)  # the upper edge of the bin holding the percentile
        return min(self.amax, entropy_threshold(counts) * self.width)


def entropy_threshold(counts: np.ndarray, levels: int = LEVELS) -> int:
    """The number of bins of the |x| histogram ``counts`` to keep (the clipping threshold, in bins) with the
    smallest KL(P‖Q), as TensorRT's entropy calibration: P is the histogram cut after ``i`` bins with the outliers
    added to its last bin; Q quantizes the cut histogram *without* those outliers to ``levels`` levels and spreads
    each level evenly over its non-empty bins. Every ``i`` from ``levels`` to ``counts.size`` that keeps at least
    half of the values is tried; ties go to the largest ``i``.

    The KL of all candidates is computed at once from prefix sums: within a level, Q is constant over the
    non-empty bins, so each level contributes (its P mass) × log(its Q value) and P's own entropy is a prefix
    sum of c·log c.
    """
    c = counts.astype(np.float64)
    if c.size <= levels:
        return c.size
    c[0] = c[1]  # the spike of exact zeros (ReLU-like outputs, padding) would dominate the KL
    total = c.sum()
    if total == 0:
        return c.size
    c_log_c = np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0)
    cumulative = np.concatenate([[0.0], np.cumsum(c)])
    cumulative_c_log_c = np.concatenate([[0.0], np.cumsum(c_log_c)])
    cumulative_nonzero = np.concatenate([[0], np.cumsum(c > 0)])

    kept = np.arange(levels, c.size + 1)  # candidate bin counts i
    last = c[kept - 1]
    outliers = total - cumulative[kept]
    last_with_outliers = last + outliers
    # Σ p log p over the cut histogram with the outliers in its last bin (P sums to 1).
    p_log_p = (cumulative_c_log_c[kept - 1] + np.where(last_with_outliers > 0, last_with_outliers * np.log(
        np.where(last_with_outliers > 0, last_with_outliers, 1.0)), 0.0)) / total - np.log(total)
    # Level k of candidate i covers bins [ceil(k·i/levels), ceil((k+1)·i/levels)).
    bounds = (np.arange(levels + 1)[None, :] * kept[:, None] + levels - 1) // levels
    level_sums = cumulative[bounds[:, 1:]] - cumulative[bounds[:, :-1]]
    level_nonzero = cumulative_nonzero[bounds[:, 1:]] - cumulative_nonzero[bounds[:, :-1]]
    kept_mass = cumulative[kept]  # Q's total
    q_value = np.where(level_sums > 0, level_sums / np.maximum(level_nonzero, 1) / np.maximum(kept_mass, 1.0)[:, None],
                       1.0)
    p_mass = level_sums.copy()
    p_mass[:, -1] += outliers  # the outliers sit in the last bin, which belongs to the last level
    p_log_q = (p_mass * np.log(q_value)).sum(axis=1) / total
    kl = p_log_p - p_log_q
    # Outliers folded into an empty last bin, where Q is 0: P is not representable.
    kl[(last == 0) & (outliers > 0)] = np.inf
    # A cut below the median leaves P mostly outliers, and a cut keeping a single occupied bin has KL 0 whatever
    # it clips (an SE gate of the trained fixture, |x| in [0.046, 0.92], was cut at 0.047): not candidates.
    kl[kept_mass < outliers] = np.inf
    if not np.isfinite(kl).any():
        return c.size
    return int(kept[len(kl) - 1 - np.argmin(kl[::-1])])
