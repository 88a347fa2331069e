"""Measurements the planner asks for, as orchestration: compile and time the candidates that an unfitted
local-CPU profile calibrates itself on, and verify a selection by compiling and benchmarking it. Both compile
with the profile's NMS tail (:attr:`Profile.nms`, what `compile` deploys), so what is timed is what is
fitted, selected and deployed."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from effedge.arch.scaling import resolve
from effedge.plan import latency
from effedge.plan.latency import CALIBRATION_VARIANTS, Candidate
from effedge.plan.profiles import Measured, Profile, load_profile, save_model, user_profile_dir


def time_reference(variant: str, precision: str, batch: int, percentile: str, nms: str, log) -> float:
    """Compile ``variant`` at ``precision`` with the ``nms`` tail into the cache (once) and time it briefly on
    ONNX Runtime."""
    from effedge.bench.harness import BenchSettings
    from effedge.bench.targets import bench_one
    from effedge.pipeline.compile import CompileConfig, compile_model
    from effedge.io import cache_root

    out = cache_root() / "calibration" / f"{variant}-{precision}-b{batch}-nms-{nms}"
    manifest = compile_model(CompileConfig(variant=variant, precision=precision, batch=batch, nms=nms,
                                           backend="onnxruntime"), out_dir=out, log=log)
    log(f"timing {variant} {precision} on this CPU")
    settings = BenchSettings(warmup_s=0.5, min_iterations=15, min_duration_s=1.5, batch=batch, energy=False)
    result = bench_one(out / manifest["compile"]["deployable"], manifest, "onnxruntime", settings)
    for note in result["warnings"]:
        log(f"warning ({variant}): {note}")
    return result["latency_ms"][percentile]


def calibrated(profile: Profile, precision: str, log=lambda message: None) -> Profile:
    """``profile`` itself, or, for an unfitted local-CPU profile, the profile fitted to the two smallest
    candidates (D0, D1) compiled and timed on this CPU: seconds, stored in the user profile directory with
    the measured points, so it happens once per precision."""
    import os
    import time


    if not latency.needs_calibration(profile, precision):
        return profile
    log(f"{profile.name} is unfitted for {precision}: calibrating on this CPU by timing "
        f"{' and '.join(CALIBRATION_VARIANTS)} (once)")
    load, cpus = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0, os.cpu_count() or 1
    if load > 0.5 * cpus:  # other work competes for the cores ONNX Runtime uses: timings come out slow
        log(f"warning: this machine is busy (load {load:.1f} on {cpus} CPUs), so the calibration may come out slow; "
            f"to redo it later, delete {user_profile_dir() / (profile.name + '.yaml')}")
    start, batch, points, labels = time.perf_counter(), profile.target.batch, [], []
    specs = [resolve(variant) for variant in CALIBRATION_VARIANTS]
    measured = [m for m in profile.measured if (m.variant, m.resolution, m.precision, m.batch, m.nms) not in
                {(s.name, [s.resolution] * 2, precision, batch, profile.nms) for s in specs}]
    for spec in specs:
        ms = time_reference(spec.name, precision, batch, profile.target.percentile, profile.nms, log)
        points.append((latency.candidate_costs(spec, precision), ms))
        labels.append(f"{spec.name} {precision} b{batch}")
        measured.append(Measured(variant=spec.name, precision=precision, batch=batch,
                                 resolution=[spec.resolution, spec.resolution], latency_ms=ms, nms=profile.nms))
    fitted = latency.fit(points, profile, precision, batch, labels=labels, method="self-calibration")
    path = save_model(profile, {**profile.fits, precision: fitted}, measured)
    log(f"calibrated {profile.name} {precision} in {time.perf_counter() - start:.0f} s: " + ", ".join(
        f"{label} {ms:.1f} ms" for label, (_, ms) in zip(labels, points)) + f" ({profile.target.percentile}); "
        f"stored in {path}")
    return load_profile(path)


def verify_choice(profile: Profile, candidates: list[Candidate], choice: Optional[Candidate], budget: float,
                  precision: str, image_size: Optional[int] = None, log=lambda message: None) -> dict:
    """Compile (at ``image_size``, else each candidate's own) and benchmark the choice; while it misses the
    budget, step down to the next smaller candidate (the next less accurate, as select ranks them). Once one meets
    it, also measures the next larger candidate, to show the budget is tight."""
    from effedge.bench import harness as bench
    from effedge.bench.targets import bench_one
    from effedge.pipeline.compile import CompileConfig, compile_model

    def measure(candidate: Candidate) -> float:
        variant = candidate.name if candidate.name[0] == "d" else candidate.phi
        manifest = compile_model(CompileConfig(variant=variant, precision=precision, batch=profile.target.batch,
                                               image_size=image_size, nms=profile.nms,
                                               backend=profile.software.backend), log=log)
        out = manifest["compile"]["out_dir"]
        log(f"benchmarking {candidate.name}")
        result = bench_one(Path(out) / manifest["compile"]["deployable"], manifest,
                           manifest["backend"], bench.BenchSettings(batch=profile.target.batch, energy=False))
        return result["latency_ms"][profile.target.percentile]

    ordered = sorted(candidates, key=lambda c: latency.selection_key(c, image_size))  # "smaller": ranked lower
    steps = []
    index = ordered.index(choice) if choice else -1
    verified = None
    while index >= 0:
        ms = measure(ordered[index])
        steps.append({"name": ordered[index].name, "measured_ms": ms, "within_budget": ms <= budget})
        if ms <= budget:
            verified = ordered[index].name
            break
        index -= 1
    if verified and index + 1 < len(ordered):
        larger = ordered[index + 1]
        ms = measure(larger)
        steps.append({"name": larger.name, "measured_ms": ms, "within_budget": ms <= budget, "next_larger": True})
    return {"choice": verified, "nms": profile.nms, "steps": steps}
