#!/usr/bin/env python
"""Params and MACs of every named variant: effedge vs the reference implementations vs the papers, and
custom integer φ vs the named variant it stands for. Markdown on stdout.

Needs the reference implementations for the middle columns (pip install --no-deps effdet==0.4.1 timm==1.0.31);
without them those columns are left out.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from effedge.models import complexity, count_macs, count_params
from effedge.arch.scaling import EFFICIENTDETS, NAMED_VARIANTS, resolve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
PAPER = {  # params (M), MACs (B), DESIGN.md §4
    "b0": (5.3, 0.39), "b1": (7.8, 0.70), "b2": (9.2, 1.0), "b3": (12, 1.8), "b4": (19, 4.2), "b5": (30, 9.9),
    "b6": (43, 19), "b7": (66, 37), "d0": (3.9, 2.5), "d1": (6.6, 6.1), "d2": (8.1, 11), "d3": (12, 25),
    "d4": (21, 55), "d5": (34, 135), "d6": (52, 226), "d7": (52, 325), "d7x": (77, 410),
    # Lite: params from the tensorflow/tpu and google/automl READMEs (MACs not published there)
    "lite0": (4.7, None), "lite1": (5.4, None), "lite2": (6.1, None), "lite3": (8.2, None), "lite4": (13.0, None),
    "d-lite0": (3.2, None), "d-lite1": (4.2, None), "d-lite2": (5.3, None), "d-lite3": (8.4, None),
    "d-lite3x": (9.3, None), "d-lite4": (15.1, None),
}


def reference_counts(name: str, size: int) -> tuple[int, int] | None:
    if not all(importlib.util.find_spec(m) for m in ("timm", "effdet", "omegaconf")):
        return None
    import torchvision_standin

    with torch.device("meta"):
        if resolve(name).family == "efficientnet":
            torchvision_standin.install()
            import timm

            model = timm.create_model(f"tf_efficientnet_{name}")
        else:
            module = torchvision_standin.import_effdet_model_module()
            from effdet.config import get_efficientdet_config

            model = module.EfficientDet(get_efficientdet_config(f"tf_efficientdet_{name.removeprefix('d-')}"),
                                        pretrained_backbone=False)
    return count_params(model), count_macs(model, (size, size))


def pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.2f}%"


def main() -> None:
    print("| variant | input | params | MACs | ref params | ref MACs | Δ ref params | Δ ref MACs | paper | "
          "Δ paper params | Δ paper MACs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, spec in NAMED_VARIANTS.items():
        params, macs = complexity(name)
        ref = reference_counts(name, spec.resolution)
        paper_p, paper_m = PAPER[name]
        ref_cols = (f"{ref[0]:,} | {ref[1] / 1e9:.3f}G | {pct(params, ref[0])} | {pct(macs, ref[1])}" if ref
                    else "- | - | - | -")
        paper_macs = (f"{paper_m}B", pct(macs / 1e9, paper_m)) if paper_m else ("-", "-")
        print(f"| {name} | {spec.resolution} | {params:,} | {macs / 1e9:.3f}G | {ref_cols} | "
              f"{paper_p}M / {paper_macs[0]} | {pct(params / 1e6, paper_p)} | {paper_macs[1]} |")
    print("\n| φ | input | BiFPN | params | MACs | named | Δ params | Δ MACs |")
    print("|---|---|---|---|---|---|---|---|")
    for phi in range(8):
        named = "d7x" if phi == 7 else f"d{phi}"
        spec = EFFICIENTDETS[named]
        custom = complexity(float(phi))
        reference = complexity(named)
        c = resolve(float(phi))
        print(f"| {phi} | {c.image_size} | {c.fpn_channels}×{c.fpn_layers} | {custom[0]:,} | {custom[1] / 1e9:.2f}G | "
              f"{named} ({spec.image_size}, {spec.fpn_channels}×{spec.fpn_layers}) | {pct(custom[0], reference[0])} | "
              f"{pct(custom[1], reference[1])} |")


if __name__ == "__main__":
    main()
