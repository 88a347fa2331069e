#!/usr/bin/env python
"""D0 precision figures: int8 calibration wall time vs plain fp32 ONNX Runtime forwards, Q/DQ summary,
fidelity of fp16 / int8 (each calibration method) / mixed on held-out images.

    python tools/precision_report.py [--variant d0] [--images 64] [--weights W] [--out runs/precision-report]

Without --weights the model gets seeded random weights with realistic output magnitudes (tests/helpers.py);
the calibration folder is made of --images + 16 crops/flips of the photos shipped in calib/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from effedge import build_model  # noqa: E402
from effedge.quantize.images import DEFAULT_CALIB_DIR, ImageSet, find_images  # noqa: E402
from effedge.runtime.images import load_rgb  # noqa: E402
from effedge.quantize.calibrators import DEFAULT_METHOD  # noqa: E402
from effedge.export.onnx_export import export  # noqa: E402
from effedge.quantize.precision import PrecisionOptions, convert, model_input  # noqa: E402


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


def time_fp32_forwards(model_path: Path, images: ImageSet, count: int) -> float:
    import onnxruntime as ort
    import onnx

    inputs = model_input(onnx.load(str(model_path)))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    batches = list(images.batches(images.calibration[:count], inputs.size, inputs.format,
                                  preprocessing=inputs.preprocessing))
    session.run(None, {inputs.name: batches[0]})  # warm-up
    start = time.perf_counter()
    for batch in batches:
        session.run(None, {inputs.name: batch})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="d0")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--weights")
    parser.add_argument("--out", default="runs/precision-report")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.environ["EFFEDGE_CACHE_DIR"] = str(out / "cache")  # measure a cold first run
    from helpers import randomize_

    weights = args.weights or randomize_(build_model(args.variant)).state_dict()
    export(args.variant, out / "build", weights=weights)
    make_images(out / "images", args.images + 16)
    source = out / "build" / "model.sim.onnx"
    images = ImageSet.from_folder(out / "images", count=args.images, holdout=16)
    fp32_seconds = time_fp32_forwards(source, images, args.images)
    rows = {}
    for label, precision, method in [("fp16", "fp16", DEFAULT_METHOD), ("int8 entropy", "int8", "entropy"),
                                     ("int8 max", "int8", "max"), ("int8 percentile", "int8", "percentile"),
                                     ("mixed", "mixed", DEFAULT_METHOD),
                                     (f"int8 {DEFAULT_METHOD} (re-run)", "int8", DEFAULT_METHOD)]:
        start = time.perf_counter()
        report = convert(source, options=PrecisionOptions(precision=precision, calib_dir=out / "images",
                                                          calib_images=args.images, holdout=16, method=method))
        rows[label] = (time.perf_counter() - start, report)
    print(f"{args.variant} at {model_input(__import__('onnx').load(str(source))).size}, {args.images} calibration "
          f"images, 16 held out; {args.images} plain fp32 ONNX Runtime forwards: {fp32_seconds:.2f} s\n")
    print("| precision | wall s | placement s | calibration s | cached | class_logits SQNR dB | box_regression SQNR dB "
          "| detections F1 | kept fp16 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, (wall, report) in rows.items():
        outputs = report["fidelity"]["outputs"]
        det = report["fidelity"].get("detection_agreement") or {}
        seconds = report["seconds"]
        calib = report.get("calibration", {})
        print(f"| {label} | {wall:.1f} | {seconds.get('placement', 0):.1f} | {seconds.get('calibration', 0):.1f} | "
              f"{calib.get('cached', '-')} | {outputs['class_logits']['sqnr_db']:.1f} | "
              f"{outputs['box_regression']['sqnr_db']:.1f} | {det.get('f1', float('nan')):.3f} | "
              f"{', '.join(report.get('kept_fp16', [])) or '-'} |")
    qdq = rows["int8 entropy"][1]["qdq"]
    print("\nQ/DQ (int8):", json.dumps({k: v for k, v in qdq.items() if k != "not_quantized"}))
    print("mixed kept in fp16:", rows["mixed"][1].get("kept_fp16"), "qdq:",
          {k: rows["mixed"][1]["qdq"][k] for k in ("convolutions", "convolutions_int8")})


if __name__ == "__main__":
    main()
