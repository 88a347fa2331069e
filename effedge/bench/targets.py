"""What ``effedge bench`` measures: a target (engine, ONNX file or build directory) on a backend, timed by
:mod:`effedge.bench.harness`; the whole pipeline in end-to-end mode; baselines; and the variant × precision × batch
matrix compiled through the compile cache."""
from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from effedge.bench import harness as bench
from effedge.engine.capabilities import PRODUCTS
from effedge.export.nms_tail import tail_of
from effedge.errors import EffedgeError
from effedge.io import MANIFEST, read_manifest
from effedge.provenance import tool_versions

ENGINE_BACKENDS = tuple(PRODUCTS)  # tensorrt, tensorrt-rtx: the runners of .engine files


def resolve_target(target: str | Path) -> tuple[Path, dict]:
    """(model file, manifest) for an engine, an ONNX file or a build directory."""
    path = Path(target)
    if path.is_dir():
        manifest = read_manifest(path)
        deployable = manifest.get("compile", {}).get("deployable") or "model.sim.onnx"
        return path / deployable, manifest
    if not path.is_file():
        raise EffedgeError(f"bench target {path} not found: give an engine, an ONNX file or a build directory")
    if path.suffix not in (".onnx", ".engine", ".plan"):
        raise EffedgeError(f"bench target {path.name}: expected a .onnx or .engine file or a build directory")
    manifest = read_manifest(path.parent) if (path.parent / MANIFEST).is_file() else {}
    return path, manifest


def _precision_of(path: Path, manifest: dict) -> str:
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
    from effedge.runtime.tensorrt import engine_backend

    return "onnxruntime" if path.suffix == ".onnx" else engine_backend(manifest, path)


def make_runner(backend: str, path: Path, manifest: dict, settings: bench.BenchSettings):
    if backend == "onnxruntime":
        from effedge.runtime.onnxruntime import OnnxRuntimeRunner

        if path.suffix != ".onnx":
            raise EffedgeError(f"the onnxruntime backend runs .onnx files; bench the engine with --backend "
                               f"{auto_backend(path, manifest)}")
        return OnnxRuntimeRunner(path)
    if backend in ENGINE_BACKENDS:
        from effedge.runtime.tensorrt import engine_runner

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


def _torch_cuda_step(runner, feed: dict) -> Callable[[], bench.Iteration]:
    torch = runner.torch
    images = torch.from_numpy(feed["images"]).to(runner.device)
    if runner.half and images.dtype == torch.float32:
        images = images.half()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step() -> bench.Iteration:
        start = time.perf_counter()
        begin.record()
        with torch.inference_mode():
            runner.module(images)
        end.record()
        torch.cuda.synchronize()
        return bench.Iteration(latency=(time.perf_counter() - start) * 1e3, compute=begin.elapsed_time(end))

    return step


def _end_to_end_step(runner, manifest: dict, images: list[Path], score_threshold: float):
    """Decode → letterbox → normalize → inference → decode/NMS of one file per iteration, per stage."""
    from effedge.runtime.images import load_rgb
    from effedge.runtime.nms import select_detections
    from effedge.runtime.preprocess import letterbox, to_model_input

    size = tuple(manifest["resolution"])
    input_format = manifest.get("input", {}).get("format", "float")
    name = runner.input_info()[0].name
    cycle = itertools.cycle(images)

    def step() -> bench.Iteration:
        path = next(cycle)
        marks = [time.perf_counter()]
        pixels = load_rgb(path, size)
        marks.append(time.perf_counter())
        canvas, _ = letterbox(pixels, *size)
        batch = to_model_input(canvas[None], input_format)
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
            elif backend == "torch" and runner.device == "cuda":
                step = _torch_cuda_step(runner, feed)
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
    result = {
        "label": label or f"{manifest.get('variant', path.stem)} {precision} {backend}",
        "target": str(path.resolve()), "backend": backend, "precision": precision, "batch": settings.batch,
        "variant": manifest.get("variant"), "phi": manifest.get("phi"), "resolution": manifest.get("resolution"),
        "nms": nms, "mode": "end-to-end" if end_to_end else "inference",
        **summary,
        "first_run": {"load_seconds": load_seconds, **runner.startup, "first_iteration_ms": first.latency},
        "warnings": bench.warnings_for(summary) + runner.notes,
        "settings": {**bench.settings_dict(settings), "timing": (
            "CUDA events (compute, H2D, D2H) + host clock" if backend in ENGINE_BACKENDS or (
                backend == "torch" and precision == "fp16") else "host clock (time.perf_counter)")},
        "versions": tool_versions(), "machine": {**bench.machine(), **bench.jetson_state()},
    }
    if sampler:  # the measured window only: warm-up iterations are not in the count
        energy = bench.energy_mj(sampler.samples, measured.start, measured.end)
        result["energy_mj_per_inference"] = energy / len(measured.records) if energy is not None else None
    return result


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


