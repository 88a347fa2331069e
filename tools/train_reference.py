#!/usr/bin/env python
"""Train the reference model on the synthetic shapes dataset and report its COCO mAP (fp32, ONNX Runtime).

    python tools/train_reference.py OUT [--train 400] [--val 100] [--size 256] [--epochs 40] [--max-minutes 40]

Writes OUT/train, OUT/val (datasets), OUT/run/weights.fp16.pth (the fixture) and OUT/run/training.json.
"""
import argparse
import json
from pathlib import Path

from effedge.evaluate.coco import EVAL_SCORE_THRESHOLD, evaluate
from effedge.export.onnx_export import ExportOptions, export
from effedge.runtime.detector import Detector
from shapes import generate
from training import train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--max-minutes", type=float)
    args = parser.parse_args()
    out = Path(args.out)
    train_set = generate(out / "train", args.train, size=(args.size, args.size), seed=1)
    val_set = generate(out / "val", args.val, size=(args.size, args.size), seed=2)
    weights = train(out / "train" / "images", train_set, out / "run", image_size=args.size, epochs=args.epochs,
                    batch=args.batch, lr=args.lr, max_minutes=args.max_minutes)
    export(0.0, out / "export", weights=str(weights), num_classes=4, options=ExportOptions(image_size=args.size))
    with Detector(out / "export" / "model.sim.onnx", score_threshold=EVAL_SCORE_THRESHOLD) as detector:
        metrics = evaluate(detector, out / "val" / "images", val_set)
    print(json.dumps(metrics, indent=2))
