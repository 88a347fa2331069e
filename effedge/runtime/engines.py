"""The runner for an engine file: full TensorRT or TensorRT-RTX, as its build.json entry says."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from effedge.runtime.engine_manifest import engine_backend
from effedge.runtime.tensorrt import TensorRTRunner
from effedge.runtime.tensorrt_rtx import TensorRTRTXRunner


def engine_runner(engine_path: str | Path, manifest: Mapping, backend: Optional[str] = None, *,
                  cuda_graph: bool = False) -> TensorRTRunner:
    """The runner for an engine file: ``backend`` ("tensorrt" or "tensorrt-rtx"), or by default the one that
    built it according to its build.json entry."""
    engine_path = Path(engine_path)
    if (backend or engine_backend(manifest, engine_path)) == "tensorrt-rtx":
        return TensorRTRTXRunner(engine_path, manifest=manifest, cuda_graph=cuda_graph)
    return TensorRTRunner(engine_path, manifest=manifest, cuda_graph=cuda_graph)
