"""A Triton model repository (``NAME/config.pbtxt`` + ``NAME/1/model.plan|model.onnx``) from a build directory."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from effedge.errors import EffedgeError
from effedge.io import read_manifest

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")  # EfficientNMS_TRT


def _deployable(manifest: Mapping, build_dir: Path) -> tuple[str, str]:
    """(file name, Triton platform) of the build's deployable model; refuses what Triton cannot serve."""
    name = (manifest.get("compile") or {}).get("deployable")
    if not name:
        raise EffedgeError(f"{build_dir}/build.json names no deployable model; run effedge compile first")
    if not (build_dir / name).is_file():
        raise EffedgeError(f"{build_dir / name} is missing; rebuild with effedge compile --force")
    if name.endswith(".engine"):
        entry = (manifest.get("engines") or {}).get(name, {})
        if entry.get("backend") == "tensorrt-rtx":
            raise EffedgeError("Triton's TensorRT backend runs full TensorRT, not TensorRT-RTX engines; compile with "
                               "--backend tensorrt (or package the ONNX Runtime build)")
        return name, "tensorrt_plan"
    if manifest.get("nms") == "efficientnms":
        raise EffedgeError("the ONNX graph holds the EfficientNMS_TRT plugin, which ONNX Runtime cannot run; "
                           "compile with --nms none or --nms onnx for Triton's onnxruntime backend")
    return name, "onnxruntime_onnx"


def _outputs(manifest: Mapping, batch: Optional[int]) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, full dims with batch) of the deployable graph's outputs, from build.json."""
    nms = manifest.get("nms", "none")
    k = (manifest.get("compile") or {}).get("config", {}).get("max_detections", 100)
    b = batch if batch is not None else -1
    if nms == "efficientnms":
        return [("num_detections", "int32", [b, 1]), ("detection_boxes", "float32", [b, k, 4]),
                ("detection_scores", "float32", [b, k]), ("detection_classes", "int32", [b, k])]
    if nms == "onnx":
        raise EffedgeError("the ONNX NonMaxSuppression tail has data-dependent output shapes; compile with "
                           "--nms efficientnms (TensorRT) or --nms none for Triton")
    return [(o["name"], o["dtype"], [b] + [d if isinstance(d, int) else -1 for d in o["shape"][1:]])
            for o in manifest["graph"]["simplified"]["outputs"]]


def triton_config(manifest: Mapping[str, Any], name: str, platform: str, engine: Optional[Mapping] = None) -> str:
    """The config.pbtxt text. A static batch N keeps max_batch_size 0 and full dims (Triton must not add a
    batch dimension the graph lacks); a dynamic batch profile gives max_batch_size = its max, dims without it."""
    batch = manifest.get("batch", {})
    dynamic = "max" in batch
    static = None if dynamic else batch.get("static", 1)
    graph_input = manifest["graph"]["simplified"]["inputs"][0]
    inputs = [(graph_input["name"], graph_input["dtype"],
               [static if static is not None else -1] + list(graph_input["shape"][1:]))]
    tensors = {"input": inputs, "output": _outputs(manifest, static)}
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {batch['max'] if dynamic else 0}"]
    for kind, entries in tensors.items():
        for tensor, dtype, dims in entries:
            if dtype not in TRITON_TYPES:
                raise EffedgeError(f"tensor {tensor} has type {dtype}, which effedge cannot map to Triton")
            shown = dims[1:] if dynamic else dims
            lines += [f"{kind} {{", f'  name: "{tensor}"', f"  data_type: {TRITON_TYPES[dtype]}",
                      f"  dims: [ {', '.join(str(d) for d in shown)} ]", "}"]
    if dynamic:
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {batch['opt']} ]", "}"]
    capability = (engine or {}).get("compute_capability")
    if capability and not (engine or {}).get("options", {}).get("hardware_compatible"):
        lines.append(f'cc_model_filenames {{ key: "{capability}" value: "model.plan" }}')
    lines.append('instance_group { kind: KIND_GPU count: 1 }' if platform == "tensorrt_plan"
                 else 'instance_group { kind: KIND_AUTO count: 1 }')
    return "\n".join(lines) + "\n"


def package_triton(build_dir: str | os.PathLike, out: str | os.PathLike, name: Optional[str] = None) -> dict:
    """Write ``out``/NAME as a Triton model (whole or not at all); returns what was written."""
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    model_file, platform = _deployable(manifest, build_dir)
    name = name or str(manifest.get("variant", "model"))
    engine = (manifest.get("engines") or {}).get(model_file)
    config = triton_config(manifest, name, platform, engine)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    if target.exists():
        raise EffedgeError(f"{target} exists; remove it or choose another --name")
    stage = Path(tempfile.mkdtemp(prefix=".package-", dir=out))
    try:
        (stage / "1").mkdir()
        served = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
        shutil.copyfile(build_dir / model_file, stage / "1" / served)
        (stage / "config.pbtxt").write_text(config)
        os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {"format": "triton", "model": str(target), "platform": platform,
            "files": [str(target / "config.pbtxt"), str(target / "1" / served)]}
