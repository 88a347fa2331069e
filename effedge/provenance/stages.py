"""Wall time and peak memory (RSS) of a pipeline's stages, as build.json reports them.

A stage's peak is the largest resident set size seen while it ran: a background thread reads the process's RSS
every :data:`SAMPLE_SECONDS` while any stage is open (Linux ``/proc/self/statm``), so each stage gets its own
peak rather than the run's maximum so far. The kernel's high-water mark is left alone (resetting it would make
``/usr/bin/time`` under-report the run). Where ``/proc`` is absent the figure is the process's peak since it
started (``getrusage``), which only grows; where neither is (Windows) it is None. Stages nest: an outer stage's
peak includes its inner stages'.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

SAMPLE_SECONDS = 0.01
_STATM = Path("/proc/self/statm")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def _rss_kb() -> int:
    """The current RSS (Linux), else the peak since the process started; 0 where neither can be read."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        try:
            import resource
        except ImportError:  # Windows: no getrusage
            return 0

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss // 1024 if sys.platform == "darwin" else maxrss  # bytes on macOS, KiB elsewhere


class _Peak:
    """The running peak (KiB) of one open stage; compared by identity, as two stages may share a value."""

    __slots__ = ("kb",)

    def __init__(self, kb: int) -> None:
        self.kb = kb


class _Sampler:
    """One thread for every open stage of the process: it raises each open stage's peak to the current RSS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: list[_Peak] = []
        self.thread: Optional[threading.Thread] = None

    def _sample(self) -> None:
        rss = _rss_kb()
        with self.lock:
            for peak in self.open:
                peak.kb = max(peak.kb, rss)

    def _run(self) -> None:
        while True:
            with self.lock:
                if not self.open:
                    self.thread = None
                    return
            self._sample()
            time.sleep(SAMPLE_SECONDS)

    def enter(self) -> _Peak:
        peak = _Peak(_rss_kb())
        with self.lock:
            self.open.append(peak)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="effedge-rss", daemon=True)
                self.thread.start()
        return peak

    def leave(self, peak: _Peak) -> int:
        self._sample()
        with self.lock:
            self.open = [p for p in self.open if p is not peak]
        return peak.kb


_sampler = _Sampler()


def peak_rss_mb() -> Optional[float]:
    """The process's peak RSS so far in MiB (the kernel's high-water mark); None where it cannot be read."""
    try:
        import resource
    except ImportError:  # Windows
        return None

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round((maxrss / 1024 / 1024 if sys.platform == "darwin" else maxrss / 1024), 1)


class StageMeter:
    """``with meter.stage("calibration"): …`` records the stage's seconds and peak RSS (MiB); a stage entered
    twice adds its seconds and keeps the larger peak."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, Optional[float]] = {}  # None: not measurable here (Windows)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        peak = _sampler.enter()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            kb = max(_sampler.leave(peak), round((self.peak_rss_mb.get(name) or 0) * 1024))
            self.peak_rss_mb[name] = round(kb / 1024, 1) if kb else None

    def rounded_seconds(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}
