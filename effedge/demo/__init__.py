"""The offline demo: a trained detector shipped with the package (``--weights demo``) and the synthetic images it
was trained on (``effedge demo-images``), so that compile → detect → eval shows true results without a download.

The detector is EfficientDet-D0 at 256×256 with a 4-class head (circle, square, triangle, cross), trained with
tools/train_reference.py on :mod:`effedge.demo.shapes` images; see effedge/data/demo/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from effedge import shipped_data
from effedge.errors import EffedgeError

DEMO_NAME = "demo"
DEMO_DIR = shipped_data("demo")
DEMO_WEIGHTS = DEMO_DIR / "shapes_d0_256.fp16.pth"


@dataclass(frozen=True)
class DemoModel:
    """What ``--weights demo`` sets: the checkpoint and the model it fits."""

    weights: Path
    variant: str
    image_size: int
    num_classes: int
    pad: str
    class_names: tuple[str, ...]


def demo_model() -> DemoModel:
    from effedge.runtime.labels import read_names

    names = read_names(DEMO_DIR / "labels.txt")
    return DemoModel(DEMO_WEIGHTS, "d0", 256, len(names), "same", tuple(names))


def resolve_demo(variant: Optional[Union[str, float]], image_size: Optional[int],
                 num_classes: Optional[int]) -> DemoModel:
    """The demo model for ``--weights demo``; an explicit --variant/--phi, --imgsz or --num-classes that differs
    from it is refused (the checkpoint fits only D0 with 4 classes; it was trained at 256 px)."""
    demo = demo_model()
    conflicts = [f"{flag} {given}" for flag, given, wanted in (
        ("--variant/--phi", variant, demo.variant), ("--imgsz", image_size, demo.image_size),
        ("--num-classes", num_classes, demo.num_classes)) if given is not None and given != wanted
        and not (flag == "--variant/--phi" and given in (0, 0.0))]
    if conflicts:
        raise EffedgeError(f"--weights demo is D0 at {demo.image_size} px with {demo.num_classes} classes; drop "
                           f"{', '.join(conflicts)}")
    return demo


def demo_images(out_dir: Union[str, Path], count: int = 16, *, seed: int = 3) -> Path:
    """Write ``count`` shapes images (256×256 PNG, ``out_dir/images``) and their COCO annotations
    (``out_dir/instances.json``, returned). The default seed is none of the training (1) or validation (2) sets."""
    from effedge.demo.shapes import generate

    if count < 1:
        raise EffedgeError(f"--count {count}: write at least 1 image")
    return generate(out_dir, count, size=(256, 256), seed=seed)
