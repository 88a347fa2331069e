"""Benchmarks comparable with trtexec, for every backend behind the runner interface.

Protocol (defaults in :class:`BenchSettings`): a time-based warm-up, then iterations until both a minimum
count and a minimum duration are reached, one record per iteration. A record holds the host wall latency of
the whole inference and, where the backend can measure them, enqueue time, H2D, GPU compute and D2H from
CUDA events. Statistics per metric: min, max, mean, median, p90, p95, p99 (NumPy's linear interpolation)
and the coefficient of variation. Throughput = iterations / wall time (qps) and × batch (images/s).
Warnings as trtexec gives them: enqueue-bound (median enqueue > 0.8 × median compute) and unstable timing
(CV > 2.5 %), with the advice that fits the machine (GPU: lock its clocks; Jetson: jetson_clocks; CPU: the
frequency governor). On Jetson, tegrastats is sampled during the run and its instant power of the total rail
integrated into mJ per batch (one timed iteration) and per image.
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np

ENQUEUE_BOUND_RATIO = 0.8
UNSTABLE_CV = 0.025
METRICS = ("latency", "enqueue", "h2d", "compute", "d2h")


@dataclass(frozen=True)
class BenchSettings:
    warmup_s: float = 1.0
    min_iterations: int = 20
    min_duration_s: float = 3.0
    batch: int = 1
    cuda_graph: bool = False  # GPU: replay a captured CUDA graph instead of enqueueing each time
    transfers: bool = True  # GPU: copy inputs/outputs every iteration (trtexec 11 turned this off by default)
    energy: bool = True  # Jetson: sample tegrastats during the run


@dataclass
class Iteration:
    """One timed inference, in milliseconds (None where the backend cannot measure it)."""

    latency: float
    enqueue: Optional[float] = None
    h2d: Optional[float] = None
    compute: Optional[float] = None
    d2h: Optional[float] = None
    stages: dict = field(default_factory=dict)  # end-to-end mode: decode, letterbox, infer, postprocess


def statistics(values_ms: Iterable[float]) -> dict:
    values = np.asarray(list(values_ms), dtype=np.float64)
    if values.size == 0:
        return {}
    mean = float(values.mean())
    return {
        "min": float(values.min()), "max": float(values.max()), "mean": mean,
        "median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
        "p95": float(np.percentile(values, 95)), "p99": float(np.percentile(values, 99)),
        "cv": float(values.std() / mean) if mean > 0 else 0.0,
    }


@dataclass(frozen=True)
class Measurement:
    """The timed iterations and the clock readings that bound them (warm-up excluded)."""

    records: list[Iteration]
    start: float
    end: float

    @property
    def wall_s(self) -> float:
        return self.end - self.start


def run(step: Callable[[], Iteration], settings: BenchSettings, clock: Callable[[], float] = time.perf_counter,
        progress: Callable[[int], None] = lambda n: None) -> Measurement:
    """Warm up for ``settings.warmup_s``, then time ``step`` until the minimum count and duration are both
    reached."""
    start = clock()
    while clock() - start < settings.warmup_s:
        step()
    records = []
    start = clock()
    while len(records) < settings.min_iterations or clock() - start < settings.min_duration_s:
        records.append(step())
        progress(len(records))
    return Measurement(records, start, clock())


def summarize(records: list[Iteration], wall_s: float, batch: int) -> dict:
    result = {}
    for metric in METRICS:
        values = [getattr(r, metric) for r in records if getattr(r, metric) is not None]
        if values:
            result[f"{metric}_ms"] = statistics(values)
    stage_names = sorted({name for r in records for name in r.stages})
    if stage_names:
        result["stages_ms"] = {name: statistics(r.stages[name] for r in records if name in r.stages)
                               for name in stage_names}
    qps = len(records) / wall_s if wall_s > 0 else 0.0
    result.update(iterations=len(records), wall_s=wall_s, throughput_qps=qps, images_per_s=qps * batch)
    return result


# What steadies the clocks, per kind of machine the timed work runs on.
CLOCK_ADVICE = {
    "gpu": "lock the GPU clocks (nvidia-smi -lgc) and stop other load",
    "jetson": "lock the clocks (sudo jetson_clocks) and stop other load",
    "cpu": "set the CPU frequency governor to performance (cpupower frequency-set -g performance) and stop "
           "other load",
}


def warnings_for(summary: dict, machine_kind: str = "cpu") -> list[str]:
    """trtexec's warnings on ``summary``; ``machine_kind`` (gpu, jetson, cpu) picks the clock advice."""
    notes = []
    compute, enqueue = summary.get("compute_ms"), summary.get("enqueue_ms")
    if compute and enqueue and enqueue["median"] > ENQUEUE_BOUND_RATIO * compute["median"]:
        notes.append(f"enqueue-bound: median enqueue {enqueue['median']:.3f} ms > {ENQUEUE_BOUND_RATIO:g} × median "
                     f"GPU compute {compute['median']:.3f} ms; try --cuda-graph or a larger batch")
    timed = compute or summary.get("latency_ms")
    if timed and timed["cv"] > UNSTABLE_CV:
        which = "GPU compute" if compute else "latency"
        notes.append(f"{which} varies (coefficient of variation {timed['cv'] * 100:.1f} % > "
                     f"{UNSTABLE_CV * 100:g} %): {CLOCK_ADVICE[machine_kind]}")
    return notes


