"""effedge export, quantize, compile, build: the stages, alone or in order."""
from __future__ import annotations

import click

from effedge.cli.main import cli
from effedge.cli.options import (CALIB_METHOD_HELP, CALIB_METHODS, DEFAULT_CALIB_METHOD, INPUT_FORMAT_HELP,
                                 INPUT_FORMATS, OPSET_RANGE, DynamicBatch, FiniteFloatRange, ImageFolder, InputFile,
                                 model_options, print_json, qad_options, progress, rich_progress, split_list,
                                 threshold, variant_arg)


@cli.command()
@model_options
@click.option("--opset", type=click.IntRange(*OPSET_RANGE), default=17, show_default=True,
              help="ONNX opset (TensorRT 8.5/8.6 parse ≤ 17).")
@click.option("--nms", type=click.Choice(["auto", "none", "onnx", "efficientnms"]), default="auto", show_default=True,
              help="NMS tail in model.fp32.onnx: none (decoded boxes + scores), onnx (NonMaxSuppression), "
              "efficientnms (TRT plugin); auto: what compile picks for this machine's backend.")
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="float", show_default=True,
              help=INPUT_FORMAT_HELP)
@click.option("--score-threshold", type=threshold(zero_ok=True, one_ok=False), default=0.05, show_default=True,
              help="NMS score threshold.")
@click.option("--iou-threshold", type=threshold(zero_ok=False, one_ok=True), default=0.5, show_default=True,
              help="NMS IoU threshold.")
@click.option("--max-detections", type=click.IntRange(1, 10_000), default=100, show_default=True, help="NMS detections kept (K).")
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
    from effedge.export.onnx_export import ExportOptions, export as run_export
    from effedge.arch.scaling import resolve

    from effedge.pipeline.compile import choose_backend, resolve_nms
    from effedge.demo import DEMO_NAME, resolve_demo

    class_names = None
    if weights == DEMO_NAME:  # the shipped detector fixes the model; a differing option is refused
        demo = resolve_demo(variant if variant is not None else phi, imgsz, num_classes)
        variant, phi, imgsz, num_classes, weights, class_names = (demo.variant, None, demo.image_size,
                                                                  demo.num_classes, str(demo.weights), demo.class_names)
    target = variant_arg(variant, phi)
    if nms == "auto":
        nms = resolve_nms(nms, choose_backend("auto").name, resolve(target).family == "efficientdet")
    options = ExportOptions(image_size=imgsz, batch=batch, dynamic_batch=dynamic_batch,
                            opset=opset, nms=nms, input_format=input_format, score_threshold=score_threshold,
                            iou_threshold=iou_threshold, max_detections=max_detections)
    out_dir = out or f"runs/{resolve(target).name}"
    manifest = run_export(target, out_dir, weights=weights, num_classes=num_classes, pad=pad, options=options,
                          class_names=class_names, log=progress)
    if as_json:
        print_json(manifest)
        return
    graph = manifest["graph"]["simplified"]
    worst = max(manifest["parity"], key=lambda p: p["max_abs_diff"] / p["tolerance"])
    click.echo(f"{out_dir}/model.sim.onnx: {manifest['variant']} {manifest['resolution'][0]}x"
               f"{manifest['resolution'][1]}, opset {graph['opset']}, {graph['nodes']} nodes, "
               f"parity max |Δ| {worst['max_abs_diff']:.2e} ({worst['output']})")



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
        blocks = len(report.get("sensitivity", []))
        high = report.get("high_precision", {}).get("dtype", "fp16")
        if blocks:
            lines.append(f"kept in {high} ({len(report['kept_fp16'])} of {blocks} blocks): "
                         + (", ".join(report["kept_fp16"]) or "nothing"))
        elif report.get("fidelity_target_met"):
            lines.append(f"kept in {high}: nothing (int8 alone met the target; blocks not ranked)")
        else:
            lines.append(f"kept in {high}: nothing (no block ranked)")
        if qdq and qdq.get("int8_groups"):
            lines.append("int8: " + ", ".join(f"{group} ({count} conv)" for group, count in qdq["int8_groups"]))
    fidelity = report["fidelity"]
    lines.append(f"fidelity against fp32 on {_held_out(report)}:")
    for name, figures in fidelity["outputs"].items():
        if figures.get("nonfinite"):
            lines.append(f"  {name:15s} FAILED: {figures['nonfinite']} non-finite values where fp32 is finite")
            continue
        sqnr = "identical" if figures["sqnr_db"] is None else f"{figures['sqnr_db']:6.1f} dB"
        lines.append(f"  {name:15s} SQNR {sqnr}  cosine {figures['cosine']:.6f}")
    d = fidelity.get("detection_agreement")
    if d:
        lines.append(f"  detections agree with fp32: F1 {d['f1']:.3f} (recall {d['recall']:.3f}, precision "
                     f"{d['precision']:.3f}; {d['fp32']} fp32 detections ≥ {d['score_threshold']})")
    elif "detection_agreement_note" in fidelity:
        lines.append(f"  detection agreement not reported: {fidelity['detection_agreement_note']}")
    classes = _class_agreement(fidelity)
    if classes:
        lines.append(f"  classes agree with fp32: {classes}" + (f" ({fidelity['class_agreement_note']})"
                                                                 if "class_agreement_note" in fidelity else ""))
    click.echo("\n".join(lines))


