"""What the Detector and the Classifier share: a compiled model file (engine or ONNX) opened with the runner its
backend needs, its one image input, its preprocessing (as build.json or the graph's metadata says), images
decoded and fed in the batches the model takes. Importing it needs only NumPy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from effedge.errors import EffedgeError
from effedge.io import MANIFEST, read_manifest
from effedge.runtime.base import Runner
from effedge.runtime.labels import random_weights_warning
from effedge.runtime.preprocess import (Preprocessing, graph_input_format, input_layout, is_classifier,
                                        preprocessing_for)

Image = Union[str, Path, np.ndarray]
DEFAULT_CHUNK = 8  # images per inference where the backend sets no batch limit (bounds the memory of long lists)
ENGINE_BACKENDS = ("tensorrt", "tensorrt-rtx")
BACKENDS = ("onnxruntime", *ENGINE_BACKENDS)
Progress = Callable[[Iterable, int, str], Iterable]


def no_progress(items: Iterable, total: int, description: str) -> Iterable:
    return items


def open_runner(path: Path, manifest: Mapping, backend: Optional[str] = None) -> Runner:
    """The runner for a model file: an engine runs in TensorRT or TensorRT-RTX (``backend``, else as its
    build.json entry says), an ONNX file in ONNX Runtime."""
    if backend is not None and backend not in BACKENDS:
        raise EffedgeError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if path.suffix in (".engine", ".plan"):
        if backend == "onnxruntime":
            raise EffedgeError(f"{path.name} is a TensorRT engine: use --backend tensorrt or tensorrt-rtx, or run "
                               "its ONNX file with onnxruntime")
        from effedge.runtime.engines import engine_runner

        return engine_runner(path, manifest, backend)
    if path.suffix == ".onnx":
        if backend in ENGINE_BACKENDS:
            raise EffedgeError(f"{path.name} is an ONNX file, which runs in onnxruntime; build an engine for "
                               f"{backend} first (effedge build {path.name} --backend {backend})")
        from effedge.runtime.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path)
    raise EffedgeError(f"{path.name}: expected a .engine or .onnx file")


@dataclass
class FileResult:
    """One image file's outcome: its ``result`` (the Detector's detections, the Classifier's classes), or the
    ``error`` that kept it from being read."""

    path: Path
    result: Any
    error: Optional[str] = None

    @property
    def detections(self):  # the Detector's name for the result
        return self.result

    @property
    def classes(self):  # the Classifier's
        return self.result


class CompiledModel:
    """A compiled model with one image input (use as a context manager, or call ``close``). Subclasses check
    the outputs (``_configure``), say what an image becomes (``_outputs_of``) and what a prepared image keeps
    besides its pixels (the Detector: how its boxes map back)."""

    kind_name = "model"

    def __init__(self, model: Union[str, Path], *, backend: Optional[str] = None,
                 manifest: Optional[dict] = None):
        self.path = Path(model)
        if not self.path.is_file():
            raise EffedgeError(f"model {self.path} not found")
        self.manifest = manifest if manifest is not None else (
            read_manifest(self.path.parent) if (self.path.parent / MANIFEST).is_file() else {})
        self.runner = open_runner(self.path, self.manifest, backend)
        self.runner.__enter__()
        try:
            self._configure_input()
            self.outputs = {o.name: o for o in self.runner.output_info()}
            self.classifier = is_classifier(self.manifest, [len(o.shape) for o in self.outputs.values()])
            self.preprocessing: Preprocessing = preprocessing_for(self.manifest, self.runner.metadata(),
                                                                  classifier=self.classifier)
            self._configure()
        except BaseException:
            self.close()
            raise

    def _configure_input(self) -> None:
        inputs = self.runner.input_info()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise EffedgeError(f"{self.path.name} is not an effedge {self.kind_name}: it takes "
                               f"{[(i.name, i.shape) for i in inputs]}, expected one image input")
        self.input = inputs[0]
        # a float input may take raw pixels ("pixels"): only build.json or the graph's metadata can say so
        self.format = graph_input_format(self.manifest, self.runner.metadata(), uint8=self.input.dtype == np.uint8)
        shape = self.input.shape
        height, width = (shape[1], shape[2]) if input_layout(self.format) == "NHWC" else (shape[2], shape[3])
        if not all(isinstance(d, int) and d > 0 for d in (height, width)):
            raise EffedgeError(f"{self.path.name}: the input size {shape} is not static")
        self.size = (height, width)
        # Images go to the model in chunks the engine takes: exactly a static batch (padded), at most a dynamic
        # engine's profile maximum (padded up to its minimum); DEFAULT_CHUNK where the backend sets no limit.
        self.min_batch, self.max_batch = self.runner.batch_range()

    def _configure(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.runner is not None:
            self.runner.__exit__(None, None, None)
            self.runner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def warnings(self) -> list[str]:
        """What the caller should tell the user once about this model (random weights, a guessed normalization)."""
        notes = []
        note = random_weights_warning(self.manifest, kind=self.kind_name)
        if note:
            notes.append(note)
        if self.preprocessing.assumed:
            fed = "; fed as normalized float, not pixels" if self.format == "float" else ""  # its type cannot say
            notes.append(f"{self.path.name}: {self.preprocessing.source}{fed} (re-export it with effedge export)")
        return notes

    # --- images in, results out -------------------------------------------------------------------------------

    def _load(self, image: Image) -> tuple[np.ndarray, int, Optional[tuple[int, int]]]:
        """(HWC uint8 RGB pixels, decoding reduction, the file's own size or None for an array)."""
        if isinstance(image, (str, Path)):
            from effedge.runtime.images import ImageDecodeError, decode_image

            if not Path(image).is_file():
                raise EffedgeError(f"image {image} not found")
            try:
                decoded = decode_image(Path(image), self.size)  # a large file is decoded reduced
            except ImageDecodeError as exc:
                raise EffedgeError(f"cannot decode {image}: {exc}") from exc
            return decoded.pixels, decoded.reduction, decoded.size
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise EffedgeError(f"images must be HWC uint8 RGB arrays, got {array.dtype} {array.shape}")
        return array, 1, None

    def _prepare(self, image: Image) -> tuple[np.ndarray, Any]:
        """(model-sized canvas, what the result of this image needs besides the model's outputs)."""
        raise NotImplementedError

    def _result(self, outputs: dict[str, np.ndarray], index: int, context: Any):
        raise NotImplementedError

    def _infer(self, group: list[tuple[np.ndarray, Any]]) -> list:
        canvases = np.stack([canvas for canvas, _ in group])
        if len(group) < self.min_batch:  # a static batch or a profile's minimum: pad with copies
            canvases = np.concatenate([canvases, np.repeat(canvases[-1:], self.min_batch - len(group), 0)])
        outputs = self.runner.infer({self.input.name: self.preprocessing.model_input(canvases, self.format)})
        return [self._result(outputs, index, context) for index, (_, context) in enumerate(group)]

    def _run(self, images: Sequence[Image]) -> list:
        if isinstance(images, (str, Path, np.ndarray)):
            raise EffedgeError(f"{type(self).__name__} takes a list of images (paths or HWC uint8 RGB arrays)")
        images = list(images)
        chunk = self.max_batch or DEFAULT_CHUNK
        results = []
        for start in range(0, len(images), chunk):
            results.extend(self._infer([self._prepare(image) for image in images[start:start + chunk]]))
        return results

    def run_files(self, paths: Sequence[Union[str, Path]], progress: Progress = no_progress,
                  description: str = "running") -> list[FileResult]:
        """The result of each file, in order; a file that cannot be read (missing, truncated, not an image) gets
        its error and the others go on. ``progress(items, total, description)`` wraps the loop (a progress bar)."""
        paths = [Path(p) for p in paths]
        chunk = self.max_batch or DEFAULT_CHUNK
        results: list[Optional[FileResult]] = [None] * len(paths)
        pending: list[tuple[int, tuple[np.ndarray, Any]]] = []

        def flush() -> None:
            for (index, _), result in zip(pending, self._infer([prepared for _, prepared in pending])):
                results[index] = FileResult(paths[index], result)
            pending.clear()

        for index, path in enumerate(progress(paths, len(paths), description)):
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
