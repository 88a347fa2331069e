"""Class names (and COCO category ids) for a model's head indices.

A build records its names when it knows them (``class_names`` in build.json: the demo detector's shapes);
otherwise they follow the checkpoint family: a 90-class EfficientDet head is the TF-ported COCO head, whose slot
``i`` is COCO category id ``i + 1`` (COCO's original 91-id space without the background; the 10 ids COCO never
annotated have no name), and a 1000-class EfficientNet is ImageNet-1k. ``--labels FILE`` (one name per line,
line i = class i) overrides both. The lists ship in effedge/data/labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from effedge.errors import EffedgeError

LABELS_DIR = Path(__file__).resolve().parent.parent / "data" / "labels"
COCO_HEAD_CLASSES = 90
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class Labels:
    """``names[i]`` names class ``i`` (None for a slot without one); ``category_ids[i]`` is its COCO category id
    where the head is COCO's; ``source`` says where the names came from."""

    names: tuple[Optional[str], ...]
    source: str
    category_ids: Optional[tuple[int, ...]] = None

    def name(self, cls: int) -> Optional[str]:
        return self.names[cls] if 0 <= cls < len(self.names) else None

    def category_id(self, cls: int) -> Optional[int]:
        return self.category_ids[cls] if self.category_ids and 0 <= cls < len(self.category_ids) else None


def read_names(path: Path) -> tuple[Optional[str], ...]:
    """One name per line (line i = class i); an empty line is a class without a name; trailing empty lines end
    the file."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM is not part of the name
    except (OSError, UnicodeDecodeError) as exc:
        raise EffedgeError(f"cannot read the labels file {path}: {exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise EffedgeError(f"the labels file {path} is empty; write one class name per line")
    return tuple(line.strip() or None for line in lines)


def coco90() -> Labels:
    return Labels(read_names(LABELS_DIR / "coco90.txt"), "COCO (90-slot head)",
                  tuple(range(1, COCO_HEAD_CLASSES + 1)))


def imagenet1k() -> Labels:
    return Labels(read_names(LABELS_DIR / "imagenet1k.txt"), "ImageNet-1k")


def labels_for(manifest: Mapping, num_classes: Optional[int] = None,
               labels_file: Optional[str | Path] = None) -> Optional[Labels]:
    """The names of a build's classes: ``labels_file`` if given (refused unless it has one line per class), else
    the names recorded in build.json, else the family's (COCO-90, ImageNet-1k); None where nothing is known."""
    count = num_classes if num_classes is not None else manifest.get("num_classes")
    if labels_file is not None:
        names = read_names(Path(labels_file))
        if count is not None and len(names) != count:
            raise EffedgeError(f"--labels {labels_file} has {len(names)} line(s) but the model has {count} classes; "
                               "write one name per class, line i = class i")
        return Labels(names, f"file {labels_file}")
    recorded: Optional[Sequence[str]] = manifest.get("class_names")
    if recorded and (count is None or len(recorded) == count):
        return Labels(tuple(recorded), "build.json")
    family = manifest.get("family")
    if count == COCO_HEAD_CLASSES and family in (None, "efficientdet"):
        return coco90()
    if count == IMAGENET_CLASSES and family in (None, "efficientnet"):
        return imagenet1k()
    return None


def random_weights_warning(manifest: Mapping, *, timing: bool = False, kind: str = "detector") -> Optional[str]:
    """The one-line warning for a build exported without weights (build.json ``weights: random``); ``timing``:
    the wording for bench, where the network's latency does not depend on the weights but an NMS tail's does;
    ``kind``: "detector" or "classifier", whose answers mean nothing."""
    if manifest.get("weights") != "random":
        return None
    if timing:
        return ("random weights: the network's latency is a trained model's, but an NMS tail's and end-to-end "
                "times depend on how many boxes pass, which random weights do not set as a trained model would "
                "(compiled without --weights; try --weights demo, or a checkpoint)")
    if kind == "classifier":
        return ("random weights: these classes mean nothing (the model was compiled without --weights; give it a "
                "checkpoint)")
    return ("random weights: these detections mean nothing (the model was compiled without --weights; "
            "try --weights demo, or a checkpoint)")
