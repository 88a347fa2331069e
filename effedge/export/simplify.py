"""Simplify an exported graph (onnxsim + effedge's own passes) and prove it still computes the same thing.

onnxsim folds constants — BatchNorm into Conv, the BiFPN's normalized fusion weights, the static 'same'
pads into the Conv/MaxPool ``pads`` attributes — and :mod:`effedge.export.graph` removes what it leaves
(Constant nodes, fusion multiplications foldable into convolutions). The parity check then runs the result
in ONNX Runtime against the PyTorch outputs; a mismatch is an error naming the output and the difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from effedge.errors import RunError


class ParityError(RunError):
    """ONNX Runtime's outputs differ from PyTorch's beyond tolerance."""


def simplify_model(model):
    """Simplified copy of an ONNX ``ModelProto`` (checked with ``onnx.checker``)."""
    import onnx
    import onnxsim

    from effedge.export.graph import constants_to_initializers, fold_scales_into_convs

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RunError("onnxsim could not validate the simplified graph; try another onnxsim version "
                           "and report the model")
    constants_to_initializers(simplified.graph)
    fold_scales_into_convs(simplified.graph)
    onnx.checker.check_model(simplified)
    return simplified


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs_diff: float
    scale: float  # max |reference| over finite values, at least 1
    tolerance: float  # allowed max |diff| = relative tolerance × scale

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def compare_output(name: str, got: np.ndarray, reference: np.ndarray, rtol: float) -> OutputParity:
    """Max |got − reference| over finite values, allowed up to ``rtol × max(1, max|reference|)``: absolute for
    outputs within ±1, relative for large ones. Non-finite values (e.g. exp overflow) must match exactly."""
    if got.shape != reference.shape:
        raise ParityError(f"parity check: output '{name}' has shape {got.shape} in ONNX Runtime, "
                          f"{reference.shape} in PyTorch")
    reference = reference.astype(np.float64)
    got = got.astype(np.float64)
    finite = np.isfinite(reference)
    if not np.array_equal(reference[~finite], got[~finite], equal_nan=True):
        return OutputParity(name, float("inf"), 1.0, 0.0)
    if not finite.any():
        return OutputParity(name, 0.0, 1.0, rtol)
    scale = max(1.0, float(np.max(np.abs(reference[finite]))))
    diff = float(np.max(np.abs(got[finite] - reference[finite])))
    return OutputParity(name, diff if np.isfinite(diff) else float("inf"), scale, rtol * scale)


def check_parity(onnx_path: Path, feed: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                 rtol: float) -> list[OutputParity]:
    """Run ``onnx_path`` in ONNX Runtime (CPU) on ``feed`` and compare each output with ``expected`` (see
    :func:`compare_output`). Raises :class:`ParityError` naming the worst failing output."""
    from effedge.runtime.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(onnx_path) as runner:
        actual = runner.infer(feed)
    results = []
    for name, reference in expected.items():
        if name not in actual:
            raise ParityError(f"parity check: output '{name}' is missing from {onnx_path.name}")
        results.append(compare_output(name, actual[name], reference, rtol))
    failed = [r for r in results if not r.ok]
    if failed:
        worst = max(failed, key=lambda r: r.max_abs_diff / max(r.tolerance, 1e-30))
        raise ParityError(f"parity check failed: output '{worst.name}' differs from PyTorch by "
                          f"{worst.max_abs_diff:.3g} (allowed {worst.tolerance:.3g}); the export is wrong — "
                          "please report it with the command you ran")
    return results
