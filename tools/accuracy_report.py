#!/usr/bin/env python
"""mAP of the trained reference model at fp32 / fp16 / int8 (each calibration method) / mixed, through the real
pipeline (effedge compile on ONNX Runtime, then effedge eval --compare).

    python tools/accuracy_report.py WEIGHTS --val DIR --calib DIR [--size 256] [--out runs/accuracy]
        [--methods max,percentile,entropy] [--mixed-method percentile]

Every int8/mixed build is compiled with an explicit --calib-method and lands in OUT/<precision>-<method>, so
the table's model column names the method that produced each row.
"""
import argparse
import subprocess
import sys
from pathlib import Path

METHODS = ("max", "percentile", "entropy")


def builds(methods: list[str], mixed_method: str) -> list[tuple[str, str, list[str]]]:
    """(directory name, precision, extra compile arguments) of every model in the report, fp32 first."""
    quantized = [(f"int8-{method}", "int8", ["--calib-method", method]) for method in methods]
    return [("fp32", "fp32", []), ("fp16", "fp16", []), *quantized,
            (f"mixed-{mixed_method}", "mixed", ["--calib-method", mixed_method])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("--val", required=True, help="folder with images/ and instances.json")
    parser.add_argument("--calib", required=True, help="calibration image folder (not the validation images)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fidelity-target", type=float, default=30.0)
    parser.add_argument("--methods", default=",".join(METHODS), help="int8 calibration methods, comma-separated")
    parser.add_argument("--mixed-method", default="percentile", choices=METHODS)
    parser.add_argument("--out", default="runs/accuracy")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; use {', '.join(METHODS)}")
    models = []
    for name, precision, extra in builds(methods, args.mixed_method):
        out = Path(args.out) / name
        subprocess.run([sys.executable, "-m", "effedge", "compile", "--variant", "d0", "--weights", args.weights,
                        "--num-classes", "4", "--imgsz", str(args.size), "--precision", precision, "--nms", "none",
                        "--backend", "onnxruntime", "--calib", args.calib, "--calib-images", "200",
                        "--fidelity-target", str(args.fidelity_target), *extra, "--out", str(out)], check=True)
        models.append(str(out / f"model.{precision}.onnx"))
    compare = [item for model in models[1:] for item in ("--compare", model)]
    subprocess.run([sys.executable, "-m", "effedge", "eval", models[0], *compare, "--images",
                    str(Path(args.val) / "images"), "--annotations", str(Path(args.val) / "instances.json")],
                   check=True)


if __name__ == "__main__":
    main()
