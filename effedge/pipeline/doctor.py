"""``effedge doctor``: which components, GPU, backends and precisions this machine has, and why not."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from effedge.errors import EffedgeError
from effedge.provenance import tool_versions


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def diagnose(runs: Path = Path("runs")) -> dict:
    """The report; also where the cache is and how much it and the build folders in ``runs`` hold."""
    from effedge.cache import usage
    from effedge.runtime import cuda
    from effedge.runtime.tensorrt import import_tensorrt
    from effedge.errors import BackendUnavailable, EffedgeError

    try:
        device = cuda.device_info(0)
        gpu, capability, gpu_reason = device.describe(), device.compute_capability, ""
    except EffedgeError as exc:  # no bindings, driver or GPU, or a failing driver: say which
        gpu, capability, gpu_reason = None, None, str(exc)
    backends = []

    workstation = _missing("torch", "onnx", "onnxsim")
    quantizer = _missing("modelopt")
    ort_missing = _missing("onnxruntime")
    precisions = ["fp32", "fp16", "int8", "mixed"] if not quantizer else ["fp32"]
    reason = ""
    if ort_missing:
        reason = "pip install onnxruntime"
    elif quantizer:
        reason = "fp16/int8 graphs need NVIDIA ModelOpt (pip install nvidia-modelopt)"
    backends.append({"name": "onnxruntime", "available": not ort_missing, "precisions": [] if ort_missing else
                     precisions, "reason": reason, "device": "CPU"})

    try:
        trt = import_tensorrt()
        if capability is None:
            backends.append({"name": "tensorrt", "available": False, "precisions": [],
                             "reason": f"TensorRT {trt.__version__} installed, but {gpu_reason}"})
        else:
            major = int(trt.__version__.split(".")[0])
            backends.append({"name": "tensorrt", "available": True, "precisions": ["fp32", "fp16", "int8", "mixed"],
                             "reason": f"TensorRT {trt.__version__}" + (" (opset ≤ 17)" if major == 8 else "")})
    except BackendUnavailable as exc:
        backends.append({"name": "tensorrt", "available": False, "precisions": [], "reason": str(exc)})

    backends.append(_tensorrt_rtx(capability))
    backends.append({"name": "torch", "available": not _missing("torch"), "precisions": ["fp32"] + (
        ["fp16"] if gpu else []), "reason": "" if not _missing("torch") else "pip install torch==2.13.0"})
    return {
        "versions": tool_versions(),
        "gpu": gpu,
        "gpu_reason": gpu_reason,  # why there is none
        "compute_capability": capability,
        "backends": backends,
        "workstation_stages": {"export": not workstation, "quantize": not workstation and not quantizer},
        "missing": {"workstation": workstation, "quantizer": quantizer},
        **usage(runs=runs),  # "cache": root, from, bytes, entries; "runs": dir, bytes, builds
    }


def _tensorrt_rtx(capability) -> dict:
    """TensorRT-RTX builds anywhere (ahead of time); its engines run only on the GPUs it targets."""
    from effedge.engine import capabilities_of, import_trt
    from effedge.engine.capabilities import compute_capability_targets

    entry = {"name": "tensorrt-rtx", "available": False, "precisions": []}
    try:
        trt = import_trt("tensorrt-rtx")
        caps = capabilities_of(trt)
    except EffedgeError as exc:
        return {**entry, "reason": str(exc)}
    targets = compute_capability_targets(trt)
    runs = capability in targets if capability else False
    where = (f"engines run on this GPU ({capability})" if runs else
             f"this GPU ({capability}) cannot run its engines" if capability else "no GPU here to run them")
    return {**entry, "available": True, "precisions": ["fp32", "fp16", "int8", "mixed"], "targets": list(targets),
            "reason": f"{caps.name}: builds ahead of time for compute capability {', '.join(targets)}; {where}"}