# --- Jetson: power state and energy --------------------------------------------------------------------

_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)mW/(\d+)mW")
TOTAL_RAIL = "VDD_IN"  # Orin NX / Orin Nano: the module input
AGX_ORIN_RAILS = ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0")  # AGX Orin has no VDD_IN: the module is their sum


def parse_tegrastats(line: str) -> Optional[float]:
    """Instant total power in mW from one tegrastats line, or None if it reports no known rails."""
    rails = {name: int(instant) for name, instant, _ in _RAIL.findall(line)}
    if TOTAL_RAIL in rails:
        return float(rails[TOTAL_RAIL])
    if all(name in rails for name in AGX_ORIN_RAILS):
        return float(sum(rails[name] for name in AGX_ORIN_RAILS))
    return None


def energy_mj(samples: list[tuple[float, float]], start: float, end: float) -> Optional[float]:
    """Energy in mJ between ``start`` and ``end`` (s) from (time s, power mW) samples: trapezoids over the
    samples, the power held constant before the first and after the last sample inside the window."""
    inside = sorted((t, p) for t, p in samples if start <= t <= end)
    if not inside:
        before = [p for t, p in samples if t < start]
        return before[-1] * (end - start) if before else None
    times = np.array([start] + [t for t, _ in inside] + [end])
    power = np.array([inside[0][1]] + [p for _, p in inside] + [inside[-1][1]])
    return float(np.sum((power[1:] + power[:-1]) / 2 * np.diff(times)))


def energy_fields(energy: Optional[float], iterations: int, batch: int) -> dict:
    """``energy_mj_per_batch`` (one timed iteration runs one batch) and ``energy_mj_per_image`` from the
    energy of ``iterations`` iterations."""
    if energy is None or iterations == 0:
        return {"energy_mj_per_batch": None, "energy_mj_per_image": None}
    per_batch = energy / iterations
    return {"energy_mj_per_batch": per_batch, "energy_mj_per_image": per_batch / batch}


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background and keeps (time, total mW) samples."""

    def __init__(self, interval_ms: int = 50):
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float]] = []
        self.process = None

    @staticmethod
    def available() -> bool:
        return shutil.which("tegrastats") is not None

    def __enter__(self) -> "TegrastatsSampler":
        self.process = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            power = parse_tegrastats(line)
            if power is not None:
                self.samples.append((time.perf_counter(), power))

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=5)


def jetson_state() -> dict:
    """Power mode (nvpmodel) and whether clocks are locked (jetson_clocks), when readable."""
    state = {}
    for key, command in (("power_mode", ["nvpmodel", "-q"]), ("clocks", ["jetson_clocks", "--show"])):
        if shutil.which(command[0]) is None:
            continue
        try:
            output = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if key == "power_mode":
            match = re.search(r"NV Power Mode:\s*(\S+)", output)
            state[key] = match.group(1) if match else output.strip().splitlines()[0] if output.strip() else None
        else:
            state[key] = "locked" if re.search(r"MinFreq=(\d+).*MaxFreq=\1", output) else "dynamic"
    return state


def machine() -> dict:
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "system": platform.system()}


def settings_dict(settings: BenchSettings) -> dict:
    return asdict(settings)
