#!/usr/bin/env python
"""Precision figures at any size: stage seconds and peak RSS of export and of each precision, int8 calibration
time against plain fp32 ONNX Runtime forwards on the same images, Q/DQ summary, fidelity on held-out images.

    python tools/precision_report.py [--variant d0] [--images 64] [--precisions all|int8,mixed,…]
                                     [--weights W] [--out runs/precision-report] [--json FILE]

    python tools/precision_report.py --variant d5 --images 16 --precisions int8 --json d5.json
    python tools/precision_report.py --variant d5 --images 4 --precisions int8 --qad-steps 2   # QAD's memory
    python tools/precision_report.py --variant d7 --images 4 --precisions int8,mixed --mixed-target-above-int8 0.5
        # the mixed search's time and memory where it must rank the blocks and keep some

Without --weights the model gets seeded random weights with realistic output magnitudes (tests/helpers.py);
the calibration folder is made of --images + --holdout crops/flips of the photos shipped in calib/. Each run
starts with a cold cache. "calibration ÷ fp32 forwards" divides the whole calibration stage (file hashing, session
creation, image decoding included) by forwards alone (see time_fp32_forwards). Peak RSS is per stage (sampled,
effedge.provenance.stages) and for the whole process (the kernel's). --qad-steps N adds an "int8 QAD" row (N
distillation steps under the post-training ranges, then placement with those ranges: no calibration of its own,
so its ratio is "-"): QAD rebuilds the torch model from build.json, so the random
weights are then saved to a checkpoint in --out and exported from it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from effedge import build_model  # noqa: E402
from effedge.io import read_manifest  # noqa: E402
from effedge.quantize.images import DEFAULT_CALIB_DIR, ImageSet, find_images  # noqa: E402
from effedge.runtime.images import load_rgb  # noqa: E402
from effedge.quantize.calibrators import DEFAULT_METHOD  # noqa: E402
from effedge.export.onnx_export import export  # noqa: E402
from effedge.quantize.precision import PrecisionOptions, convert, model_input  # noqa: E402
from effedge.quantize.qad import QADOptions  # noqa: E402
from effedge.quantize.fidelity import min_sqnr  # noqa: E402
from effedge.runtime.onnxruntime import ort_session  # noqa: E402
from effedge.provenance.stages import StageMeter, peak_rss_mb  # noqa: E402

ROWS = {  # label: (precision, calibration method)
    "fp16": ("fp16", DEFAULT_METHOD), "int8 entropy": ("int8", "entropy"), "int8 max": ("int8", "max"),
    "int8 percentile": ("int8", "percentile"), "mixed": ("mixed", DEFAULT_METHOD),
    f"int8 {DEFAULT_METHOD} (re-run)": ("int8", DEFAULT_METHOD),
}


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = [load_rgb(p) for p in find_images(DEFAULT_CALIB_DIR)]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"crop{i:04d}.jpg", quality=92)


def time_fp32_forwards(model_path: Path, images: ImageSet) -> float:
    """Seconds of plain fp32 forwards over the calibration images (prepared beforehand, so not counted; one
    warm-up forward not counted), in a default ONNX Runtime session — what a user's own inference costs, the
    baseline the issue sets. The calibration stage it is compared with counts more: hashing the image files,
    opening the session on the graph with its statistics (node-priority order, no memory patterns: about 15 %
    slower a forward), decoding the images and reducing the statistics."""
    import onnx

    inputs = model_input(onnx.load(str(model_path)))
    session = ort_session(model_path)
    batches = [batch for batch, _ in images.padded_batches(images.calibration, inputs.size, inputs.format,
                                                           inputs.batch, inputs.preprocessing)]
    session.run(None, {inputs.name: batches[0]})
    start = time.perf_counter()
    for batch in batches:
        session.run(None, {inputs.name: batch})
    return time.perf_counter() - start


def gib(mb) -> str:
    """MiB as GiB; "?" where the platform gave no figure (no /proc and no getrusage)."""
    return "?" if mb is None else f"{mb / 1024:.2f}"


def selected_rows(spec: str) -> dict:
    """The rows --precisions names: all, or labels of ROWS (int8 alone meaning the default method)."""
    if spec == "all":
        return ROWS
    labels = [{"int8": f"int8 {DEFAULT_METHOD}"}.get(s.strip(), s.strip()) for s in spec.split(",") if s.strip()]
    unknown = [label for label in labels if label not in ROWS]
    if unknown:
        sys.exit(f"--precisions: unknown {', '.join(unknown)}; use all, int8, or some of: {', '.join(ROWS)}")
    return {label: row for label, row in ROWS.items() if label in labels}  # ROWS' order: int8 before mixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="d0")
    parser.add_argument("--images", type=int, default=64, help="calibration images")
    parser.add_argument("--holdout", type=int, default=16, help="held-out photos (each seen through at least 8 views "
                        "in all), besides the calibration images")
    parser.add_argument("--precisions", default="all", help="all, or a comma list: int8, mixed, fp16, 'int8 max', … "
                                                            "(run in the order of the full list: int8 before mixed)")
    parser.add_argument("--weights")
    parser.add_argument("--out", default="runs/precision-report")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--qad-steps", type=int, help="also an int8 row with this many QAD steps (needs torch and "
                                                      "ModelOpt)")
    parser.add_argument("--mixed-target-above-int8", type=float, metavar="DB",
                        help="mixed's --fidelity-target: the int8 row's worst SQNR + DB (> 0), so the search ranks "
                             "the blocks and keeps some, to measure its time and memory, where random weights meet "
                             "the default target")
    args = parser.parse_args()
    rows = selected_rows(args.precisions)
    if args.mixed_target_above_int8 is not None and not {"mixed", f"int8 {DEFAULT_METHOD}"} <= set(rows):
        parser.error(f"--mixed-target-above-int8 needs the mixed and int8 ({DEFAULT_METHOD}) rows in --precisions")
    if args.mixed_target_above_int8 is not None and not args.mixed_target_above_int8 > 0:
        parser.error("--mixed-target-above-int8 takes a positive number of dB (at or below int8 nothing is ranked)")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.environ["EFFEDGE_CACHE_DIR"] = str(out / "cache")  # measure a cold first run
    from helpers import randomize_

    meter = StageMeter()
    with meter.stage("weights"):
        weights = args.weights or randomize_(build_model(args.variant)).state_dict()
        if args.qad_steps and not isinstance(weights, str):  # QAD rebuilds the model from a checkpoint file
            import torch

            out.mkdir(parents=True, exist_ok=True)
            torch.save(weights, out / "weights.pt")
            weights = str(out / "weights.pt")
    with meter.stage("export"):
        export(args.variant, out / "build", weights=weights)
    del weights
    export_manifest = read_manifest(out / "build")
    make_images(out / "images", args.images + args.holdout)
    source = out / "build" / "model.sim.onnx"
    images = ImageSet.from_folder(out / "images", count=args.images, holdout=args.holdout)
    with meter.stage("fp32 forwards"):
        fp32_seconds = time_fp32_forwards(source, images)

    runs = [(label, precision, method, None) for label, (precision, method) in rows.items()]
    if args.qad_steps:
        runs.append((f"int8 QAD ({args.qad_steps} steps)", "int8", DEFAULT_METHOD, QADOptions(steps=args.qad_steps)))
    results = {}
    for label, precision, method, qad in runs:
        target = {}
        if precision == "mixed" and args.mixed_target_above_int8 is not None:
            int8_worst = min_sqnr(results[f"int8 {DEFAULT_METHOD}"]["fidelity"])
            if not math.isfinite(int8_worst):
                sys.exit(f"--mixed-target-above-int8: the int8 row's worst SQNR is {int8_worst}, no target above it")
            target = {"fidelity_target": int8_worst + args.mixed_target_above_int8}
        with meter.stage(label):
            report = convert(source, options=PrecisionOptions(precision=precision, calib_dir=out / "images",
                                                              calib_images=args.images, holdout=args.holdout,
                                                              method=method, qad=qad, **target))
        results[label] = report
    size = model_input(__import__("onnx").load(str(source))).size

    print(f"{args.variant} at {size[0]}×{size[1]}, {args.images} calibration images, {args.holdout} held out; "
          f"{args.images} plain fp32 ONNX Runtime forwards: {fp32_seconds:.1f} s; "
          f"process peak RSS {gib(peak_rss_mb())} GiB\n")
    print("export stages: " + ", ".join(
        f"{k} {export_manifest['stages_seconds'][k]:.1f} s / {gib(export_manifest['stages_peak_rss_mb'][k])} GiB"
        for k in export_manifest["stages_seconds"]) + f"; whole export peak {gib(meter.peak_rss_mb['export'])} GiB\n")
    print("| precision | wall s | peak GiB | stage: seconds / peak GiB | calibration ÷ fp32 forwards | cached "
          "| class_logits SQNR dB | box_regression SQNR dB | detections F1 | kept fp16 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary_rows = {}
    for label, report in results.items():
        outputs = report["fidelity"]["outputs"]
        det = report["fidelity"].get("detection_agreement") or {}
        seconds, peaks = report["seconds"], report["peak_rss_mb"]
        calib = report.get("calibration", {})
        calibrated = not calib.get("cached") and calib.get("ranges_from_post_training", 0) < calib.get("tensors", 1)
        ratio = seconds["calibration"] / fp32_seconds if "calibration" in seconds and calibrated else None
        stages = ", ".join(f"{k} {seconds[k]:.1f}/{gib(peaks[k])}" for k in seconds)
        first, second = (list(outputs) + [None, None])[:2]
        print(f"| {label} | {meter.seconds[label]:.1f} | {gib(meter.peak_rss_mb[label])} | {stages} | "
              f"{'-' if ratio is None else f'{ratio:.2f}'} | {calib.get('cached', '-')} | "
              f"{outputs[first]['sqnr_db']:.1f} | {outputs[second]['sqnr_db'] if second else float('nan'):.1f} | "
              f"{det.get('f1', float('nan')):.3f} | {', '.join(report.get('kept_fp16', [])) or '-'} |")
        summary_rows[label] = {"wall_seconds": round(meter.seconds[label], 2),
                               "peak_rss_mb": meter.peak_rss_mb[label], "stages_seconds": seconds,
                               "stages_peak_rss_mb": peaks, "calibration_over_fp32_forwards": ratio,
                               "calibration": calib, "fidelity": report["fidelity"],
                               "kept_fp16": report.get("kept_fp16")}
    if any(r["precision"] != "fp16" for r in results.values()):
        qdq = next(r for r in results.values() if r["precision"] != "fp16")["qdq"]
        print("\nQ/DQ:", json.dumps({k: v for k, v in qdq.items() if k != "not_quantized"}))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "variant": args.variant, "input_size": list(size), "calibration_images": args.images,
            "holdout_photos": args.holdout, "cpu_count": os.cpu_count(), "fp32_forwards_seconds": round(fp32_seconds, 2),
            "process_peak_rss_mb": peak_rss_mb(), "stages_seconds": meter.rounded_seconds(2),
            "stages_peak_rss_mb": meter.peak_rss_mb,
            "export": {"stages_seconds": export_manifest["stages_seconds"],
                       "stages_peak_rss_mb": export_manifest["stages_peak_rss_mb"]},
            "precisions": summary_rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