def _class_agreement(fidelity: dict) -> str | None:
    """A classifier's agreement with fp32 in words: top-1 and the mean KL divergence of the softmax."""
    c = fidelity.get("class_agreement")
    if not c:
        return None
    kl = "∞" if c["kl_divergence"] is None else f"{c['kl_divergence']:.4g}"
    return f"top-1 {c['top1']:.3f} of {c['images']} view(s), mean KL {kl} nats"


def _held_out(report: dict) -> str:
    held = report.get("holdout") or {}
    return (f"{report['fidelity'].get('images', 0)} held-out view(s) of {held.get('photos', 0)} photo(s) "
            f"({held.get('views_per_photo', 0)} crops/mirrors each)")


def _fidelity_summary(report: dict | None) -> str | None:
    """compile's one line on fidelity: the worst raw-output SQNR and the detection agreement, or why none."""
    if not report:
        return None
    from effedge.quantize.fidelity import min_sqnr

    worst = min_sqnr(report["fidelity"]) if report["fidelity"]["outputs"] else None
    sqnr = ("no held-out view" if worst is None else "identical" if worst == float("inf") else
            "FAILED (non-finite values)" if worst == float("-inf") else f"{worst:.1f} dB")
    agreement = report["fidelity"].get("detection_agreement")
    detections = (f"detection F1 {agreement['f1']:.3f}" if agreement else
                  f"detection agreement not reported: {report['fidelity']['detection_agreement_note']}"
                  if "detection_agreement_note" in report["fidelity"] else None)
    classes = _class_agreement(report["fidelity"])
    return (f"  fidelity on {_held_out(report)}: worst SQNR {sqnr}" + (f"; {detections}" if detections else "")
            + (f"; {classes}" if classes else ""))


@cli.command()
@click.argument("model", type=InputFile("onnx"))
@click.option("--precision", type=click.Choice(["fp16", "int8", "mixed"]), required=True,
              help="fp16 (fp32 I/O), int8 (Q/DQ, calibrated) or mixed (int8 with the most sensitive blocks in fp16).")
@click.option("--calib", "calib_dir", type=ImageFolder(), help="Folder of calibration images [default: calib/].")
@click.option("--calib-images", type=click.IntRange(1), default=300, show_default=True,
              help="Calibration images taken (deterministic shuffled subset).")
@click.option("--holdout", type=click.IntRange(0), help="Held-out photos for the fidelity report, each seen "
              "through crops/mirrors until there are 8 views [default: 20%, at most 16].")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default=DEFAULT_CALIB_METHOD, show_default=True,
              help=CALIB_METHOD_HELP)
