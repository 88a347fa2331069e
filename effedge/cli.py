"""The ``effedge`` command line: parses arguments, calls the library, prints. No logic of its own."""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from effedge import __version__
from effedge.errors import EffedgeError


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, allow_nan=False))  # strict JSON: no Infinity/NaN for scripts


def _human(count: int | None, unit: str = "") -> str:
    if count is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= factor:
            return f"{count / factor:.2f}{suffix}{unit}"
    return f"{count}{unit}"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped/logged: don't squeeze columns into 80 characters
        console = Console(width=200)
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "backbone", "levels") else "right")
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="effedge")
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """effedge — compile EfficientNet / EfficientDet for Jetson and NVIDIA GPUs.

    \b
    Examples:
      effedge models                 the model zoo: φ, input size, params, MACs
      effedge info d0                the full scaled architecture of D0
      effedge info --phi 1.5         a custom compound coefficient
    """
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def models(as_json: bool) -> None:
    """List every named variant with its scaling, params and MACs.

    \b
    MACs are multiply-adds of convolutions and linear layers for one image at the
    variant's native resolution, as the papers count them.
    \b
    Examples:
      effedge models
      effedge models --json | jq '.[] | select(.family=="efficientdet") | .macs'
    """
    from effedge.zoo import model_table

    rows = model_table()
    if as_json:
        _print_json(rows)
        return
    _table("effedge model zoo", ["variant", "φ", "input", "width", "depth", "BiFPN ch", "BiFPN layers", "heads",
                                 "levels", "params", "MACs"],
           [[r["variant"], f"{r['phi']:g}", r["resolution"], f"{r['width']:g}", f"{r['depth']:g}",
             r["bifpn_channels"], r["bifpn_layers"], r["head_layers"], r["levels"], _human(r["params"]),
             _human(r["macs"])] for r in rows])


