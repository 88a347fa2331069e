"""Provenance below every stage: ``build.json`` writing, tool versions, effedge's code fingerprint and the
identity every cache key holds."""
from __future__ import annotations

import collections
import functools
import hashlib
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

import effedge
from effedge.io import MANIFEST, write_json

_TOOLS = ("torch", "onnx", "onnxsim", "onnxruntime", "nvidia-modelopt", "tensorrt", "tensorrt-rtx", "cuda-python",
          "pycuda", "numpy")


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the tools a build may involve (read from package metadata, nothing imported)."""
    versions: dict[str, str | None] = {"effedge": effedge.__version__, "python": platform.python_version()}
    for tool in _TOOLS:
        try:
            versions[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            versions[tool] = None
    return versions


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """A hash of effedge's own source: cached artefacts made by other code are never reused."""
    root = Path(__file__).resolve().parent.parent  # the whole effedge package, not this room alone
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_identity(*tools: str) -> dict[str, str | None]:
    """What a cache key must hold besides the inputs: effedge's code and the versions of ``tools``."""
    versions = tool_versions()
    return {"effedge_code": code_fingerprint(), **{tool: versions.get(tool) for tool in tools}}


def onnx_summary(model) -> dict[str, Any]:
    """Node count, op histogram, opset and I/O of an ONNX ``ModelProto``."""
    from onnx import helper

    def tensors(values):
        out = []
        for value in values:
            tensor_type = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tensor_type.shape.dim]
            out.append({"name": value.name, "shape": shape,
                        "dtype": helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name})
        return out

    ops = collections.Counter(node.op_type for node in model.graph.node)
    return {
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": tensors(model.graph.input),
        "outputs": tensors(model.graph.output),
    }


def write_manifest(out_dir: Path, data: dict[str, Any]) -> Path:
    path = out_dir / MANIFEST
    write_json(path, data)
    return path
