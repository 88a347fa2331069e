"""``Detector``: images in, boxes in original-image coordinates out, for an engine or an ONNX file.

Preprocessing is the compiled model's own (letterbox to its input, normalization as compiled: see
build.json), the backend follows the file (``.engine`` -> TensorRT, or TensorRT-RTX where the engine's
build.json entry says so; ``.onnx`` -> ONNX Runtime), and the graph's outputs decide the postprocessing:
decoded boxes + scores get per-class NMS in NumPy; an EfficientNMS or ONNX NonMaxSuppression tail is read as
is. Importing this module needs only NumPy.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from effedge.io import atomic_write
from effedge.errors import EffedgeError
from effedge.io import MANIFEST, read_manifest
from effedge.runtime.labels import Labels, labels_for, random_weights_warning
from effedge.runtime.preprocess import letterbox, to_model_input

RAW_OUTPUTS = {"boxes", "scores"}
EFFICIENTNMS_OUTPUTS = {"num_detections", "detection_boxes", "detection_scores", "detection_classes"}
ONNX_NMS_OUTPUTS = {"selected_indices", "detection_boxes", "detection_scores"}

Image = Union[str, Path, np.ndarray]
DEFAULT_CHUNK = 8  # images per inference where the backend sets no batch limit (bounds the memory of long lists)


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


@dataclass
class FileResult:
    """One image file's outcome: its ``detections``, or the ``error`` that kept it from being read."""

    path: Path
    detections: Optional[Detections]
    error: Optional[str] = None


class Detector:
    """Run a compiled EfficientDet. Use as a context manager (or call ``close``).

    >>> with Detector("runs/d0-fp16-tensorrt-…/model.fp16.engine") as detector:   # doctest: +SKIP
    ...     detections = detector(["street.jpg"])[0]
    """

    def __init__(self, model: Union[str, Path], *, score_threshold: float = 0.3, iou_threshold: float = 0.5,
                 max_detections: int = 100, manifest: Optional[dict] = None,
                 labels_file: Optional[Union[str, Path]] = None):
        self.path = Path(model)
        if not self.path.is_file():
            raise EffedgeError(f"model {self.path} not found")
        self.manifest = manifest if manifest is not None else (
            read_manifest(self.path.parent) if (self.path.parent / MANIFEST).is_file() else {})
        self.score_threshold, self.iou_threshold, self.max_detections = score_threshold, iou_threshold, max_detections
        self.runner = self._make_runner()
        self.runner.__enter__()
        try:
            self._configure()
            # class names: --labels, else build.json's, else the family's (COCO-90, ImageNet-1k); None if unknown
            self.labels = labels_for(self.manifest, self.num_classes, labels_file)
        except BaseException:
            self.close()
            raise

    def _make_runner(self):
        if self.path.suffix in (".engine", ".plan"):
            from effedge.runtime.engines import engine_runner

            return engine_runner(self.path, self.manifest)
        if self.path.suffix == ".onnx":
            from effedge.runtime.onnxruntime import OnnxRuntimeRunner

            return OnnxRuntimeRunner(self.path)
        raise EffedgeError(f"{self.path.name}: expected a .engine or .onnx file")

    def _configure(self) -> None:
        inputs = self.runner.input_info()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise EffedgeError(f"{self.path.name} is not an effedge detector: it takes "
                               f"{[(i.name, i.shape) for i in inputs]}, expected one image input")
        self.input = inputs[0]
        self.format = "uint8" if self.input.dtype == np.uint8 else "float"
        shape = self.input.shape
        height, width = (shape[1], shape[2]) if self.format == "uint8" else (shape[2], shape[3])
        if not all(isinstance(d, int) and d > 0 for d in (height, width)):
            raise EffedgeError(f"{self.path.name}: the input size {shape} is not static")
        self.size = (height, width)
        # Images go to the model in chunks the engine takes: exactly a static batch (padded), at most a dynamic
        # engine's profile maximum (padded up to its minimum); DEFAULT_CHUNK where the backend sets no limit.
        self.min_batch, self.max_batch = self.runner.batch_range()
        outputs = {o.name: o for o in self.runner.output_info()}
        names = set(outputs)
        scores_classes = outputs["scores"].shape[-1] if "scores" in outputs else None
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

    def close(self) -> None:
        if self.runner is not None:
            self.runner.__exit__(None, None, None)
            self.runner = None

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def warnings(self) -> list[str]:
        """What the caller should tell the user once about this model's detections (random weights)."""
        note = random_weights_warning(self.manifest)
        return [note] if note else []

    def __call__(self, images: Sequence[Image]) -> list[Detections]:
        if isinstance(images, (str, Path, np.ndarray)):
            raise EffedgeError("Detector takes a list of images (paths or HWC uint8 RGB arrays)")
        images = list(images)
        chunk = self.max_batch or DEFAULT_CHUNK
        results = []
        for start in range(0, len(images), chunk):
            results.extend(self._infer([self._prepare(image) for image in images[start:start + chunk]]))
        return results

    def detect_files(self, paths: Sequence[Union[str, Path]],
                     progress: Callable[[Iterable, int, str], Iterable] = lambda items, total, description: items
                     ) -> list[FileResult]:
        """Detections of each file, in order; a file that cannot be read (missing, truncated, not an image) gets
        its error and the others go on. ``progress(items, total, description)`` wraps the loop (a progress bar)."""
        paths = [Path(p) for p in paths]
        chunk = self.max_batch or DEFAULT_CHUNK
        results: list[Optional[FileResult]] = [None] * len(paths)
        pending: list[tuple[int, tuple[np.ndarray, _BoxMapping]]] = []

        def flush() -> None:
            for (index, _), detections in zip(pending, self._infer([prepared for _, prepared in pending])):
                results[index] = FileResult(paths[index], detections)
            pending.clear()

        for index, path in enumerate(progress(paths, len(paths), "detecting")):
            try:
                pending.append((index, self._prepare(path)))
            except EffedgeError as exc:
                results[index] = FileResult(path, None, str(exc))
                continue
            if len(pending) == chunk:
                flush()
        if pending:
            flush()
        return results

    def _infer(self, group: list[tuple[np.ndarray, "_BoxMapping"]]) -> list[Detections]:
        canvases = np.stack([canvas for canvas, _ in group])
        if len(group) < self.min_batch:  # a static batch or a profile's minimum: pad with copies
            canvases = np.concatenate([canvases, np.repeat(canvases[-1:], self.min_batch - len(group), 0)])
        outputs = self.runner.infer({self.input.name: to_model_input(canvases, self.format)})
        return [self._detections(outputs, index, mapping) for index, (_, mapping) in enumerate(group)]

    def _prepare(self, image: Image) -> tuple[np.ndarray, _BoxMapping]:
        reduction, size = 1, None
        if isinstance(image, (str, Path)):
            from effedge.runtime.images import ImageDecodeError, decode_image

            if not Path(image).is_file():
                raise EffedgeError(f"image {image} not found")
            try:
                decoded = decode_image(Path(image), self.size)  # a large file is decoded reduced
            except ImageDecodeError as exc:
                raise EffedgeError(f"cannot decode {image}: {exc}") from exc
            image, reduction, size = decoded.pixels, decoded.reduction, decoded.size
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise EffedgeError(f"images must be HWC uint8 RGB arrays, got {array.dtype} {array.shape}")
        canvas, scale = letterbox(array, *self.size)
        return canvas, _BoxMapping(reduction / scale, size or array.shape[:2])

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
