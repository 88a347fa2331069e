"""Stage seconds and peak RSS, as build.json reports them."""
import sys
import time

import numpy as np
import pytest

from effedge.provenance.stages import StageMeter, peak_rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-stage peaks need /proc (Linux)")
def test_each_stage_reports_its_own_peak_not_the_runs():
    meter = StageMeter()
    with meter.stage("large"):
        block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
        time.sleep(0.3)
        del block
    with meter.stage("small"):
        time.sleep(0.05)
    with meter.stage("outer"):
        with meter.stage("inner"):
            block = np.ones(150 * 2**20 // 8)
            time.sleep(0.3)
            del block
    peaks = meter.peak_rss_mb
    assert peaks["large"] - peaks["small"] > 250  # the small stage does not inherit the large one's peak
    assert peaks["outer"] >= peaks["inner"] > peaks["small"] + 100  # an outer stage includes its inner ones
    assert peak_rss_mb() >= peaks["large"] - 1  # the kernel's high-water mark (page accounting differs by a page or so)
    assert set(meter.rounded_seconds()) == {"large", "small", "outer", "inner"}
    assert meter.seconds["large"] >= 0.05


def test_a_stage_entered_twice_adds_its_seconds():
    meter = StageMeter()
    for _ in range(2):
        with meter.stage("step"):
            time.sleep(0.02)
    assert meter.seconds["step"] >= 0.04 and list(meter.peak_rss_mb) == ["step"]


def test_a_failing_stage_is_still_recorded():
    meter = StageMeter()
    with pytest.raises(ValueError):
        with meter.stage("broken"):
            raise ValueError("boom")
    assert "broken" in meter.seconds and meter.peak_rss_mb["broken"] > 0


def test_nested_stages_that_start_at_the_same_rss_close_in_any_order():
    meter = StageMeter()
    with meter.stage("outer"):
        with meter.stage("inner"):
            pass
        block = np.ones(50 * 2**20 // 8)  # the outer stage's peak moves after the inner one closed
        time.sleep(0.3)
        del block
    assert set(meter.peak_rss_mb) == {"outer", "inner"}  # closing both did not raise
    assert meter.peak_rss_mb["outer"] >= meter.peak_rss_mb["inner"]


def test_without_proc_or_getrusage_the_peaks_are_unknown_not_a_crash(monkeypatch, tmp_path):
    """Windows has neither /proc nor the resource module: stages still run and say None, never a made-up 0."""
    from effedge.provenance import stages

    monkeypatch.setattr(stages, "_STATM", tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource raises ImportError
    meter = StageMeter()
    with meter.stage("export"):
        pass
    with meter.stage("export"):
        pass
    assert meter.peak_rss_mb == {"export": None} and "export" in meter.seconds
    assert peak_rss_mb() is None
