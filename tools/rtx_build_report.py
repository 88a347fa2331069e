"""Every graph kind effedge emits, parsed and built by TensorRT-RTX ahead of time (no GPU needed): a Markdown
table of parse/build result, build seconds, engine MB, layer and reformat-layer counts.

    python tools/rtx_build_report.py [--imgsz 512] [--out runs/rtx-report]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from effedge.errors import EffedgeError
from effedge.pipeline import CompileConfig, compile_model

KINDS = [  # (label, compile options)
    ("d0 fp32", dict(variant="d0", precision="fp32")),
    ("d0 fp16", dict(variant="d0", precision="fp16")),
    ("d0 int8 max", dict(variant="d0", precision="int8", calib_method="max")),
    ("d0 int8 percentile", dict(variant="d0", precision="int8", calib_method="percentile")),
    ("d0 int8 entropy", dict(variant="d0", precision="int8", calib_method="entropy")),
    ("d0 mixed", dict(variant="d0", precision="mixed", fidelity_target=30.0)),
    ("d0 int8 dynamic 1:2:4", dict(variant="d0", precision="int8", dynamic_batch=(1, 2, 4))),
    ("d0 fp16 uint8 input", dict(variant="d0", precision="fp16", input_format="uint8")),
    ("b0 int8", dict(variant="b0", precision="int8")),
    ("phi 1.5 fp16 uint8 input", dict(variant=1.5, precision="fp16", input_format="uint8")),
    ("phi 1.5 int8", dict(variant=1.5, precision="int8")),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, help="input size for every model [default: each variant's own]")
    parser.add_argument("--out", default="runs/rtx-report", help="where the build directories go")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of Markdown")
    args = parser.parse_args()
    rows = []
    for label, options in KINDS:
        out = Path(args.out) / label.replace(" ", "-").replace(":", "-")
        start = time.perf_counter()
        try:
            manifest = compile_model(CompileConfig(**options, image_size=args.imgsz, backend="tensorrt-rtx"), out)
        except EffedgeError as exc:
            rows.append({"graph": label, "result": f"failed: {exc}"})
            continue
        engine = manifest["engines"][manifest["compile"]["deployable"]]
        layers = engine.get("layers") or {}
        rows.append({"graph": label, "result": "parses and builds", "input": manifest["resolution"],
                     "build_s": engine["seconds"], "engine_mb": round(engine["bytes"] / 1e6, 1),
                     "layers": layers.get("layers"), "reformat_layers": layers.get("reformat_layers"),
                     "compile_s": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("\n| graph | input | result | build s | engine MB | layers | reformat layers | whole compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        size = "x".join(map(str, r.get("input", []))) or "-"
        print(f"| {r['graph']} | {size} | {r['result']} | {r.get('build_s', '-')} | {r.get('engine_mb', '-')} | "
              f"{r.get('layers', '-')} | {r.get('reformat_layers', '-')} | {r.get('compile_s', '-')} |")


if __name__ == "__main__":
    main()
