"""What ``effedge bench`` measures: a built target (engine, ONNX file or build directory) on a backend, timed by
:mod:`effedge.bench.harness`; the whole pipeline in end-to-end mode; the baselines of a build and speedups against
them. Compiling a variant × precision × batch matrix to bench is orchestration (:mod:`effedge.pipeline.matrix`)."""
from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import effedge.bench.harness as bench
from effedge.engine.capabilities import PRODUCTS
from effedge.export.nms_tail import tail_of
from effedge.errors import EffedgeError
from effedge.io import MANIFEST, read_manifest
from effedge.provenance import tool_versions

ENGINE_BACKENDS = tuple(PRODUCTS)  # tensorrt, tensorrt-rtx: the runners of .engine files
FP32_EXPORTS = ("model.onnx", "model.sim.onnx")  # a build's export before precision is written into the graph


def resolve_target(target: str | Path, backend: str = "auto") -> tuple[Path, dict]:
    """(model file, manifest) for an engine, an ONNX file or a build directory (whose deployable, or for
    ``backend`` onnxruntime the ONNX model the deployable engine was built from)."""
    path = Path(target)
    if path.is_dir():
        manifest = read_manifest(path)
        deployable = path / (manifest.get("compile", {}).get("deployable") or "model.sim.onnx")
        if backend == "onnxruntime" and deployable.suffix != ".onnx":
            deployable = deployable.with_suffix(".onnx")
            if not deployable.is_file():
                raise EffedgeError(f"{path} holds no {deployable.name} for ONNX Runtime; drop --backend to bench "
                                   "its engine")
        return deployable, manifest
    if not path.is_file():
        raise EffedgeError(f"bench target {path} not found: give an engine, an ONNX file or a build directory")
    if path.suffix not in (".onnx", ".engine", ".plan"):
        raise EffedgeError(f"bench target {path.name}: expected a .onnx or .engine file or a build directory")
    manifest = read_manifest(path.parent) if (path.parent / MANIFEST).is_file() else {}
    return path, manifest


def _precision_of(path: Path, manifest: dict) -> str:
    """What ``path`` runs in: the precision in its name, fp32 for the export, else the build's precision."""
    if path.name in FP32_EXPORTS:
        return "fp32"
    parts = path.name.split(".")
    if len(parts) == 3 and parts[1] in ("fp32", "fp16", "int8", "mixed"):
        return parts[1]
    return manifest.get("precision", "fp32")


