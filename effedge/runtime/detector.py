"""``Detector``: images in, boxes in original-image coordinates out, for an engine or an ONNX file.

Preprocessing is the compiled model's own (letterbox to its input in its mean colour, normalized with the
mean/std build.json or the graph's metadata records: see :mod:`effedge.runtime.model`), the backend follows the file (``.engine`` -> TensorRT, or TensorRT-RTX where the engine's
build.json entry says so; ``.onnx`` -> ONNX Runtime), and the graph's outputs decide the postprocessing:
decoded boxes + scores get per-class NMS in NumPy; an EfficientNMS or ONNX NonMaxSuppression tail is read as
is. Importing this module needs only NumPy.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from effedge.io import atomic_write
from effedge.errors import EffedgeError
from effedge.runtime.labels import Labels, labels_for
from effedge.runtime.model import CompiledModel, FileResult, Image, Progress, no_progress

RAW_OUTPUTS = {"boxes", "scores"}
EFFICIENTNMS_OUTPUTS = {"num_detections", "detection_boxes", "detection_scores", "detection_classes"}
ONNX_NMS_OUTPUTS = {"selected_indices", "detection_boxes", "detection_scores"}


@dataclass(frozen=True)
class _BoxMapping:
    """Model pixels -> the original image's: multiply by ``factor``, clip to ``size`` (H, W)."""

    factor: float
    size: tuple[int, int]


@dataclass
class Detections:
    """Detections of one image: ``boxes [K, 4]`` (x1, y1, x2, y2 in original pixels), ``scores [K]``,
    ``classes [K]`` (0-based class indices of the model's head), best first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self, labels: Optional[Labels] = None) -> list[dict]:
        """One dict per detection: ``box``, ``score``, ``class`` (the head index) and, with ``labels``, its
        ``name`` (None for a slot without one) and ``category_id`` where the head is COCO's."""
        entries = []
        for box, score, cls in zip(self.boxes, self.scores, self.classes):
            entry = {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4), "class": int(cls)}
            if labels is not None:
                entry["name"] = labels.name(int(cls))
                if labels.category_ids is not None:
                    entry["category_id"] = labels.category_id(int(cls))
            entries.append(entry)
        return entries


