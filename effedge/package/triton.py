"""A Triton model repository (``NAME/config.pbtxt`` + ``NAME/1/model.plan|model.onnx``) from a build directory."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from effedge.errors import EffedgeError
from effedge.io import read_manifest
from effedge.runtime.preprocess import DEFAULT_CROP_PCT, INPUT_FORMATS, input_layout, mean_pixel

PARAMETER_PREFIX = "effedge."  # Triton model parameters carrying the input contract (informational)
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


def _max_detections(manifest: Mapping) -> int:
    """The EfficientNMS tail's rows per image: build.json's compile config, never a guess."""
    count = ((manifest.get("compile") or {}).get("config") or {}).get("max_detections")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise EffedgeError("build.json's compile config records no max_detections, the EfficientNMS outputs' row "
                           "count; rebuild with effedge compile --force")
    return count


def _outputs(manifest: Mapping, batch: Optional[int]) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, full dims with batch) of the deployable graph's outputs, from build.json."""
    nms = manifest.get("nms", "none")
    b = batch if batch is not None else -1
    if nms == "efficientnms":
        k = _max_detections(manifest)
        return [("num_detections", "int32", [b, 1]), ("detection_boxes", "float32", [b, k, 4]),
                ("detection_scores", "float32", [b, k]), ("detection_classes", "int32", [b, k])]
    if nms == "onnx":
        raise EffedgeError("the ONNX NonMaxSuppression tail has data-dependent output shapes; compile with "
                           "--nms efficientnms (TensorRT) or --nms none for Triton")
    return [(o["name"], o["dtype"], [b] + [d if isinstance(d, int) else -1 for d in o["shape"][1:]])
            for o in manifest["graph"]["simplified"]["outputs"]]


def input_contract(manifest: Mapping[str, Any]) -> dict[str, str]:
    """What a client must send, from build.json's ``input`` block: format, layout, normalization, resize and
    size, as strings (Triton's model parameters are strings)."""
    recorded = manifest.get("input") or {}
    input_format, mean, std = recorded.get("format"), recorded.get("mean"), recorded.get("std")
    if input_format not in INPUT_FORMATS or not (isinstance(mean, list) and isinstance(std, list)
                                                  and len(mean) == len(std) == 3):
        raise EffedgeError("build.json records no input format / mean / std; rebuild with effedge compile --force")
    shape = manifest["graph"]["simplified"]["inputs"][0]["shape"]
    layout = input_layout(input_format)
    height, width = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
    contract = {"input_format": input_format, "layout": layout, "color": "RGB", "height": str(height),
                "width": str(width), "mean": ",".join(f"{m:g}" for m in mean),
                "std": ",".join(f"{s:g}" for s in std)}
    if manifest.get("family") == "efficientnet":
        contract.update(resize="center-crop", crop_pct=f"{float(recorded.get('crop_pct') or DEFAULT_CROP_PCT):g}")
    else:
        fill = recorded.get("letterbox_fill") or list(mean_pixel(mean))
        contract.update(resize="letterbox-top-left", letterbox_fill=",".join(str(int(v)) for v in fill))
    return contract


def _io(manifest: Mapping, platform: str) -> tuple[bool, int, dict[str, list[tuple[str, str, list[int]]]]]:
    """(dynamic, max_batch_size, {"input"|"output": [(name, dtype, dims as the config writes them)]}). A static
    batch N keeps max_batch_size 0 and full dims (Triton must not add a batch dimension the graph lacks); a
    dynamic batch profile gives max_batch_size = its max, dims without it."""
    batch = manifest.get("batch", {})
    dynamic = "max" in batch
    if dynamic and platform == "tensorrt_plan" and batch.get("min", 1) != 1:
        raise EffedgeError(f"Triton sends any batch from 1 to max_batch_size, but the engine's profile starts at "
                           f"{batch['min']}; compile with --dynamic-batch 1:{batch['opt']}:{batch['max']}")
    static = None if dynamic else batch.get("static", 1)
    graph_input = manifest["graph"]["simplified"]["inputs"][0]
    inputs = [(graph_input["name"], graph_input["dtype"],
               [static if static is not None else -1] + list(graph_input["shape"][1:]))]
    tensors = {"input": inputs, "output": _outputs(manifest, static)}
    for entries in tensors.values():
        for tensor, dtype, _ in entries:
            if dtype not in TRITON_TYPES:
                raise EffedgeError(f"tensor {tensor} has type {dtype}, which effedge cannot map to Triton")
    shown = {kind: [(tensor, dtype, dims[1:] if dynamic else dims) for tensor, dtype, dims in entries]
             for kind, entries in tensors.items()}
    return dynamic, batch["max"] if dynamic else 0, shown