def _random_feed(runner, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for info in runner.input_info():
        static_batch = info.shape[0] if info.shape and isinstance(info.shape[0], int) and info.shape[0] > 0 else None
        if static_batch is not None and static_batch != batch:  # else images/s would count images never run
            raise EffedgeError(f"the model has a static batch of {static_batch}; bench it with --batch "
                               f"{static_batch}, or compile with --batch {batch} (or --dynamic-batch)")
        shape = tuple(batch if i == 0 and static_batch is None else d for i, d in enumerate(info.shape))
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise EffedgeError(f"input '{info.name}' has unknown dimensions {info.shape}; bench a build directory")
        if info.dtype == np.uint8:
            feed[info.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feed[info.name] = rng.standard_normal(shape).astype(info.dtype)
    return feed


def _host_timed(infer: Callable[[], object]) -> Callable[[], bench.Iteration]:
    def step() -> bench.Iteration:
        start = time.perf_counter()
        infer()
        return bench.Iteration(latency=(time.perf_counter() - start) * 1e3)

    return step


def auto_backend(path: Path, manifest: dict) -> str:
    """The backend ``--backend auto`` benches ``path`` on: ONNX Runtime for ONNX files; for engines, the
    TensorRT flavour that built them (the engine's build.json entry; full TensorRT where there is none)."""
    from effedge.runtime.engine_manifest import engine_backend

    return "onnxruntime" if path.suffix == ".onnx" else engine_backend(manifest, path)


def make_runner(backend: str, path: Path, manifest: dict, settings: bench.BenchSettings):
    if backend == "onnxruntime":
        from effedge.runtime.onnxruntime import OnnxRuntimeRunner

        if path.suffix != ".onnx":
            raise EffedgeError(f"the onnxruntime backend runs .onnx files; bench the engine with --backend "
                               f"{auto_backend(path, manifest)}")
        return OnnxRuntimeRunner(path)
    if backend in ENGINE_BACKENDS:
        from effedge.runtime.engines import engine_runner

        if path.suffix == ".onnx":
            raise EffedgeError(f"the {backend} backend runs engines; build one first (effedge build MODEL.onnx "
                               f"--backend {backend})")
        return engine_runner(path, manifest, backend, cuda_graph=settings.cuda_graph)
    raise EffedgeError(f"unknown backend {backend!r}")


def _tensorrt_step(runner, feed: dict, settings: bench.BenchSettings,
                   cleanup: contextlib.ExitStack) -> Callable[[], bench.Iteration]:
    """CUDA events around H2D, compute and D2H on the runner's stream; enqueue = host time of the launch.
    The copies move the bytes of the current shapes only, as in inference. Any TensorRT flavour's runner
    (TensorRT, TensorRT-RTX: the same stream, buffers and steps)."""
    from effedge.runtime import cuda

    events = {}
    for name in ("h2d", "compute", "d2h"):
        events[name] = (cuda.Event(api=runner.cuda_api), cuda.Event(api=runner.cuda_api))
        for event in events[name]:
            cleanup.callback(event.close)
    runner.check_inputs(feed)
    runner.set_inputs(feed)
    runner.copy_inputs_async()  # the inputs are on the GPU even with --no-transfers
    runner.stream.synchronize()

    def step() -> bench.Iteration:
        start = time.perf_counter()
        if settings.transfers:
            events["h2d"][0].record(runner.stream)
            runner.copy_inputs_async()
            events["h2d"][1].record(runner.stream)
        events["compute"][0].record(runner.stream)
        launch = time.perf_counter()
        runner.enqueue()
        enqueue_ms = (time.perf_counter() - launch) * 1e3
        events["compute"][1].record(runner.stream)
        if settings.transfers:
            events["d2h"][0].record(runner.stream)
            runner.copy_outputs_async()
            events["d2h"][1].record(runner.stream)
        runner.stream.synchronize()
        latency = (time.perf_counter() - start) * 1e3
        timed = {name: end.elapsed_ms(begin) for name, (begin, end) in events.items()
                 if settings.transfers or name == "compute"}
        return bench.Iteration(latency=latency, enqueue=enqueue_ms, compute=timed["compute"],
                               h2d=timed.get("h2d"), d2h=timed.get("d2h"))

    return step


def _torch_cuda_step(runner, feed: dict, settings: bench.BenchSettings) -> Callable[[], bench.Iteration]:
    """The transfer policy of :func:`_tensorrt_step`, so that speedups compare the same work: CUDA events around
    H2D (the input), compute and D2H (every output) on each iteration, or, with ``--no-transfers``, the input
    on the GPU once and the outputs left there."""
    torch = runner.torch
    host_images = feed[runner.input_info()[0].name]
    events = {name: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for name in ("h2d", "compute", "d2h")}
    device_images = runner.to_device(host_images)  # the inputs are on the GPU even with --no-transfers
    torch.cuda.synchronize()

    def step() -> bench.Iteration:
        start = time.perf_counter()
        images = device_images
        if settings.transfers:
            events["h2d"][0].record()
            images = runner.to_device(host_images)
            events["h2d"][1].record()
        events["compute"][0].record()
        outputs = runner.forward(images)
        events["compute"][1].record()
        if settings.transfers:
            events["d2h"][0].record()
            runner.to_host(outputs)
            events["d2h"][1].record()
        torch.cuda.synchronize()
        latency = (time.perf_counter() - start) * 1e3
        timed = {name: begin.elapsed_time(end) for name, (begin, end) in events.items()
                 if settings.transfers or name == "compute"}
        return bench.Iteration(latency=latency, compute=timed["compute"], h2d=timed.get("h2d"), d2h=timed.get("d2h"))

    return step


def _end_to_end_step(runner, manifest: dict, images: list[Path], score_threshold: float):
    """Decode → letterbox (a classifier: centre crop) → normalize → inference → decode/NMS of one file per
    iteration, per stage; the preprocessing is the model's own, as build.json records it."""
    from effedge.runtime.images import ImageDecodeError, load_rgb
    from effedge.runtime.nms import select_detections
    from effedge.runtime.preprocess import is_classifier, preprocessing_for

    if "resolution" not in manifest:
        raise EffedgeError("--end-to-end letterboxes to the model's resolution from the build.json beside it; "
                           "bench a build directory or a model inside one")
    size = tuple(manifest["resolution"])
    input_format = manifest.get("input", {}).get("format", "float")
    preprocessing = preprocessing_for(manifest, classifier=is_classifier(manifest, []))
    name = runner.input_info()[0].name
    cycle = itertools.cycle(images)

    def step() -> bench.Iteration:
        path = next(cycle)
        marks = [time.perf_counter()]
        try:
            pixels = load_rgb(path, size)
        except ImageDecodeError as exc:
            raise EffedgeError(f"cannot decode {path}: {exc}; remove it from the --end-to-end folder") from exc
        marks.append(time.perf_counter())
        canvas, _ = preprocessing.fit(pixels, size)
        batch = preprocessing.model_input(canvas[None], input_format)
        marks.append(time.perf_counter())
        outputs = runner.infer({name: batch})
        marks.append(time.perf_counter())
        if "boxes" in outputs and "scores" in outputs:
            select_detections(outputs["boxes"][0], outputs["scores"][0], score_threshold=score_threshold,
                              iou_threshold=0.5, max_detections=100)
        marks.append(time.perf_counter())
        stages = dict(zip(("decode", "letterbox", "infer", "postprocess"), np.diff(marks) * 1e3))
        return bench.Iteration(latency=(marks[-1] - marks[0]) * 1e3, stages=stages)

    return step


def transfer_policy(settings: bench.BenchSettings, on_gpu: bool, end_to_end: bool = False) -> str:
    """The copies inside each timed iteration, in words: one policy for every GPU backend of a run."""
    if not on_gpu:
        return "none: host memory"
    if end_to_end:
        return "H2D of the inputs and D2H of the outputs inside each inference stage (end-to-end)"
    if settings.transfers:
        return "H2D of the inputs and D2H of the outputs on every iteration, inside the latency"
    return "none timed (--no-transfers): the inputs are on the GPU once and the outputs stay there"


def bench_one(path: Path, manifest: dict, backend: str, settings: bench.BenchSettings, *,
              end_to_end: Optional[list[Path]] = None, score_threshold: float = 0.3, label: Optional[str] = None,
              progress: Callable[[int], None] = lambda n: None) -> dict:
    """Benchmark one model file on one backend; returns the JSON-ready result."""
    if backend == "torch":
        import torch

        from effedge.export import torch_runner

        device = "cuda" if torch.cuda.is_available() else "cpu"
        runner = torch_runner(manifest, device=device, half=device == "cuda")
        precision = "fp16" if device == "cuda" else "fp32"
    else:
        runner = make_runner(backend, path, manifest, settings)
        precision = _precision_of(path, manifest)
    on_gpu = backend in ENGINE_BACKENDS or (backend == "torch" and runner.device == "cuda")
    load_start = time.perf_counter()
    with runner, contextlib.ExitStack() as cleanup:
        load_seconds = time.perf_counter() - load_start
        nms = tail_of(o.name for o in runner.output_info())  # recorded with the numbers: a fit matches on it
        if end_to_end:
            if settings.batch != 1:
                raise EffedgeError("end-to-end mode decodes one image per inference; use --batch 1")
            step = _end_to_end_step(runner, manifest, end_to_end, score_threshold)
        else:
            feed = _random_feed(runner, settings.batch)
            if backend in ENGINE_BACKENDS:
                step = _tensorrt_step(runner, feed, settings, cleanup)
            elif on_gpu:
                step = _torch_cuda_step(runner, feed, settings)
            else:
                step = _host_timed(lambda: runner.infer(feed))
        # The first inference after loading pays for lazy initialisation (TensorRT's first enqueue, a CUDA graph
        # capture, ONNX Runtime's first run): reported as first_run, kept out of warm-up and statistics alike.
        first = step()
        sampler = bench.TegrastatsSampler() if settings.energy and bench.TegrastatsSampler.available() else None
        if sampler:
            sampler.__enter__()
        try:
            measured = bench.run(step, settings, progress=progress)
        finally:
            if sampler:
                sampler.__exit__()
    summary = bench.summarize(measured.records, measured.wall_s, settings.batch)
    # the measured window only: warm-up iterations are not in the count
    energy = bench.energy_mj(sampler.samples, measured.start, measured.end) if sampler else None
    jetson = bench.jetson_state()
    machine_kind = "jetson" if jetson or sampler else "gpu" if on_gpu else "cpu"
    result = {
        "label": label or f"{manifest.get('variant', path.stem)} {precision} {backend}",
        "target": str(path.resolve()), "backend": backend, "precision": precision, "batch": settings.batch,
        "variant": manifest.get("variant"), "phi": manifest.get("phi"), "resolution": manifest.get("resolution"),
        "nms": nms, "mode": "end-to-end" if end_to_end else "inference",
        **summary,
        "first_run": {"load_seconds": load_seconds, **runner.startup, "first_iteration_ms": first.latency},
        "warnings": bench.warnings_for(summary, machine_kind) + runner.notes,
        "settings": {**bench.settings_dict(settings), "energy": energy is not None,  # measured, not only asked for
                     "transfer_policy": transfer_policy(settings, on_gpu, bool(end_to_end)), "timing": (
                         "CUDA events (compute, H2D, D2H) + host clock" if on_gpu and not end_to_end
                         else "host clock (time.perf_counter)")},
        "versions": tool_versions(), "machine": {**bench.machine(), **jetson},
    }
    return {**result, **bench.energy_fields(energy, len(measured.records), settings.batch)}


def bench_baselines(measured: list[dict], export: Path, manifest: dict, settings: bench.BenchSettings, *,
                    log: Callable[[str], None] = lambda message: None) -> list[dict]:
    """The baselines of one build and batch: PyTorch eager, and ONNX Runtime fp32 on ``export`` (the build's fp32
    export) unless ``measured`` holds that row already. Adds ``speedup_vs_torch`` to ``measured`` and to the
    baselines; returns the baseline rows, each labelled by what it runs."""
    variant = manifest.get("variant", export.stem)
    log(f"baselines for {variant} batch {settings.batch}: PyTorch eager, ONNX Runtime fp32")
    group = [bench_one(export, manifest, "torch", settings)]
    if not any(r["backend"] == "onnxruntime" and r["precision"] == "fp32" for r in measured):
        group.append(bench_one(export, manifest, "onnxruntime", settings))
    for row in group:
        eager = " eager" if row["backend"] == "torch" else ""
        row.update(baseline=True, label=f"{variant} {row['precision']} {row['backend']}{eager} (baseline) "
                                        f"b{settings.batch}")
    add_ratios(group[:1] + measured + group[1:], group[0]["label"])
    return group


def first_run_text(first_run: dict) -> str:
    """``load 1.20 s (execution context and JIT 0.95 s, runtime cache none), first inference 14.2 ms``."""
    text = f"load {first_run['load_seconds']:.2f} s"
    if "runtime_cache" in first_run:  # TensorRT-RTX: the kernels are compiled when the context is created
        text += (f" (execution context and JIT {first_run['context_seconds']:.2f} s, runtime cache "
                 f"{first_run['runtime_cache']})")
    return text + f", first inference {first_run['first_iteration_ms']:.1f} ms"


def add_ratios(results: list[dict], reference_label: str) -> None:
    """``speedup_vs_<label>``: how many times faster (median latency) each result is than the reference."""
    reference = next((r for r in results if r["label"] == reference_label), None)
    if reference is None:
        return
    for result in results:
        result[f"speedup_vs_{reference['backend']}"] = (
            reference["latency_ms"]["median"] / result["latency_ms"]["median"])
