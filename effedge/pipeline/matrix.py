"""The bench matrix, as orchestration: compile every variant × precision × batch through the compile cache, then
bench each built target (:func:`effedge.bench.targets.bench_one`), with the baselines and speedups on request."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from effedge.bench.harness import BenchSettings
from effedge.bench.targets import bench_baselines, bench_one
from effedge.errors import EffedgeError
from effedge.pipeline.compile import CompileConfig, choose_backend, compile_model


def bench_matrix(variants: list[str], precisions: list[str], batches: list[int], *, backend: str,
                 settings: BenchSettings, nms: str = "auto", baselines: bool = False, image_size: Optional[int] = None,
                 log: Callable[[str], None] = lambda message: None, progress=None) -> list[dict]:
    """Compile what is missing (through the compile cache; every variant at ``image_size``, else its own), then
    bench every combination; with ``baselines``, also PyTorch eager and ONNX Runtime fp32 of each variant and
    batch, and speedups against eager."""
    if image_size is not None:  # a size some variant cannot take fails before anything is compiled
        from effedge.arch.scaling import resolve
        from effedge.arch.topology import input_size_for

        for variant in variants:
            input_size_for(resolve(variant), image_size)
    if backend == "torch":
        return _torch_matrix(variants, precisions, batches, settings=settings, image_size=image_size, log=log,
                             progress=progress)
    chosen = choose_backend(backend).name
    results = []
    for variant in variants:
        for batch in batches:
            run_settings = replace(settings, batch=batch)
            group, fp32_export = [], None
            for precision in precisions:
                manifest = compile_model(CompileConfig(variant=variant, precision=precision, batch=batch, nms=nms,
                                                       image_size=image_size, backend=chosen), log=log,
                                         progress=progress)
                out = Path(manifest["compile"]["out_dir"])
                fp32_export = fp32_export or (out / "model.sim.onnx", manifest)
                log(f"benchmarking {variant} {precision} batch {batch} on {chosen}")
                group.append(bench_one(out / manifest["compile"]["deployable"], manifest, chosen, run_settings))
            results.extend(group)
            if baselines:
                results.extend(bench_baselines(group, *fp32_export, run_settings, log=log))
    return results


def _torch_matrix(variants: list[str], precisions: list[str], batches: list[int], *, settings: BenchSettings,
                  image_size: Optional[int], log: Callable[[str], None], progress) -> list[dict]:
    """PyTorch eager per variant and batch: fp32 on the CPU, fp16 on a CUDA GPU (the model comes from the fp32
    ONNX Runtime build's manifest, through the compile cache)."""
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
                                                   image_size=image_size, backend="onnxruntime"), log=log,
                                     progress=progress)
            out = Path(manifest["compile"]["out_dir"])
            log(f"benchmarking {variant} {device_precision} batch {batch} on torch")
            results.append(bench_one(out / "model.sim.onnx", manifest, "torch", replace(settings, batch=batch)))
    return results