@click.option("--percentile", type=FiniteFloatRange(50, 100, min_open=True), default=99.99, show_default=True, help="For --calib-method percentile.")
@click.option("--fidelity-target", type=FiniteFloatRange(0, 200), default=20.0, show_default=True,
              help="mixed: worst raw-output SQNR (dB) on held-out images to reach.")
@click.option("--opset", type=click.IntRange(*OPSET_RANGE), help="Target opset; 17 for TensorRT 8.5/8.6 (non-quantized part stays fp32).")
@click.option("--high-precision", type=click.Choice(["fp16", "fp32"]), help="int8/mixed: dtype of the unquantized "
              "part [default: fp16 for TensorRT; use fp32 for ONNX Runtime, which computes fp16 next to Q/DQ wrongly "
              "in a default session].")
@qad_options
@click.option("--out", type=click.Path(file_okay=False), help="Output directory [default: the model's].")
@click.option("--json", "as_json", is_flag=True, help="Print the precision report as JSON.")
def quantize(model, precision, calib_dir, calib_images, holdout, calib_method, percentile, fidelity_target, opset,
             high_precision, qad, qad_steps, qad_lr, out, as_json) -> None:
    """Write MODEL's precision into the graph: fp16, int8 (Q/DQ) or mixed int8/fp16.

    \b
    Examples:
      effedge quantize runs/d0/model.sim.onnx --precision int8 --calib ~/images
      effedge quantize runs/d0/model.sim.onnx --precision mixed --fidelity-target 25
      effedge quantize runs/d0/model.sim.onnx --precision fp16
      effedge quantize runs/d0/model.sim.onnx --precision int8 --qad --qad-steps 200
    """
    from pathlib import Path

    from effedge.quantize.precision import PrecisionOptions, convert
    from effedge.quantize.qad import QADOptions

    options = PrecisionOptions(precision=precision, calib_dir=Path(calib_dir) if calib_dir else None,
                               calib_images=calib_images, holdout=holdout, method=calib_method,
                               percentile=percentile, fidelity_target=fidelity_target, opset=opset,
                               high_precision=high_precision,
                               qad=QADOptions(steps=qad_steps, lr=qad_lr) if qad else None)
    report = convert(model, out, options=options, log=progress, progress=rich_progress)
    if as_json:
        print_json(report)
    else:
        _print_precision_report(report)


@cli.command("compile")
@model_options
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "mixed"]), default="fp16", show_default=True,
              help="Precision written into the graph (int8 and mixed calibrate on --calib images).")
@click.option("--nms", type=click.Choice(["auto", "none", "onnx", "efficientnms"]), default="auto", show_default=True,
              help="auto: efficientnms on TensorRT, onnx on ONNX Runtime, none on TensorRT-RTX (NMS in the Detector).")
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="float", show_default=True,
              help=INPUT_FORMAT_HELP)
@click.option("--opset", type=click.IntRange(*OPSET_RANGE), help="ONNX opset [default: 17 for the export; the precision graph 19, or 17 for "
              "TensorRT 8.5/8.6].")
@click.option("--calib", "calib_dir", type=ImageFolder(), help="Calibration images for int8/mixed [default: calib/].")
@click.option("--calib-images", type=click.IntRange(1), default=300, show_default=True,
              help="Calibration images taken (deterministic shuffled subset).")
@click.option("--holdout", type=click.IntRange(0), help="Held-out photos for the fidelity report, each seen "
              "through crops/mirrors until there are 8 views [default: 20%, at most 16].")
@click.option("--percentile", type=FiniteFloatRange(50, 100, min_open=True), default=99.99, show_default=True, help="For --calib-method percentile.")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default=DEFAULT_CALIB_METHOD, show_default=True,
              help=CALIB_METHOD_HELP)