def triton_config(manifest: Mapping[str, Any], name: str, platform: str, engine: Optional[Mapping] = None) -> str:
    """The config.pbtxt text (batching as :func:`_io` says), with the input contract (:func:`input_contract`) as
    ``effedge.*`` model parameters."""
    dynamic, max_batch, tensors = _io(manifest, platform)
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch}"]
    for kind, entries in tensors.items():
        for tensor, dtype, dims in entries:
            lines += [f"{kind} {{", f'  name: "{tensor}"', f"  data_type: {TRITON_TYPES[dtype]}",
                      f"  dims: [ {', '.join(str(d) for d in dims)} ]", "}"]
    for key, value in input_contract(manifest).items():
        lines.append(f'parameters {{ key: "{PARAMETER_PREFIX}{key}" value: {{ string_value: "{value}" }} }}')
    if dynamic:
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {manifest['batch']['opt']} ]", "}"]
    capability = (engine or {}).get("compute_capability")
    if capability and not (engine or {}).get("options", {}).get("hardware_compatible"):
        lines.append(f'cc_model_filenames {{ key: "{capability}" value: "model.plan" }}')
    lines.append('instance_group { kind: KIND_GPU count: 1 }' if platform == "tensorrt_plan"
                 else 'instance_group { kind: KIND_AUTO count: 1 }')
    return "\n".join(lines) + "\n"


def triton_readme(manifest: Mapping[str, Any], name: str, platform: str) -> str:
    """The model folder's README.md: what a client sends (the input contract) and what comes back."""
    dynamic, max_batch, tensors = _io(manifest, platform)
    contract = input_contract(manifest)
    (input_name, input_dtype, input_dims), = tensors["input"]
    batch = f"a batch of 1 to {max_batch} (dims without it)" if dynamic else "the batch as the first dim"
    size = f"{contract['width']}x{contract['height']}"
    mean, std = contract["mean"], contract["std"]
    values = {"float": f"float32, normalized per channel: (pixel / 255 - mean) / std, mean {mean}, std {std}",
              "pixels": f"float32 pixel values 0-255, not normalized (the graph applies mean {mean}, std {std})",
              "uint8": f"uint8 pixel values 0-255 (the graph normalizes with mean {mean}, std {std})"}
    lines = [f"# {name}: an effedge Triton model", "",
             f"Model {manifest.get('variant')} ({manifest.get('precision')}, NMS tail: "
             f"{manifest.get('nms', 'none')}), served by Triton's `{platform}`; written by `effedge package "
             "--format triton` from build.json.", "",
             "## Input: what to send", "",
             f"* `{input_name}`: {TRITON_TYPES[input_dtype]} [{', '.join(map(str, input_dims))}], {batch}.",
             f"* Layout {contract['layout']}, RGB channel order; values {values[contract['input_format']]} "
             f"(input format `{contract['input_format']}`)."]
    if contract["resize"] == "center-crop":
        lines.append(f"* Resize: the shorter side to floor({contract['height']} / {contract['crop_pct']}) "
                     f"(bilinear, aspect kept), then the centred {size} crop.")
    else:
        lines.append(f"* Resize: letterbox to {size} (width x height): scale = min({contract['height']} / image "
                     f"height, {contract['width']} / image width), resize bilinearly, place the image at the top-left "
                     f"corner and fill the rest with the mean colour RGB ({contract['letterbox_fill']}). Boxes come "
                     "back in network pixels: divide by the scale to map them onto the image.")
    classifier = ", classifier=True" if contract["resize"] == "center-crop" else ""
    lines += ["", "With effedge installed, `effedge.runtime.preprocess` does exactly this: `p = preprocessing_for("
              f"build_json{classifier})`, `canvas, scale = p.fit(image, ({contract['height']}, {contract['width']}))`, "
              f"`p.model_input(canvas[None], \"{contract['input_format']}\")`. The same contract is in config.pbtxt "
              "as `effedge.*` parameters.", "",
              "## Outputs", ""]
    lines += [f"* `{tensor}`: {TRITON_TYPES[dtype]} [{', '.join(map(str, dims))}]" for tensor, dtype, dims in
              tensors["output"]]
    if manifest.get("nms") == "efficientnms":
        lines.append("* EfficientNMS: the first `num_detections` rows are valid; boxes are x1, y1, x2, y2.")
    return "\n".join(lines) + "\n"


def package_triton(build_dir: str | os.PathLike, out: str | os.PathLike, name: Optional[str] = None) -> dict:
    """Write ``out``/NAME as a Triton model (whole or not at all); returns what was written."""
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    model_file, platform = _deployable(manifest, build_dir)
    name = name or str(manifest.get("variant", "model"))
    engine = (manifest.get("engines") or {}).get(model_file)
    config = triton_config(manifest, name, platform, engine)
    readme = triton_readme(manifest, name, platform)
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
        (stage / "README.md").write_text(readme)
        os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {"format": "triton", "model": str(target), "platform": platform,
            "files": [str(target / "config.pbtxt"), str(target / "README.md"), str(target / "1" / served)]}