class Detector(CompiledModel):
    """Run a compiled EfficientDet. Use as a context manager (or call ``close``).

    >>> with Detector("runs/d0-fp16-tensorrt-…/model.fp16.engine") as detector:   # doctest: +SKIP
    ...     detections = detector(["street.jpg"])[0]
    """

    kind_name = "detector"

    def __init__(self, model: Union[str, Path], *, score_threshold: float = 0.3, iou_threshold: float = 0.5,
                 max_detections: int = 100, manifest: Optional[dict] = None,
                 labels_file: Optional[Union[str, Path]] = None, backend: Optional[str] = None):
        self.score_threshold, self.iou_threshold, self.max_detections = score_threshold, iou_threshold, max_detections
        self.labels_file = labels_file
        super().__init__(model, backend=backend, manifest=manifest)

    def _configure(self) -> None:
        names = set(self.outputs)
        if self.classifier:
            raise EffedgeError(f"{self.path.name} is a classifier (outputs {sorted(names)}), not a detector: run it "
                               "with effedge classify, and effedge eval without --annotations")
        scores_classes = self.outputs["scores"].shape[-1] if "scores" in self.outputs else None
        self.num_classes = self.manifest.get("num_classes") or (
            scores_classes if isinstance(scores_classes, int) else None)
        if EFFICIENTNMS_OUTPUTS <= names:
            self.kind = "efficientnms"
        elif ONNX_NMS_OUTPUTS <= names:
            self.kind = "onnx_nms"
        elif RAW_OUTPUTS <= names:
            self.kind = "raw"
        else:
            raise EffedgeError(f"{self.path.name} has outputs {sorted(names)}; expected an effedge detector's "
                               f"(boxes + scores, or an NMS tail: {sorted(EFFICIENTNMS_OUTPUTS)} or "
                               f"{sorted(ONNX_NMS_OUTPUTS)})")
        # class names: --labels, else build.json's, else the family's (COCO-90, ImageNet-1k); None if unknown
        self.labels = labels_for(self.manifest, self.num_classes, self.labels_file)

    def __call__(self, images: Sequence[Image]) -> list[Detections]:
        return self._run(images)

    def detect_files(self, paths: Sequence[Union[str, Path]], progress: Progress = no_progress) -> list[FileResult]:
        """Detections of each file, in order (``FileResult.detections``); a file that cannot be read gets its
        error and the others go on. ``progress(items, total, description)`` wraps the loop (a progress bar)."""
        return self.run_files(paths, progress, "detecting")

    def _prepare(self, image: Image) -> tuple[np.ndarray, _BoxMapping]:
        array, reduction, size = self._load(image)
        canvas, scale = self.preprocessing.fit(array, self.size)
        return canvas, _BoxMapping(reduction / scale, size or array.shape[:2])

    def _result(self, outputs: dict, index: int, mapping: _BoxMapping) -> Detections:
        return self._detections(outputs, index, mapping)

    def _detections(self, outputs: dict, index: int, mapping: _BoxMapping) -> Detections:
        from effedge.runtime.nms import select_detections

        if self.kind == "raw":
            boxes, scores, classes = select_detections(
                outputs["boxes"][index], outputs["scores"][index], score_threshold=self.score_threshold,
                iou_threshold=self.iou_threshold, max_detections=self.max_detections)
        elif self.kind == "efficientnms":
            count = int(outputs["num_detections"][index, 0])
            boxes = outputs["detection_boxes"][index, :count]
            scores = outputs["detection_scores"][index, :count]
            classes = outputs["detection_classes"][index, :count]
        else:
            mine = outputs["selected_indices"][:, 0] == index
            boxes, scores = outputs["detection_boxes"][mine], outputs["detection_scores"][mine]
            classes = outputs["selected_indices"][mine, 1]
        keep = scores >= self.score_threshold
        order = np.argsort(-scores[keep], kind="stable")[: self.max_detections]
        boxes, scores, classes = boxes[keep][order], scores[keep][order], classes[keep][order]
        height, width = mapping.size
        boxes = np.clip(boxes * mapping.factor, 0, [width, height, width, height]).astype(np.float32)
        return Detections(boxes, scores.astype(np.float32), classes.astype(np.int64))


def line_width(size: tuple[int, int]) -> int:
    """Box outline in pixels for an image of ``size`` (H, W): visible on a 4000×3000 photo as on a thumbnail."""
    return max(2, round(min(size) / 300))


def font_size(size: tuple[int, int]) -> int:
    return max(12, round(min(size) / 40))


def draw(image_path: Path, detections: Detections, target: Path, labels: Optional[Labels] = None) -> None:
    """Save ``image_path`` with its detections drawn (class name, or index, and score; outline and text scaled
    to the image), written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    from effedge.runtime.images import load_rgb

    canvas = Image.fromarray(load_rgb(image_path))
    pen = ImageDraw.Draw(canvas)
    size = (canvas.height, canvas.width)
    width = line_width(size)
    try:
        font = ImageFont.load_default(size=font_size(size))
    except TypeError:  # Pillow < 10.1: the fixed bitmap font only
        font = ImageFont.load_default()
    for box, score, cls in zip(detections.boxes, detections.scores, detections.classes):
        colour = tuple(int(c) for c in np.random.default_rng(int(cls)).integers(64, 256, 3))
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        name = labels.name(int(cls)) if labels is not None else None
        text = f"{name or int(cls)} {score:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        y = y1 - (bottom - top) - 2 * width if y1 - (bottom - top) - 2 * width >= 0 else y1  # above the box if room
        pen.rectangle([x1, y, x1 + right - left + 2 * width, y + bottom - top + 2 * width], fill=colour)
        pen.text((x1 + width - left, y + width - top), text, fill=(0, 0, 0), font=font)
    image = io.BytesIO()
    canvas.save(image, format="JPEG", quality=90)
    atomic_write(target, image.getvalue())