@click.option("--fidelity-target", type=FiniteFloatRange(0, 200), default=20.0, show_default=True, help="mixed: SQNR target (dB).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx", "onnxruntime"]), default="auto",
              show_default=True, help="auto: TensorRT where it and a GPU are present, else ONNX Runtime on the CPU. "
              "tensorrt-rtx builds ahead of time, also on a machine without a GPU.")
@click.option("--compute-capability", "compute_capabilities", metavar="CC[,CC…]",
              help="tensorrt-rtx: GPUs to build for, e.g. 8.6,8.9 [default: TensorRT-RTX's own set].")
@click.option("--dla", "dla_core", type=click.IntRange(0, 1), help="Build for DLA core N (Jetson AGX Orin / Orin NX), GPU fallback on.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(1), help="TensorRT workspace limit in MiB.")
@click.option("--opt-level", "optimization_level", type=click.IntRange(0, 5),
              help="TensorRT builder optimization level.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Build directory [default: runs/<variant>-<precision>-…].")
@qad_options
@click.option("--force", is_flag=True, help="Rebuild even when the cache says the build is up to date.")
@click.option("--profile", "profile_name", help="Compile the model `effedge select` picks for this profile, "
              "with its precision and batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the build manifest as JSON.")
def compile_command(variant, phi, precision, weights, num_classes, pad, imgsz, batch, dynamic_batch, nms,
                    input_format, opset, calib_dir, calib_images, holdout, percentile, calib_method,
                    fidelity_target, backend, compute_capabilities, dla_core, workspace_mb, optimization_level,
                    out, qad, qad_steps, qad_lr, force, profile_name, as_json) -> None:
    """Compile a model end to end: build, export, simplify, precision, NMS, engine.

    \b
    Uses TensorRT when it is installed and sees a GPU, else ONNX Runtime on the CPU
    (the deployable is then the final ONNX graph). An unchanged re-run is a cache hit.
    \b
    Examples:
      effedge compile --variant d0 --precision int8
      effedge compile --weights demo           the shipped shapes detector (offline; see demo-images)
      effedge compile --variant d2 --precision mixed --calib ~/site-images --fidelity-target 25
      effedge compile --phi 1.5 --precision fp16 --dynamic-batch 1:4:8 --backend tensorrt
      effedge compile --variant d0 --precision int8 --backend tensorrt-rtx --compute-capability 8.6,8.9
    """
    from effedge.demo import DEMO_NAME, resolve_demo
    from effedge.pipeline.compile import CompileConfig, compile_model

    class_names = None
    if weights == DEMO_NAME:  # the shipped detector fixes the model; a differing option is refused
        demo = resolve_demo(variant if variant is not None else phi, imgsz, num_classes)
        variant, phi, imgsz, num_classes, weights, class_names = (demo.variant, None, demo.image_size,
                                                                  demo.num_classes, str(demo.weights), demo.class_names)
    if profile_name:
        from effedge.pipeline.measure import calibrated
        from effedge.plan.latency import select
        from effedge.plan.profiles import for_backend, load_profile

        if variant or phi is not None:
            raise click.UsageError("--profile chooses the variant; drop --variant/--phi")
        context = click.get_current_context()
        explicit = [f"--{name.replace('_', '-')}" for name in ("precision", "batch", "nms")
                    if context.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if explicit:  # the profile's choice was made for its own precision, batch and NMS tail
            raise click.UsageError(f"--profile sets the precision, batch and NMS tail it was selected for; drop "
                                   f"{' and '.join(explicit)}, or compile without --profile")
        prof = load_profile(profile_name)
        backend = backend if backend != "auto" else prof.software.backend
        prof = for_backend(prof, backend)  # TensorRT-RTX: fp16, not its profile's int8
        prof = calibrated(prof, prof.target.precision, log=progress)
        _, choice = select(prof, image_size=imgsz, log=progress)  # costed at the size it compiles
        if choice is None:
            raise click.ClickException(f"no candidate meets {prof.name}'s budget of {prof.target.latency_ms:g} ms")
        progress(f"profile {prof.name}: compiling {choice.name} ({choice.predicted_ms:.1f} ms {choice.source})")
        variant, phi, precision, batch, nms = (choice.name if choice.name[0] == "d" else None,
                                               None if choice.name[0] == "d" else choice.phi,
                                               prof.target.precision, prof.target.batch, prof.nms)
    config = CompileConfig(
        variant=variant_arg(variant, phi), precision=precision, weights=weights, num_classes=num_classes, pad=pad,
        image_size=imgsz, batch=batch, dynamic_batch=dynamic_batch, nms=nms,
        input_format=input_format, opset=opset, calib_dir=calib_dir, calib_images=calib_images, holdout=holdout,
        percentile=percentile, calib_method=calib_method, fidelity_target=fidelity_target, backend=backend,
        dla_core=dla_core, workspace_mb=workspace_mb, optimization_level=optimization_level,
        compute_capabilities=tuple(split_list(compute_capabilities)) or None, class_names=class_names,
        qad_steps=qad_steps if qad else None, qad_lr=qad_lr)
    manifest = compile_model(config, out, force=force, log=progress, progress=rich_progress)
    if as_json:
        print_json(manifest)
        return
    info = manifest["compile"]
    state = f"cache hit, reused {info['out_dir']}" if info["cache_hit"] else f"built in {info['total_seconds']:.1f} s"
    tail = f" (nms {manifest['nms']})" if manifest.get("family") != "efficientnet" else " (classifier)"
    click.echo(f"{manifest['variant']} {manifest['precision']} on {manifest['backend']}{tail}: "
               f"{state}\n  deployable: {info['out_dir']}/{info['deployable']}")
    fidelity = _fidelity_summary(manifest.get("precisions", {}).get(manifest["precision"]))
    if fidelity:
        click.echo(fidelity)


@cli.command("build")
@click.argument("model", type=InputFile("onnx"))
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt", show_default=True,
              help="tensorrt-rtx builds ahead of time, also on a machine without a GPU.")
@click.option("--compute-capability", "compute_capabilities", metavar="CC[,CC…]",
              help="tensorrt-rtx: GPUs to build for, e.g. 8.6,8.9 [default: TensorRT-RTX's own set].")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory for MODEL's .engine and its build.json "
              "entry [default: MODEL's directory].")