@cli.command()
@click.argument("variant", required=False)
@click.option("--phi", type=float, help="Custom compound coefficient φ (0–7) instead of a named variant.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(variant: str | None, phi: float | None, as_json: bool) -> None:
    """Print the full scaled architecture of VARIANT (b0..b7, d0..d7x) or of --phi X.

    \b
    Examples:
      effedge info d0
      effedge info --phi 1.5 --json
    """
    from effedge.zoo import architecture

    if (variant is None) == (phi is None):
        raise click.UsageError("give a VARIANT or --phi, not both and not neither")
    arch = architecture(variant if variant is not None else phi)
    if as_json:
        _print_json(arch)
        return
    lines = [f"{arch['variant']} ({arch['family']}, φ={arch['phi']:g}): input {arch['resolution']}, "
             f"params {_human(arch['params'])}, MACs {_human(arch['macs'])}"]
    bb = arch["backbone_stages"]
    lines.append(f"backbone {bb['name']}: width ×{bb['width']:.4g}, depth ×{bb['depth']:.4g}, "
                 f"stem {bb['stem_channels']} ch, head {bb['head_channels']} ch")
    if arch["bifpn_channels"]:
        lines.append(f"BiFPN: {arch['bifpn_channels']} ch × {arch['bifpn_layers']} layers, fusion {arch['fusion']}, "
                     f"levels {arch['levels']}; heads: {arch['head_layers']} layers")
        anchors = arch["anchors"]
        lines.append(f"anchors: {anchors['per_location']} per location (scale {anchors['scale']:g}), "
                     f"{anchors['total']} in all; pyramid "
                     + ", ".join(f"{p['level']} {p['size']}²" for p in arch["pyramid"]))
    click.echo("\n".join(lines))
    _table("backbone stages", ["stage", "block", "repeats", "kernel", "stride", "expansion", "in", "out", "SE",
                               "output"],
           [[s["stage"], s["block"], s["repeats"], s["kernel"], s["stride"], s["expansion"], s["in_channels"],
             s["out_channels"], s["se_channels"], f"{s['output_size']}²"] for s in bb["stages"]])


def _progress(message: str) -> None:
    click.echo(f"[effedge] {message}", err=True)


def _variant_arg(variant: str | None, phi: float | None) -> str | float:
    if (variant is None) == (phi is None):
        raise click.UsageError("give --variant or --phi (one of them)")
    return variant if variant is not None else phi


def _parse_dynamic_batch(value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        low, opt, high = (int(part) for part in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not MIN:OPT:MAX, e.g. 1:4:8", param_hint="--dynamic-batch")
    return low, opt, high


@cli.command()
@click.option("--variant", help="b0..b7, d0..d7x.")
@click.option("--phi", type=float, help="Custom compound coefficient φ (0–7) instead of --variant.")
@click.option("--weights", help="Checkpoint: .pth file, URL, or known name (tf_efficientdet_d0, …).")
@click.option("--num-classes", type=int, help="Classes of the head (default 90 for detectors, 1000 for classifiers).")
@click.option("--pad", type=click.Choice(["same", "symmetric"]), default="same", show_default=True,
              help="Checkpoint layout: TF-ported (same) or PyTorch-trained (symmetric).")
@click.option("--imgsz", type=int, help="Input size (square); default the variant's. Multiple of the largest stride.")
@click.option("--batch", type=int, default=1, show_default=True, help="Static batch size.")
@click.option("--dynamic-batch", metavar="MIN:OPT:MAX", help="Dynamic batch instead of --batch, e.g. 1:4:8.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (TensorRT 8.5/8.6 parse ≤ 17).")
@click.option("--nms", type=click.Choice(["none", "onnx", "efficientnms"]), default="none", show_default=True,
              help="NMS tail: none (decoded boxes + scores), onnx (NonMaxSuppression), efficientnms (TRT plugin).")
@click.option("--input-format", type=click.Choice(["float", "uint8"]), default="float", show_default=True,
              help="float: NCHW normalized; uint8: NHWC RGB 0-255, normalized in the graph.")
@click.option("--score-threshold", type=float, default=0.05, show_default=True, help="NMS score threshold.")
@click.option("--iou-threshold", type=float, default=0.5, show_default=True, help="NMS IoU threshold.")
@click.option("--max-detections", type=int, default=100, show_default=True, help="NMS detections kept (K).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory [default: runs/<variant>].")
@click.option("--json", "as_json", is_flag=True, help="Print the build manifest as JSON.")
def export(variant, phi, weights, num_classes, pad, imgsz, batch, dynamic_batch, opset, nms, input_format,
           score_threshold, iou_threshold, max_detections, out, as_json) -> None:
    """Export a model to ONNX (simplified, checked against PyTorch) with a build.json manifest.

    \b
    Examples:
      effedge export --variant d0
      effedge export --variant d0 --weights tf_efficientdet_d0 --nms efficientnms
      effedge export --phi 1.5 --dynamic-batch 1:4:8 --input-format uint8 --out runs/phi1.5
    """
    from effedge.export import ExportOptions, export as run_export
    from effedge.scaling import resolve

    target = _variant_arg(variant, phi)
    options = ExportOptions(image_size=imgsz, batch=batch, dynamic_batch=_parse_dynamic_batch(dynamic_batch),
                            opset=opset, nms=nms, input_format=input_format, score_threshold=score_threshold,
                            iou_threshold=iou_threshold, max_detections=max_detections)
    out_dir = out or f"runs/{resolve(target).name}"
    manifest = run_export(target, out_dir, weights=weights, num_classes=num_classes, pad=pad, options=options,
                          log=_progress)
    if as_json:
        _print_json(manifest)
        return
    graph = manifest["graph"]["simplified"]
    worst = max(manifest["parity"], key=lambda p: p["max_abs_diff"] / p["tolerance"])
    click.echo(f"{out_dir}/model.sim.onnx: {manifest['variant']} {manifest['resolution'][0]}x"
               f"{manifest['resolution'][1]}, opset {graph['opset']}, {graph['nodes']} nodes, "
               f"parity max |Δ| {worst['max_abs_diff']:.2e} ({worst['output']})")


def _rich_progress(items, total: int, description: str):
    """A progress bar on stderr for long library loops (effedge.precision.Progress)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[effedge] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total or None)
        for item in items:
            yield item
            bar.advance(task)


def _print_precision_report(report: dict) -> None:
    lines = [f"{report['file']}: {report['precision']}, opset {report['opset']}"]
    calibration = report.get("calibration")
    if calibration:
        lines.append(f"calibration: {calibration['method']} on {calibration['images']} images"
                     f"{' (cached)' if calibration['cached'] else ''}, {calibration['skipped']} skipped")
    qdq = report.get("qdq")
    if qdq:
        lines.append(f"Q/DQ: {qdq['convolutions_int8']}/{qdq['convolutions']} convolutions int8, "
                     f"{qdq['weights_per_channel_axis0']} per-channel weight quantizers (axis 0), "
                     f"{qdq['activation_quantizers']} per-tensor activation quantizers")
    if report.get("kept_fp16") is not None:
        lines.append("kept in fp16: " + (", ".join(report["kept_fp16"]) or "nothing (int8 met the target)"))
    fidelity = report["fidelity"]
    for name, figures in fidelity["outputs"].items():
        sqnr = "identical" if figures["sqnr_db"] is None else f"{figures['sqnr_db']:6.1f} dB"
        lines.append(f"  {name:15s} SQNR {sqnr}  cosine {figures['cosine']:.6f}")
    if "detections" in fidelity:
        d = fidelity["detections"]
        lines.append(f"  detections agree with fp32: F1 {d['f1']:.3f} (recall {d['recall']:.3f}, precision "
                     f"{d['precision']:.3f}; {d['fp32']} fp32 detections ≥ {d['score_threshold']}) on "
                     f"{fidelity['images']} held-out image(s)")
    click.echo("\n".join(lines))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--precision", type=click.Choice(["fp16", "int8", "mixed"]), required=True)
@click.option("--calib", "calib_dir", type=click.Path(), help="Folder of calibration images [default: calib/].")
@click.option("--calib-images", type=int, default=300, show_default=True,
              help="Calibration images taken (deterministic shuffled subset).")
@click.option("--holdout", type=int, help="Held-out images for the fidelity report [default: 20%, at most 16].")
@click.option("--calib-method", type=click.Choice(["entropy", "max", "percentile"]), default="entropy",
              show_default=True)
@click.option("--percentile", type=float, default=99.99, show_default=True, help="For --calib-method percentile.")
@click.option("--fidelity-target", type=float, default=20.0, show_default=True,
              help="mixed: worst raw-output SQNR (dB) on held-out images to reach.")
@click.option("--opset", type=int, help="Target opset; 17 for TensorRT 8.5/8.6 (non-quantized part stays fp32).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory [default: the model's].")
@click.option("--json", "as_json", is_flag=True, help="Print the precision report as JSON.")
def quantize(model, precision, calib_dir, calib_images, holdout, calib_method, percentile, fidelity_target, opset,
             out, as_json) -> None:
    """Write MODEL's precision into the graph: fp16, int8 (Q/DQ) or mixed int8/fp16.

    \b
    Examples:
      effedge quantize runs/d0/model.sim.onnx --precision int8 --calib ~/images
      effedge quantize runs/d0/model.sim.onnx --precision mixed --fidelity-target 25
      effedge quantize runs/d0/model.sim.onnx --precision fp16
    """
    from pathlib import Path

    from effedge.precision import PrecisionOptions, convert

    options = PrecisionOptions(precision=precision, calib_dir=Path(calib_dir) if calib_dir else None,
                               calib_images=calib_images, holdout=holdout, method=calib_method,
                               percentile=percentile, fidelity_target=fidelity_target, opset=opset)
    report = convert(model, out, options=options, log=_progress, progress=_rich_progress)
    if as_json:
        _print_json(report)
    else:
        _print_precision_report(report)


@cli.command("compile")
@click.option("--variant", help="b0..b7, d0..d7x.")
@click.option("--phi", type=float, help="Custom compound coefficient φ (0–7) instead of --variant.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "mixed"]), default="fp16", show_default=True)
@click.option("--weights", help="Checkpoint: .pth file, URL, or known name (tf_efficientdet_d0, …).")
@click.option("--num-classes", type=int, help="Classes of the head (default 90 / 1000).")
@click.option("--pad", type=click.Choice(["same", "symmetric"]), default="same", show_default=True)
@click.option("--imgsz", type=int, help="Input size (square); default the variant's.")
@click.option("--batch", type=int, default=1, show_default=True, help="Static batch size.")
@click.option("--dynamic-batch", metavar="MIN:OPT:MAX", help="Dynamic batch instead of --batch.")
@click.option("--nms", type=click.Choice(["auto", "none", "onnx", "efficientnms"]), default="auto", show_default=True,
              help="auto: efficientnms on TensorRT, onnx on ONNX Runtime, none on TensorRT-RTX (NMS in the Detector).")
@click.option("--input-format", type=click.Choice(["float", "uint8"]), default="float", show_default=True)
@click.option("--calib", "calib_dir", type=click.Path(), help="Calibration images for int8/mixed [default: calib/].")
@click.option("--calib-images", type=int, default=300, show_default=True)
@click.option("--calib-method", type=click.Choice(["entropy", "max", "percentile"]), default="entropy",
              show_default=True)
@click.option("--fidelity-target", type=float, default=20.0, show_default=True, help="mixed: SQNR target (dB).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx", "onnxruntime"]), default="auto",
              show_default=True, help="auto: TensorRT where it and a GPU are present, else ONNX Runtime on the CPU. "
              "tensorrt-rtx builds ahead of time, also on a machine without a GPU.")
@click.option("--compute-capability", "compute_capabilities", metavar="CC[,CC…]",
              help="tensorrt-rtx: GPUs to build for, e.g. 8.6,8.9 [default: TensorRT-RTX's own set].")
@click.option("--dla", "dla_core", type=int, help="Build for DLA core N (Jetson AGX Orin / Orin NX), GPU fallback on.")
@click.option("--workspace", "workspace_mb", type=int, help="TensorRT workspace limit in MiB.")
@click.option("--opt-level", "optimization_level", type=click.IntRange(0, 5), help="TensorRT builder optimization level.")
@click.option("--out", type=click.Path(file_okay=False), help="Build directory [default: runs/<variant>-<precision>-…].")
@click.option("--force", is_flag=True, help="Rebuild even when the cache says the build is up to date.")
@click.option("--profile", "profile_name", help="Compile the model `effedge select` picks for this profile, "
              "with its precision and batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the build manifest as JSON.")
def compile_command(variant, phi, precision, weights, num_classes, pad, imgsz, batch, dynamic_batch, nms,
                    input_format, calib_dir, calib_images, calib_method, fidelity_target, backend,
                    compute_capabilities, dla_core, workspace_mb, optimization_level, out, force, profile_name,
                    as_json) -> None:
    """Compile a model end to end: build, export, simplify, precision, NMS, engine.

    \b
    Uses TensorRT when it is installed and sees a GPU, else ONNX Runtime on the CPU
    (the deployable is then the final ONNX graph). An unchanged re-run is a cache hit.
    \b
    Examples:
      effedge compile --variant d0 --precision int8
      effedge compile --variant d2 --precision mixed --calib ~/site-images --fidelity-target 25
      effedge compile --phi 1.5 --precision fp16 --dynamic-batch 1:4:8 --backend tensorrt
      effedge compile --variant d0 --precision int8 --backend tensorrt-rtx --compute-capability 8.6,8.9
    """
    from effedge.pipeline import CompileConfig, compile_model

    if profile_name:
        from effedge.latency import select
        from effedge.profiles import load_profile

        if variant or phi is not None:
            raise click.UsageError("--profile chooses the variant; drop --variant/--phi")
        context = click.get_current_context()
        explicit = [f"--{name.replace('_', '-')}" for name in ("precision", "batch")
                    if context.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if explicit:  # the profile's choice was made for its own precision and batch
            raise click.UsageError(f"--profile sets the precision and batch it was selected for; drop "
                                   f"{' and '.join(explicit)}, or compile without --profile")
        prof = load_profile(profile_name)
        _, choice = select(prof, log=_progress)
        if choice is None:
            raise click.ClickException(f"no candidate meets {prof.name}'s budget of {prof.target.latency_ms:g} ms")
        _progress(f"profile {prof.name}: compiling {choice.name} ({choice.predicted_ms:.1f} ms {choice.source})")
        variant, phi, precision, batch = (choice.name if choice.name[0] == "d" else None,
                                          None if choice.name[0] == "d" else choice.phi,
                                          prof.target.precision, prof.target.batch)
        backend = backend if backend != "auto" else prof.software.backend
    config = CompileConfig(
        variant=_variant_arg(variant, phi), precision=precision, weights=weights, num_classes=num_classes, pad=pad,
        image_size=imgsz, batch=batch, dynamic_batch=_parse_dynamic_batch(dynamic_batch), nms=nms,
        input_format=input_format, calib_dir=calib_dir, calib_images=calib_images, calib_method=calib_method,
        fidelity_target=fidelity_target, backend=backend, dla_core=dla_core, workspace_mb=workspace_mb,
        optimization_level=optimization_level,
        compute_capabilities=tuple(_split(compute_capabilities)) or None)
    manifest = compile_model(config, out, force=force, log=_progress, progress=_rich_progress)
    if as_json:
        _print_json(manifest)
        return
    info = manifest["compile"]
    state = "cache hit" if info["cache_hit"] else f"built in {info['total_seconds']:.1f} s"
    click.echo(f"{manifest['variant']} {manifest['precision']} on {manifest['backend']} (nms {manifest['nms']}): "
               f"{state}\n  deployable: {info['deployable']}")


@cli.command("build")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt", show_default=True,
              help="tensorrt-rtx builds ahead of time, also on a machine without a GPU.")
@click.option("--compute-capability", "compute_capabilities", metavar="CC[,CC…]",
              help="tensorrt-rtx: GPUs to build for, e.g. 8.6,8.9 [default: TensorRT-RTX's own set].")
@click.option("--out", type=click.Path(dir_okay=False), help="Engine file [default: MODEL with .engine].")
@click.option("--dynamic-batch", metavar="MIN:OPT:MAX", help="Profile for a dynamic batch dimension.")
@click.option("--dla", "dla_core", type=int, help="DLA core (GPU fallback on).")
@click.option("--workspace", "workspace_mb", type=int, help="Workspace limit in MiB.")
@click.option("--opt-level", "optimization_level", type=click.IntRange(0, 5), help="Builder optimization level.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file to load and update.")
@click.option("--version-compatible", is_flag=True, help="Engine runs on later TensorRT versions too.")
@click.option("--hardware-compatible", is_flag=True, help="Engine runs on any Ampere or newer GPU.")
@click.option("--json", "as_json", is_flag=True, help="Print the engine's build.json entry as JSON.")
def build_command(model, backend, compute_capabilities, out, dynamic_batch, dla_core, workspace_mb,
                  optimization_level, timing_cache, version_compatible, hardware_compatible, as_json) -> None:
    """Build an engine from MODEL.onnx (the engine stage alone, e.g. on a Jetson), recorded in the
    build.json beside it (one entry per engine file).

    \b
    Examples:
      effedge build runs/d0-int8/model.int8.onnx
      effedge build model.fp16.onnx --dla 0 --timing-cache ~/.cache/orin.timing
      effedge build model.fp16.onnx --backend tensorrt-rtx --compute-capability 8.9
    """
    from pathlib import Path

    from effedge.pipeline import build_engine_file

    source = Path(model)
    if not source.is_file():
        raise click.UsageError(f"{source} does not exist")
    report = build_engine_file(source, Path(out) if out else None, backend=backend,
                               compute_capabilities=tuple(_split(compute_capabilities)) or None,
                               dynamic_batch=_parse_dynamic_batch(dynamic_batch), dla_core=dla_core,
                               workspace_mb=workspace_mb, optimization_level=optimization_level,
                               timing_cache=Path(timing_cache) if timing_cache else None,
                               version_compatible=version_compatible, hardware_compatible=hardware_compatible,
                               log=_progress)
    if as_json:
        _print_json(report)
        return
    layers = report.get("layers") or {}
    click.echo(f"{report['file']}: {report['product']} {report['version']}, {report['precision']}, built in "
               f"{report['seconds']} s, {report['bytes'] / 2**20:.1f} MiB"
               + (f", {layers['layers']} layers ({layers['reformat_layers']} reformat)" if layers.get("layers") else ""))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(as_json: bool) -> None:
    """What this machine can do: component versions, GPU, backends and precisions, and why not.

    \b
    Example:
      effedge doctor
    """
    from effedge.doctor import diagnose

    report = diagnose()
    if as_json:
        _print_json(report)
        return
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v))
    click.echo(f"GPU: {report['gpu'] or 'none — ' + report['gpu_reason']}")
    for backend in report["backends"]:
        status = "available" if backend["available"] else "unavailable"
        click.echo(f"{backend['name']:12s} {status:12s} precisions: {', '.join(backend['precisions']) or '-'}"
                   + (f" — {backend['reason']}" if backend["reason"] else ""))


def _split(value: str | None, cast=str) -> list:
    return [cast(part.strip()) for part in value.split(",") if part.strip()] if value else []


@cli.command("bench")
@click.argument("target", required=False)
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt", "torch"]), default="auto",
              show_default=True, help="auto: from the target (engine -> tensorrt, ONNX -> onnxruntime).")
@click.option("--variants", help="Matrix: comma-separated variants (compiled through the cache), e.g. d0,d1.")
@click.option("--precisions", default="fp32", show_default=True, help="Matrix: fp32,fp16,int8,mixed.")
@click.option("--batch", "batches", default="1", show_default=True, help="Batch size(s), comma-separated.")
@click.option("--nms", type=click.Choice(["none", "onnx", "efficientnms", "auto"]), default="none",
              show_default=True, help="Matrix: NMS tail compiled into the models.")
@click.option("--baselines", is_flag=True, help="Also PyTorch eager and ONNX Runtime fp32, with speedups.")
@click.option("--warmup", type=float, default=1.0, show_default=True, help="Warm-up seconds.")
@click.option("--duration", type=float, default=3.0, show_default=True, help="Minimum measured seconds.")
@click.option("--iterations", type=int, default=20, show_default=True, help="Minimum measured iterations.")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay a captured CUDA graph (default off).")
@click.option("--no-transfers", is_flag=True, help="TensorRT: leave H2D/D2H copies out of the loop (default in).")
@click.option("--end-to-end", "images_dir", type=click.Path(), help="Folder of images: time decode + letterbox + "
              "inference + decode/NMS, per stage.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the results as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write latency-vs-φ and "
              "throughput-vs-latency plots (PNG).")
def bench_command(target, backend, variants, precisions, batches, nms, baselines, warmup, duration, iterations,
                  cuda_graph, no_transfers, images_dir, as_json, markdown, csv_path, plot_path) -> None:
    """Benchmark TARGET (an engine, an ONNX file or a build directory) or a matrix of variants.

    \b
    Defaults: 1 s warm-up, then at least 20 iterations and 3 s; latency is host wall time
    per inference (TensorRT adds CUDA-event H2D/compute/D2H and enqueue time).
    \b
    Examples:
      effedge bench runs/d0-int8-onnxruntime-1a2b3c4d --baselines
      effedge bench model.int8.engine --cuda-graph --json
      effedge bench --variants d0,d1 --precisions fp32,fp16,int8 --csv bench.csv --plot bench.png
      effedge bench runs/d0-fp16-tensorrt-… --end-to-end ~/images
    """
    from pathlib import Path

    from effedge import bench
    from effedge.bench_report import plot, rows, to_csv, to_markdown
    from effedge.bench_targets import add_ratios, bench_matrix, bench_one, resolve_target
    from effedge.calib import find_images

    batch_list = _split(batches, int)
    settings = bench.BenchSettings(warmup_s=warmup, min_iterations=iterations, min_duration_s=duration,
                                   cuda_graph=cuda_graph, transfers=not no_transfers, batch=batch_list[0])
    images = find_images(images_dir) if images_dir else None
    if variants:
        if target:
            raise click.UsageError("give a TARGET or --variants, not both")
        results = bench_matrix(_split(variants), _split(precisions), batch_list, backend=backend,
                               settings=settings, nms=nms, baselines=baselines, log=_progress,
                               progress=_rich_progress)
    elif target:
        path, manifest = resolve_target(target)
        chosen = backend if backend != "auto" else ("onnxruntime" if path.suffix == ".onnx" else "tensorrt")
        results = []
        for batch in batch_list:
            run = dataclasses.replace(settings, batch=batch)
            _progress(f"benchmarking {path.name} on {chosen}, batch {batch}")
            results.append(bench_one(path, manifest, chosen, run, end_to_end=images))
            if baselines:
                if not manifest:
                    raise click.UsageError("--baselines needs the build.json next to the target")
                reference = bench_one(path, manifest, "torch", run, label=f"{manifest['variant']} torch eager b{batch}")
                source = path.parent / "model.sim.onnx"
                group = [reference, results[-1]]
                if chosen != "onnxruntime" or path.name != source.name:
                    group.append(bench_one(source, manifest, "onnxruntime", run,
                                           label=f"{manifest['variant']} fp32 onnxruntime (baseline) b{batch}"))
                add_ratios(group, reference["label"])
                results.extend(group[:1] + group[2:])
    else:
        raise click.UsageError("give a TARGET (engine, ONNX file, build directory) or --variants")
    if csv_path:
        Path(csv_path).write_text(to_csv(results))
    if plot_path:
        plot(results, Path(plot_path))
    if as_json:
        _print_json(results)
        return
    if markdown:
        click.echo(to_markdown(results))
    else:
        from effedge.bench_report import COLUMNS

        _table("effedge bench", COLUMNS, rows(results))
    for result in results:
        for note in result["warnings"]:
            click.echo(f"warning ({result['label']}): {note}", err=True)
        if "stages_ms" in result:
            click.echo(f"{result['label']} stages (median ms): " + ", ".join(
                f"{k} {v['median']:.2f}" for k, v in result["stages_ms"].items()))
        for key, value in result.items():
            reference = key.removeprefix("speedup_vs_")
            if key.startswith("speedup_vs_") and result["backend"] != reference:
                click.echo(f"{result['label']}: {value:.2f}× as fast as {reference} (median latency)")


@cli.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--ray", "ray_address", metavar="auto|local|ADDRESS",
              help="Run on Ray: local (a cluster on this machine, one resource per device), auto (the running "
                   "cluster) or a head ADDRESS. Default: in this process, on this machine.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write the results as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write latency and throughput plots (PNG).")
@click.option("--fit", is_flag=True, help="Fit every device's profile from its own results.")
def sweep_command(sweep_file, ray_address, as_json, csv_path, plot_path, fit) -> None:
    """Measure every model × precision × batch of SWEEP_FILE on every device it names.

    \b
    Only cells not measured before run (results are cached by artefact, device and bench settings).
    Exit code 1 when a cell failed, 130 on Ctrl-C (finished cells stay cached).
    \b
    Examples:
      effedge sweep examples/sweep-local.yaml
      effedge sweep examples/sweep-local.yaml --ray local --json
      effedge sweep fleet.yaml --ray auto --csv fleet.csv --plot fleet.png --fit
    """
    from effedge import fleet

    spec = fleet.load_sweep(sweep_file)
    try:
        with fleet.console_progress() as progress:
            report = fleet.run_sweep(spec, ray=ray_address, fit=fit, progress=progress, log=_progress)
    except KeyboardInterrupt as exc:
        click.echo(f"error: {exc or 'interrupted'}", err=True)
        sys.exit(130)
    fleet.write_outputs(report, csv_path, plot_path)
    if as_json:
        _print_json(report.to_json())
    else:
        _table(f"effedge sweep {sweep_file} ({report.executor}, {report.wall_s:.1f} s)", fleet.COLUMNS,
               fleet.rows(report))
        for device, result in report.fits.items():
            fitted = result["fitted"]
            click.echo(f"fitted {result['profile']} ({device}): compute scale {fitted['compute_scale']:.3g}, "
                       f"{fitted['fitted_on']} points" if fitted else f"{device}: not fitted ({result['reason']})")
    if report.failed:
        click.echo(f"error: {len(report.failed)} of {len(report.cells)} cells failed (reasons in the results)",
                   err=True)
        sys.exit(1)


@cli.group()
def profile() -> None:
    """Latency profiles (profiles/*.yaml): list, check, and fit them to measurements.

    \b
    Examples:
      effedge profile list
      effedge profile fit cpu-local d0.json d1.json d2.json
    """


@profile.command("list")
def profile_list() -> None:
    """Validate and list the shipped profiles."""
    from effedge.profiles import all_profiles, load_profile

    rows = []
    for path in all_profiles():
        p = load_profile(path)
        rows.append([p.name, p.device.name, p.software.backend, f"{p.target.latency_ms:g}", p.target.percentile,
                     p.target.precision, "fitted" if p.efficiency else "priors"])
    _table("profiles", ["profile", "device", "backend", "budget ms", "percentile", "precision", "model"], rows)


@profile.command("fit")
@click.argument("name")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def profile_fit(name, results) -> None:
    """Fit profile NAME's efficiency factors to `effedge bench --json` RESULTS and store the measured points."""
    from effedge.latency import fit_profile

    fitted, errors = fit_profile(name, list(results))
    click.echo(f"fitted {name}: compute scale {fitted['compute_scale']:.3g}, memory scale "
               f"{fitted['memory_scale']:.3g}, overhead {fitted['overhead_us']:.3g} µs/layer "
               f"({fitted['fitted_on']} points, rms log error {fitted['fit_rms_log_error']:.3f})")
    for variant, measured, predicted in errors:
        click.echo(f"  {variant}: measured {measured:.2f} ms, model {predicted:.2f} ms "
                   f"({(predicted / measured - 1) * 100:+.1f} %)")


@cli.command("select")
@click.option("--profile", "profile_name", required=True, help="Profile name (profiles/NAME.yaml) or file.")
@click.option("--latency-ms", type=float, help="Latency budget instead of the profile's.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "mixed"]), help="Instead of the profile's.")
@click.option("--step", type=float, default=0.5, show_default=True, help="φ grid step for custom candidates.")
@click.option("--verify", is_flag=True, help="Compile and benchmark the choice; step down while it misses.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def select_command(profile_name, latency_ms, precision, step, verify, as_json) -> None:
    """Choose the largest EfficientDet (named or fractional φ) that meets a profile's latency budget.

    \b
    Examples:
      effedge select --profile orin-nx-16gb
      effedge select --profile cpu-local --latency-ms 150 --verify
    """
    from dataclasses import asdict

    from effedge.latency import select, verify_choice
    from effedge.profiles import load_profile

    prof = load_profile(profile_name)
    candidates, choice = select(prof, latency_ms=latency_ms, precision=precision, step=step, log=_progress)
    budget = latency_ms or prof.target.latency_ms
    verification = verify_choice(prof, candidates, choice, budget, precision or prof.target.precision,
                                 log=_progress) if verify else None
    if as_json:
        _print_json({"profile": prof.name, "budget_ms": budget, "candidates": [asdict(c) for c in candidates],
                     "choice": asdict(choice) if choice else None, "verification": verification})
        return
    _table(f"{prof.name}: budget {budget:g} ms at {prof.target.percentile} (margin {prof.target.margin:.0%})",
           ["candidate", "φ", "input", "GMACs", "ms", "source", "fits"],
           [[c.name, f"{c.phi:g}", c.resolution, f"{c.macs / 1e9:.2f}", f"{c.predicted_ms:.1f}", c.source,
             "yes" if c.fits else "no"] for c in candidates])
    click.echo(f"choice: {choice.name} (φ={choice.phi:g}, {choice.resolution}px)" if choice else
               "no candidate fits the budget")
    if verification:
        for step_result in verification["steps"]:
            click.echo(f"  measured {step_result['name']}: {step_result['measured_ms']:.1f} ms "
                       f"({'within' if step_result['within_budget'] else 'over'} {budget:g} ms)")
        click.echo(f"verified choice: {verification['choice']}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default="runs/detect", show_default=True,
              help="Folder for annotated images and detections.json.")
@click.option("--score", type=float, default=0.3, show_default=True, help="Score threshold.")
@click.option("--iou", type=float, default=0.5, show_default=True, help="NMS IoU threshold (graphs without NMS).")
@click.option("--json", "as_json", is_flag=True, help="Print the detections as JSON.")
def detect(model, images, out, score, iou, as_json) -> None:
    """Detect objects in IMAGES with MODEL (an engine or ONNX file) and draw them.

    \b
    Examples:
      effedge detect runs/d0-fp16-onnxruntime-…/model.fp16.onnx street.jpg park.png
      effedge detect model.int8.engine photos/*.jpg --score 0.5 --out annotated
    """
    from pathlib import Path

    from effedge.artifacts import write_json
    from effedge.runtime import Detector, draw

    out_dir = Path(out)
    with Detector(model, score_threshold=score, iou_threshold=iou) as detector:
        results = detector([Path(p) for p in images])
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for path, detections in zip(images, results):
        target = out_dir / (Path(path).stem + ".jpg")
        draw(Path(path), detections, target)
        report.append({"image": str(path), "annotated": str(target), "detections": detections.to_list()})
    write_json(out_dir / "detections.json", report)
    if as_json:
        _print_json(report)
        return
    for entry in report:
        click.echo(f"{entry['image']}: {len(entry['detections'])} detection(s) -> {entry['annotated']}")


@cli.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--images", "images_dir", required=True, type=click.Path(file_okay=False), help="Image folder.")
@click.option("--annotations", required=True, type=click.Path(dir_okay=False), help="COCO instances JSON.")
@click.option("--compare", "others", multiple=True, type=click.Path(dir_okay=False),
              help="More models (e.g. other precisions) to evaluate into the same table; repeat the option.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(model, images_dir, annotations, others, as_json) -> None:
    """COCO mAP of MODEL (engine or ONNX) on an annotated image folder.

    \b
    Examples:
      effedge eval runs/d0-fp32-…/model.fp32.onnx --images val/images --annotations val/instances.json
      effedge eval model.fp32.onnx --compare model.fp16.onnx --compare model.int8.onnx --images … --annotations …
    """
    from effedge.evaluate import EVAL_SCORE_THRESHOLD, METRICS, evaluate
    from effedge.runtime import Detector

    rows = []
    for path in (model, *others):
        _progress(f"evaluating {path}")
        with Detector(path, score_threshold=EVAL_SCORE_THRESHOLD) as detector:
            rows.append({"model": path, **evaluate(detector, images_dir, annotations, progress=_rich_progress)})
    if as_json:
        _print_json(rows)
        return
    _table("COCO bbox evaluation", ["model", *METRICS, "images", "detections"],
           [[r["model"], *(f"{r[m]:.3f}" for m in METRICS), r["images"], r["detections"]] for r in rows])


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EffedgeError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
