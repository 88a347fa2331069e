"""effedge bench: trtexec-style benchmarks of one model or a matrix."""
from __future__ import annotations

import dataclasses
import click

from effedge.cli.main import cli
from effedge.cli.options import (FiniteFloatRange, ImageFolder, IntList, MAX_BATCH, image_size_option, print_json,
                                 progress, rich_progress, split_list, table)


@cli.command("bench")
@click.argument("target", required=False)
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt", "tensorrt-rtx", "torch"]),
              default="auto", show_default=True, help="auto: from the target (ONNX -> onnxruntime; engine -> "
              "tensorrt or tensorrt-rtx, whichever built it according to its build.json).")
@click.option("--variants", help="Matrix: comma-separated variants (compiled through the cache), e.g. d0,d1.")
@click.option("--precisions", default="fp32", show_default=True, help="Matrix: fp32,fp16,int8,mixed.")
@click.option("--batch", "batches", type=IntList(1, MAX_BATCH), default="1", show_default=True,
              help="Batch size(s), comma-separated.")
@click.option("--nms", type=click.Choice(["auto", "none", "onnx", "efficientnms"]), default="auto",
              show_default=True, help="Matrix: NMS tail compiled into the models (auto: as compile picks it, so the "
              "matrix reuses compile's cache).")
@image_size_option("Matrix: every variant at this input size (square) instead of its own; a multiple of the "
                   "largest stride.")
@click.option("--baselines", is_flag=True, help="Also PyTorch eager and ONNX Runtime fp32, with speedups.")
@click.option("--warmup", type=FiniteFloatRange(0, 3600), default=1.0, show_default=True, help="Warm-up seconds.")
@click.option("--duration", type=FiniteFloatRange(0, 3600), default=3.0, show_default=True, help="Minimum measured seconds.")
@click.option("--iterations", type=click.IntRange(1, 10_000_000), default=20, show_default=True, help="Minimum measured iterations.")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay a captured CUDA graph (default off).")
@click.option("--no-transfers", is_flag=True, help="GPU backends: leave H2D/D2H copies out of the loop (default in).")
@click.option("--end-to-end", "images_dir", type=ImageFolder(), help="Folder of images: time decode + letterbox + "
              "inference + decode/NMS, per stage.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the results as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write latency-vs-φ and "
              "throughput-vs-latency plots (PNG).")
def bench_command(target, backend, variants, precisions, batches, nms, imgsz, baselines, warmup, duration, iterations,
                  cuda_graph, no_transfers, images_dir, as_json, markdown, csv_path, plot_path) -> None:
    """Benchmark TARGET (an engine, an ONNX file or a build directory) or a matrix of variants.

    \b
    Defaults: 1 s warm-up, then at least 20 iterations and 3 s; latency is host wall time
    per inference (TensorRT adds CUDA-event H2D/compute/D2H and enqueue time, torch on CUDA
    H2D/compute/D2H).
    \b
    Examples:
      effedge bench runs/d0-int8-onnxruntime-1a2b3c4d --baselines
      effedge bench model.int8.engine --cuda-graph --json
      effedge bench --variants d0,d1 --precisions fp32,fp16,int8 --csv bench.csv --plot bench.png
      effedge bench --variants d0,d1,d2 --imgsz 384
      effedge bench runs/d0-fp16-tensorrt-… --end-to-end ~/images
    """
    from pathlib import Path

    from effedge.bench import harness as bench
    from effedge.bench.report import columns, plot, rows, to_csv, to_markdown
    from effedge.bench.targets import auto_backend, bench_baselines, bench_one, first_run_text, resolve_target
    from effedge.pipeline import bench_matrix
    from effedge.quantize.images import find_images
    from effedge.runtime.labels import random_weights_warning

    settings = bench.BenchSettings(warmup_s=warmup, min_iterations=iterations, min_duration_s=duration,
                                   cuda_graph=cuda_graph, transfers=not no_transfers, batch=batches[0])
    images = find_images(images_dir) if images_dir else None
    if variants:
        if target:
            raise click.UsageError("give a TARGET or --variants, not both")
        results = bench_matrix(split_list(variants), split_list(precisions), batches, backend=backend,
                               settings=settings, nms=nms, baselines=baselines, image_size=imgsz, log=progress,
                               progress=rich_progress)
    elif target:
        if imgsz:
            raise click.UsageError("--imgsz sizes the --variants matrix; a TARGET was built at its own size")
        path, manifest = resolve_target(target, backend)
        if random_weights_warning(manifest, timing=True):
            progress(f"warning: {random_weights_warning(manifest, timing=True)}")
        chosen = backend if backend != "auto" else auto_backend(path, manifest)
        results = []
        for batch in batches:
            run = dataclasses.replace(settings, batch=batch)
            progress(f"benchmarking {path.name} on {chosen}, batch {batch}")
            results.append(bench_one(path, manifest, chosen, run, end_to_end=images))
            if baselines:
                if not manifest:
                    raise click.UsageError("--baselines needs the build.json next to the target")
                results.extend(bench_baselines(results[-1:], path.parent / "model.sim.onnx", manifest, run))
    else:
        raise click.UsageError("give a TARGET (engine, ONNX file, build directory) or --variants")
    if csv_path:
        Path(csv_path).write_text(to_csv(results))
    if plot_path:
        plot(results, Path(plot_path))
    if as_json:
        print_json(results)
        return
    if markdown:
        click.echo(to_markdown(results))
    else:
        table("effedge bench", columns(results), rows(results))
    for result in results:
        for note in result["warnings"]:
            click.echo(f"warning ({result['label']}): {note}", err=True)
        if not markdown:  # the Markdown output stays a table
            click.echo(f"{result['label']} first run (not in the statistics): {first_run_text(result['first_run'])}")
        if "stages_ms" in result:
            click.echo(f"{result['label']} stages (median ms): " + ", ".join(
                f"{k} {v['median']:.2f}" for k, v in result["stages_ms"].items()))
        for key, value in result.items():
            reference = key.removeprefix("speedup_vs_")
            if key.startswith("speedup_vs_") and result["backend"] != reference:
                click.echo(f"{result['label']}: {value:.2f}× as fast as {reference} (median latency)")