@click.option("--dynamic-batch", type=DynamicBatch(), help="Profile for a dynamic batch dimension.")
@click.option("--dla", "dla_core", type=click.IntRange(0, 1), help="DLA core (GPU fallback on).")
@click.option("--workspace", "workspace_mb", type=click.IntRange(1), help="Workspace limit in MiB.")
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
    import contextlib
    from pathlib import Path

    from effedge.io import output_directory
    from effedge.pipeline.compile import build_engine_file

    source = Path(model)
    engine = Path(out) / source.with_suffix(".engine").name if out else None
    with output_directory(out) if out else contextlib.nullcontext():  # a refused build leaves no empty --out
        report = build_engine_file(source, engine, backend=backend,
                                   compute_capabilities=tuple(split_list(compute_capabilities)) or None,
                                   dynamic_batch=dynamic_batch, dla_core=dla_core,
                                   workspace_mb=workspace_mb, optimization_level=optimization_level,
                                   timing_cache=Path(timing_cache) if timing_cache else None,
                                   version_compatible=version_compatible, hardware_compatible=hardware_compatible,
                                   log=progress)
    if as_json:
        print_json(report)
        return
    layers = report.get("layers") or {}
    click.echo(f"{report['file']}: {report['product']} {report['version']}, {report['precision']}, built in "
               f"{report['seconds']} s, {report['bytes'] / 2**20:.1f} MiB"
               + (f", {layers['layers']} layers ({layers['reformat_layers']} reformat)" if layers.get("layers")
                  else ""))
