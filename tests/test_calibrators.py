"""Activation ranges: the |x| histogram is exact whatever the order of the data, entropy is TensorRT's KL
search, percentile is the data's percentile, and the default method is the same everywhere."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from effedge.quantize.calibrators import CALIB_METHODS, DEFAULT_METHOD, RangeCollector, entropy_threshold


def growing_batches(seed=0, count=40, size=4000):
    """Laplace-distributed batches whose scale grows, so most batches raise the running max."""
    rng = np.random.default_rng(seed)
    return [rng.laplace(scale=1.0 + 0.05 * i, size=size).astype(np.float32) for i in range(count)]


def reference_entropy_bins(counts: np.ndarray, levels: int = 128) -> int:
    """TensorRT's entropy calibration written plainly, one candidate at a time (the code under test computes
    all candidates at once from prefix sums)."""
    counts = counts.astype(np.float64).copy()
    counts[0] = counts[1]
    best_kl, best_bins = np.inf, counts.size
    for kept in range(levels, counts.size + 1):
        if counts[:kept].sum() < counts[kept:].sum():
            continue  # effedge's one rule on top of TensorRT's: never cut below the median
        p = counts[:kept].copy()
        p[-1] += counts[kept:].sum()
        q = np.zeros(kept)
        edges = np.linspace(0, kept, levels + 1)
        level_of_bin = np.searchsorted(edges, np.arange(kept), side="right") - 1
        for level in range(levels):
            members = (level_of_bin == level) & (counts[:kept] > 0)
            if members.any():
                q[members] = counts[:kept][level_of_bin == level].sum() / members.sum()
        if q.sum() == 0 or np.any((p > 0) & (q == 0)):
            continue
        p, q = p / p.sum(), q / q.sum()
        kl = float(np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0])))
        if kl <= best_kl:  # ties go to the larger threshold
            best_kl, best_bins = kl, kept
    return best_bins


def test_histogram_does_not_depend_on_the_order_of_the_data():
    """A larger value arriving later must not blur the counts: streaming equals one update of everything."""
    batches = growing_batches()
    streamed, at_once, reversed_order = RangeCollector(), RangeCollector(), RangeCollector()
    for batch in batches:
        streamed.update(batch)
    at_once.update(np.concatenate(batches))
    for batch in reversed(batches):
        reversed_order.update(batch)
    assert np.array_equal(streamed.counts, at_once.counts)
    assert np.array_equal(reversed_order.counts, at_once.counts)
    for method in CALIB_METHODS:
        assert streamed.threshold(method) == at_once.threshold(method) == reversed_order.threshold(method)


def test_histogram_keeps_full_resolution_and_bounded_memory():
    collector = RangeCollector()
    for batch in growing_batches(count=200, size=500):
        collector.update(batch)
    assert collector.counts.size == 2 * collector.bins  # independent of how much data went in
    assert collector.counts.sum() == 200 * 500
    spanned = collector.amax / collector.width
    assert collector.bins <= spanned < 2 * collector.bins  # [0, max |x|] spans at least BINS bins


def test_entropy_of_streamed_data_is_the_kl_minimum_of_the_exact_histogram():
    batches = growing_batches(seed=1)
    collector = RangeCollector()
    for batch in batches:
        collector.update(batch)
    magnitudes = np.abs(np.concatenate(batches)).astype(np.float64)
    bins = int(collector.amax // collector.width) + 1
    exact, _ = np.histogram(magnitudes, bins=bins, range=(0, bins * collector.width))
    expected = min(collector.amax, reference_entropy_bins(exact) * collector.width)
    assert collector.threshold("entropy") == pytest.approx(expected, rel=1e-9)
    assert collector.threshold("entropy") < collector.amax  # Laplace tails are clipped


@pytest.mark.parametrize("seed", range(4))
def test_entropy_search_matches_the_plain_algorithm(seed):
    rng = np.random.default_rng(seed)
    counts = np.histogram(np.abs(rng.standard_t(3 + seed, 50_000)), bins=300 + 150 * seed)[0]
    if seed == 2:
        counts[150:190] = 0  # empty stretches: candidates ending there must not win by an empty last bin
    assert entropy_threshold(counts) == reference_entropy_bins(counts)


def test_entropy_does_not_cut_below_the_median():
    """One small value alone in its bin made a cut there look perfect (KL 0): a sigmoid gate in [0.05, 0.92]
    of the trained fixture got 0.047."""
    rng = np.random.default_rng(3)
    collector = RangeCollector()
    collector.update(np.concatenate([[0.0464], rng.uniform(0.2, 0.92, 40_000)]).astype(np.float32))
    assert collector.threshold("entropy") > 0.56  # above the median of |x|


def test_percentile_is_the_percentile_of_the_data():
    batches = growing_batches(seed=2)
    collector = RangeCollector()
    for batch in batches:
        collector.update(batch)
    exact = np.percentile(np.abs(np.concatenate(batches)), 99.9)
    assert exact <= collector.threshold("percentile", 99.9) <= exact + collector.width


def test_zeros_then_values_and_non_finite_values():
    collector = RangeCollector()
    collector.update(np.zeros(1000, np.float32))  # a ReLU output that is all zero on the first image
    collector.update(np.array([0.5, -2.0, np.inf, np.nan], np.float32))
    assert collector.amax == 2.0 and collector.counts.sum() == 1002
    assert collector.threshold("max") == 2.0


def test_default_method_is_percentile_everywhere():
    """The CLI spells the methods out (no numpy at --help): they and every default must agree."""
    from effedge.cli import cli
    from effedge.cli import options
    from effedge.pipeline.compile import CompileConfig
    from effedge.quantize.precision import PrecisionOptions

    assert DEFAULT_METHOD == "percentile"  # the best int8 mAP on the reference model (README)
    assert options.CALIB_METHODS == CALIB_METHODS and options.DEFAULT_CALIB_METHOD == DEFAULT_METHOD
    assert PrecisionOptions(precision="int8").method == DEFAULT_METHOD
    assert CompileConfig(variant="d0").calib_method == DEFAULT_METHOD
    for command in ("compile", "quantize"):
        option = next(p for p in cli.commands[command].params if p.name == "calib_method")
        assert option.default == DEFAULT_METHOD and option.help


def test_accuracy_report_names_and_passes_every_method():
    path = Path(__file__).parent.parent / "tools" / "accuracy_report.py"
    spec = importlib.util.spec_from_file_location("accuracy_report", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    builds = tool.builds(list(CALIB_METHODS), "percentile")
    quantized = [(name, extra) for name, precision, extra in builds if precision in ("int8", "mixed")]
    assert {extra[1] for name, extra in quantized if name.startswith("int8")} == set(CALIB_METHODS)
    for name, extra in quantized:
        assert extra[0] == "--calib-method" and name.endswith(extra[1])


@pytest.mark.parametrize("scale", [1e-38, 1e-36, 1e-3, 1.0, 1e30])
def test_histogram_bins_are_exact_at_every_width(scale):
    """The float32 fast path (scaling by a power of two) and the float64 fallback (bin widths a float32 cannot
    scale by exactly) both put every value in the bin float64 arithmetic puts it in."""
    values = (np.random.default_rng(1).standard_normal(50000) * scale).astype(np.float32)
    collector = RangeCollector()
    collector.update(values)
    magnitudes = np.abs(values.astype(np.float64))
    index = np.minimum(np.floor(np.ldexp(magnitudes, -collector.exponent)).astype(np.int64),
                       collector.counts.size - 1)
    assert np.array_equal(collector.counts, np.bincount(index, minlength=collector.counts.size))
