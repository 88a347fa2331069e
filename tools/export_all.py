#!/usr/bin/env python
"""Export every named variant at its full input size and print node counts, parity and timings (Markdown).

    python tools/export_all.py [--out runs/export-all] [--variants d0,d1,...] [--weights random|none]

Random weights (seeded, BN scales ≈ 0.5 as in tests/helpers.py) give realistic output magnitudes; the
default initialisation gives near-zero outputs that would make the parity figures meaningless.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from effedge import build_model  # noqa: E402
from effedge.export.onnx_export import export  # noqa: E402
from effedge.arch.scaling import NAMED_VARIANTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/export-all")
    parser.add_argument("--variants", default=",".join(NAMED_VARIANTS))
    parser.add_argument("--weights", choices=["random", "none"], default="random")
    args = parser.parse_args()
    from helpers import randomize_

    print("| variant | input | nodes (raw → simplified) | Conv | max |Δ| class/logits | max |Δ| boxes | "
          "build s | export s | simplify s | parity s | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        start = time.perf_counter()
        weights = randomize_(build_model(name)).state_dict() if args.weights == "random" else None
        manifest = export(name, Path(args.out) / name, weights=weights)
        parity = {p["output"]: p["max_abs_diff"] for p in manifest["parity"]}
        graph = manifest["graph"]
        stages = manifest["stages_seconds"]
        first = parity.get("class_logits", parity.get("logits"))
        boxes = f"{parity['boxes']:.2e}" if "boxes" in parity else "-"
        print(f"| {name} | {manifest['resolution'][0]} | {graph['raw']['nodes']} → {graph['simplified']['nodes']} | "
              f"{graph['simplified']['ops'].get('Conv', 0)} | {first:.2e} | {boxes} | {stages['build']:.1f} | "
              f"{stages['export']:.1f} | {stages['simplify']:.1f} | {stages['parity']:.1f} | "
              f"{time.perf_counter() - start:.1f} |", flush=True)

if __name__ == "__main__":
    main()