def _torch_matrix(variants: list[str], precisions: list[str], batches: list[int], *, settings: bench.BenchSettings,
                  log: Callable[[str], None], progress) -> list[dict]:
    """PyTorch eager per variant and batch: fp32 on the CPU, fp16 on a CUDA GPU (the model comes from the fp32
    ONNX Runtime build's manifest, through the compile cache)."""
    from dataclasses import replace

    from effedge.pipeline.compile import CompileConfig, compile_model

    import torch

    device_precision = "fp16" if torch.cuda.is_available() else "fp32"
    if set(precisions) - {device_precision}:
        raise EffedgeError(f"--backend torch benches PyTorch eager in {device_precision} on this machine "
                           f"({'CUDA' if device_precision == 'fp16' else 'CPU'}); use --precisions {device_precision}"
                           ", or --backend onnxruntime/tensorrt for the other precisions")
    results = []
    for variant in variants:
        for batch in batches:
            manifest = compile_model(CompileConfig(variant=variant, precision="fp32", batch=batch, nms="none",
                                                   backend="onnxruntime"), log=log, progress=progress)
            out = Path(manifest["compile"]["out_dir"])
            log(f"benchmarking {variant} {device_precision} batch {batch} on torch")
            results.append(bench_one(out / "model.sim.onnx", manifest, "torch", replace(settings, batch=batch)))
    return results


def bench_matrix(variants: list[str], precisions: list[str], batches: list[int], *, backend: str,
                 settings: bench.BenchSettings, nms: str = "auto", baselines: bool = False,
                 log: Callable[[str], None] = lambda message: None, progress=None) -> list[dict]:
    """Compile what is missing (through the compile cache), then bench every combination; with
    ``baselines``, also PyTorch eager and ONNX Runtime fp32 of each variant, and speedups against eager."""
    from dataclasses import replace

    from effedge.pipeline.compile import CompileConfig, choose_backend, compile_model

    if backend == "torch":
        return _torch_matrix(variants, precisions, batches, settings=settings, log=log, progress=progress)
    chosen = choose_backend(backend).name
    results = []
    for variant in variants:
        for batch in batches:
            run_settings = replace(settings, batch=batch)
            fp32_dir = None
            for precision in precisions:
                manifest = compile_model(CompileConfig(variant=variant, precision=precision, batch=batch, nms=nms,
                                                       backend=chosen), log=log, progress=progress)
                out = Path(manifest["compile"]["out_dir"])
                fp32_dir = fp32_dir or out
                log(f"benchmarking {variant} {precision} batch {batch} on {chosen}")
                results.append(bench_one(out / manifest["compile"]["deployable"], manifest, chosen, run_settings))
            if baselines:
                manifest = read_manifest(fp32_dir)
                group = []
                log(f"baselines for {variant} batch {batch}: PyTorch eager, ONNX Runtime fp32")
                group.append(bench_one(fp32_dir / "model.sim.onnx", manifest, "torch", run_settings,
                                       label=f"{variant} torch eager b{batch}"))
                if not (chosen == "onnxruntime" and "fp32" in precisions):  # else that row is the baseline
                    group.append(bench_one(fp32_dir / "model.sim.onnx", manifest, "onnxruntime", run_settings,
                                           label=f"{variant} fp32 onnxruntime (baseline) b{batch}"))
                start = len(results) - len(precisions)
                add_ratios(group + results[start:], group[0]["label"])
                results.extend(group)
    return results
