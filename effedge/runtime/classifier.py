"""``Classifier``: images in, the top classes with their probabilities out, for an engine or an ONNX file.

Preprocessing is the classifier's own, as its family was evaluated: resize the shorter side to
``size / crop_pct``, take the centre crop, normalize with the mean/std build.json or the graph's metadata
records (:mod:`effedge.runtime.preprocess`). Probabilities are the softmax of the logits; class names come
from ``labels=`` (a file, one name per line), build.json's class names or the ImageNet-1k list for a
1000-class head. Importing this module needs only NumPy.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from effedge.errors import EffedgeError
from effedge.runtime.labels import labels_for
from effedge.runtime.model import CompiledModel, FileResult, Image, Progress, no_progress


class Prediction(NamedTuple):
    class_index: int
    label: Optional[str]  # None where no name is known for the class
    probability: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (stable for large logits)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Classifier(CompiledModel):
    """Run a compiled EfficientNet classifier. Use as a context manager (or call ``close``).

    >>> with Classifier("runs/b0-fp16-…/model.fp16.onnx", top_k=3) as classifier:   # doctest: +SKIP
    ...     classifier.classify(["cat.jpg"])[0]
    [Prediction(class_index=285, label='Egyptian cat', probability=0.61), ...]
    """

    kind_name = "classifier"

    def __init__(self, model: Union[str, Path], *, backend: Optional[str] = None, top_k: int = 5,
                 labels: Optional[Union[str, Path]] = None, manifest: Optional[dict] = None):
        if top_k < 1:
            raise EffedgeError(f"top-k {top_k}: use at least 1")
        self.top_k, self.labels_file = top_k, labels
        super().__init__(model, backend=backend, manifest=manifest)

    def _configure(self) -> None:
        outputs = list(self.outputs.values())
        if not self.classifier or len(outputs) != 1 or len(outputs[0].shape) != 2:
            raise EffedgeError(f"{self.path.name} is not a classifier (outputs "
                               f"{[(o.name, o.shape) for o in outputs]}, expected one [batch, classes]): a detector "
                               "runs with effedge detect, and effedge eval --annotations")
        self.logits = outputs[0].name
        classes = outputs[0].shape[1]
        self.num_classes = self.manifest.get("num_classes") or (classes if isinstance(classes, int) else None)
        self.labels = labels_for(self.manifest, self.num_classes, self.labels_file)

    def probabilities(self, images: Sequence[Image]) -> np.ndarray:
        """[images, classes]: the softmax of the logits of each image."""
        return np.stack(self._run(images))

    def classify(self, images: Sequence[Image]) -> list[list[Prediction]]:
        """The ``top_k`` classes of each image, most probable first."""
        return [self.top(p) for p in self.probabilities(images)]

    __call__ = classify

    def classify_files(self, paths: Sequence[Union[str, Path]], progress: Progress = no_progress) -> list[FileResult]:
        """The probabilities of each file, in order (``FileResult.classes``, [classes]; :meth:`top` ranks them);
        a file that cannot be read gets its error and the others go on."""
        return self.run_files(paths, progress, "classifying")

    def top(self, probabilities: np.ndarray, k: Optional[int] = None) -> list[Prediction]:
        """The ``k`` (default ``top_k``) most probable classes of one image's probabilities."""
        order = np.argsort(-probabilities, kind="stable")[:k or self.top_k]
        return [Prediction(int(i), self.labels.name(int(i)) if self.labels is not None else None,
                           float(probabilities[i])) for i in order]

    def _prepare(self, image: Image) -> tuple[np.ndarray, None]:
        array, _, _ = self._load(image)
        canvas, _ = self.preprocessing.fit(array, self.size)
        return canvas, None

    def _result(self, outputs: dict, index: int, context: None) -> np.ndarray:
        return softmax(outputs[self.logits][index])
