#!/usr/bin/env python
"""mAP of the trained reference model at fp32 / fp16 / int8 / mixed, through the real pipeline
(effedge compile on ONNX Runtime, then effedge eval --compare).

    python tools/accuracy_report.py WEIGHTS --val DIR --calib DIR [--size 256] [--out runs/accuracy]
"""
import argparse
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("--val", required=True, help="folder with images/ and instances.json")
    parser.add_argument("--calib", required=True, help="calibration image folder (not the validation images)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fidelity-target", type=float, default=30.0)
    parser.add_argument("--out", default="runs/accuracy")
    args = parser.parse_args()
    models = []
    for precision in ("fp32", "fp16", "int8", "mixed"):
        out = Path(args.out) / precision
        subprocess.run([sys.executable, "-m", "effedge", "compile", "--variant", "d0", "--weights", args.weights,
                        "--num-classes", "4", "--imgsz", str(args.size), "--precision", precision, "--nms", "none",
                        "--backend", "onnxruntime", "--calib", args.calib, "--calib-images", "200",
                        "--fidelity-target", str(args.fidelity_target), "--out", str(out)], check=True)
        models.append(str(out / f"model.{precision}.onnx"))
    compare = [item for model in models[1:] for item in ("--compare", model)]
    subprocess.run([sys.executable, "-m", "effedge", "eval", models[0], *compare, "--images",
                    str(Path(args.val) / "images"), "--annotations", str(Path(args.val) / "instances.json")],
                   check=True)
