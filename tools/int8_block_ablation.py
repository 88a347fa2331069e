#!/usr/bin/env python
"""Where an int8 detector loses its mAP: COCO mAP of the fp32 graph, of the int8 graph, and of the int8 graph with
one block at a time (the blocks the mixed search ranks: stem, backbone stages, BiFPN layers, heads) taken out of
int8, each with its paired difference to fp32 over folds of the validation images (mean ± standard error), so a
gap can be told from the noise of the validation set.

    python tools/int8_block_ablation.py BUILD/model.sim.onnx INT8/model.int8.onnx IMAGES INSTANCES.json
        [--folds 5] [--blocks all|box_net,class_net,…] [--json FILE]

The int8 graph is any effedge int8 graph (PTQ or QAD) with its build.json beside it; a block taken out of int8
runs in that graph's high precision (``effedge.quantize.qdq.dequantize_nodes``, what ``--precision mixed`` keeps).
mAP is ``effedge.evaluate.coco``'s, the code behind ``effedge eval``, on effedge's ONNX Runtime Detector.

Measured on the shapes fixture's PTQ graph (README, QAD; 300 validation images, 5 folds of 60): int8 -1.11 ± 0.22
mAP points against fp32; with box_net out of int8 -0.05 ± 0.10; class_net out -0.93 ± 0.26; any other single
block out -1.08 to -1.71. A row's mAP is the mean of its folds' mAPs, not the pooled mAP.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import onnx

from effedge.errors import EffedgeError
from effedge.evaluate.coco import EVAL_SCORE_THRESHOLD, evaluate
from effedge.io import read_manifest
from effedge.quantize.precision import block_groups
from effedge.quantize.qdq import dequantize_nodes
from effedge.runtime.detector import Detector


def fold_maps(model: Path, manifest: dict, folds: list[list[Path]], annotations: Path) -> list[float]:
    with Detector(model, manifest=manifest, score_threshold=EVAL_SCORE_THRESHOLD) as detector:
        return [evaluate(detector, fold, annotations)["mAP"] for fold in folds]


def paired(maps: list[float], reference: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-fold difference ``maps`` − ``reference`` (mAP points)."""
    differences = [100 * (a - b) for a, b in zip(maps, reference)]
    mean = sum(differences) / len(differences)
    spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / max(1, len(differences) - 1))
    return mean, spread / math.sqrt(len(differences))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("int8", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("annotations", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--blocks", default="all", help="all, or a comma list of blocks to take out of int8 one by one")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    missing = [str(path) for path in (args.fp32, args.int8, args.annotations) if not path.is_file()]
    missing += [str(args.images)] if not args.images.is_dir() else []
    if missing:
        sys.exit(f"not found: {', '.join(missing)} (FP32 and INT8 graphs with their build.json, an image folder, "
                 "COCO instances)")
    if args.folds < 2:
        sys.exit(f"--folds {args.folds}: use at least 2 (the standard error needs two folds)")
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < 2 * args.folds:
        sys.exit(f"{len(files)} images in {args.images}: need at least 2 per fold (--folds {args.folds})")
    folds = [files[i::args.folds] for i in range(args.folds)]
    manifest = read_manifest(args.int8.parent)
    int8 = onnx.load(str(args.int8))
    groups = block_groups(int8)
    chosen = sorted(groups) if args.blocks == "all" else args.blocks.split(",")
    unknown = [block for block in chosen if block not in groups]
    if unknown:
        sys.exit(f"no block {', '.join(unknown)} in {args.int8}: its blocks are {', '.join(sorted(groups))}")
    rows = []
    fp32 = fold_maps(args.fp32, read_manifest(args.fp32.parent), folds, args.annotations)
    rows.append({"model": "fp32", "fold_mAP": fp32})
    rows.append({"model": "int8", "fold_mAP": fold_maps(args.int8, manifest, folds, args.annotations)})
    with tempfile.TemporaryDirectory() as tmp:
        for block in chosen:
            candidate = onnx.load(str(args.int8))
            if not dequantize_nodes(candidate, groups[block]):
                print(f"{block}: nothing of it is quantized, no row", file=sys.stderr)  # e.g. box decoding
                continue
            path = Path(tmp) / "model.onnx"
            onnx.save(candidate, str(path))
            rows.append({"model": f"int8, {block} out of int8",
                         "fold_mAP": fold_maps(path, manifest, folds, args.annotations)})
            print(f"{rows[-1]['model']}: done", file=sys.stderr, flush=True)
    for row in rows:
        row["mAP"] = sum(row["fold_mAP"]) / len(folds)
        row["points_vs_fp32"], row["standard_error"] = paired(row["fold_mAP"], fp32)
    if args.json:
        args.json.write_text(json.dumps({"fp32": str(args.fp32), "int8": str(args.int8), "folds": args.folds,
                                         "images": len(files), "rows": rows}, indent=2))
    print(f"\nCOCO mAP on {len(files)} images ({args.folds} folds; a fold's mAP averaged), difference to fp32 "
          "in mAP points, mean ± standard error over the folds\n")
    print("| model | mAP | vs fp32 |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['mAP']:.3f} | {row['points_vs_fp32']:+.2f} ± {row['standard_error']:.2f} |")


if __name__ == "__main__":
    try:
        main()
    except EffedgeError as exc:  # a graph without its build.json, annotations that are no COCO file, …
        sys.exit(f"error: {exc}")
