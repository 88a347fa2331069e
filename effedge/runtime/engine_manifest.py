"""What build.json says about an engine file, and whether this TensorRT and GPU can run it: read before
deserializing, by every TensorRT flavour's runner (so neither runner module needs the other)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from effedge.engine.capabilities import PRODUCTS, capabilities_of, compute_capability_targets
from effedge.errors import EffedgeError


def engine_entry(manifest: Mapping, engine_path: Path) -> Optional[Mapping]:
    """The build.json entry ``effedge compile``/``effedge build`` wrote for this engine file (``engines[<file
    name>]``), or None where there is none or it describes an earlier file: a recorded size that differs means
    the engine was replaced since (rebuilt by another tool), and the entry says nothing about it."""
    entry = (manifest.get("engines") or {}).get(engine_path.name)
    if not entry:
        return None
    recorded = entry.get("bytes")
    if recorded is not None and engine_path.is_file() and engine_path.stat().st_size != recorded:
        return None
    return entry


def engine_backend(manifest: Mapping, engine_path: Path) -> str:
    """"tensorrt-rtx" for an engine its build.json entry says TensorRT-RTX built, else "tensorrt"."""
    entry = engine_entry(manifest, engine_path) or {}
    return "tensorrt-rtx" if entry.get("backend") == "tensorrt-rtx" else "tensorrt"


def check_engine_compatible(entry: Optional[Mapping], trt, compute_capability: Optional[str], *,
                            gpu_name: Optional[str] = None) -> None:
    """Refuse, before deserializing, an engine that ``trt`` cannot run on this GPU, in one line saying what to
    do. ``entry`` is the engine's own build.json entry (:func:`engine_entry`; None: nothing is known about the
    engine, so only the GPU is checked).

    Full TensorRT runs an engine with the version and on the GPU (compute capability) that built it, unless it
    was built version- or hardware-compatible. TensorRT-RTX runs only on the compute capabilities it knows (it
    refuses Hopper and Jetson Orin) and, where the engine was built for chosen targets, on those.
    """
    caps = capabilities_of(trt)
    this_gpu = f"this GPU ({gpu_name})" if gpu_name else "this GPU"
    if caps.compute_capability_targets and compute_capability:
        supported = list(compute_capability_targets(trt))
        if compute_capability not in supported:
            raise EffedgeError(f"{caps.product} engines run on compute capability {', '.join(supported)}; "
                               f"{this_gpu} is {compute_capability}: build a full TensorRT engine on it instead "
                               "(effedge build MODEL.onnx --backend tensorrt)")
    if not entry:
        return
    built_by = entry.get("backend")
    if built_by in PRODUCTS and built_by != caps.backend:
        product = entry.get("product") or PRODUCTS[built_by][1]
        raise EffedgeError(f"the engine was built with {product} {entry.get('version', '')}".rstrip()
                           + f", which {caps.product} cannot run: use --backend {built_by}")
    options = entry.get("options") or {}
    if caps.compute_capability_targets:
        targets = entry.get("compute_capabilities") or ["default"]
        if "default" not in targets and compute_capability and compute_capability not in targets:
            raise EffedgeError(f"the engine was built for compute capability {', '.join(targets)}; {this_gpu} is "
                               f"{compute_capability}: rebuild it with effedge build --backend tensorrt-rtx "
                               f"--compute-capability {compute_capability}")
        return  # the TensorRT-RTX version is judged by Runtime.get_engine_validity, from the plan itself
    built_with = entry.get("version")
    if built_with and built_with != trt.__version__ and not options.get("version_compatible"):
        raise EffedgeError(f"the engine was built with TensorRT {built_with}, this machine has {trt.__version__}; "
                           "rebuild it here (effedge build)")
    built_for = entry.get("compute_capability")
    if built_for and compute_capability and built_for != compute_capability and not options.get("hardware_compatible"):
        raise EffedgeError(f"the engine was built for a GPU of compute capability {built_for}, {this_gpu} is "
                           f"{compute_capability}; rebuild it here (effedge build)")
