"""A DeepStream bundle: an nvinfer config, labels, the model and the parser sources, from a build directory.

Everything in the config is derived from build.json; what nvinfer cannot run as effedge built it is refused
with one line. What nvinfer does, as read in its sources (NVIDIA/DeepStream 9.1, gst-nvinfer's property
parser and nvdsinfer's preprocessing and model builder):

* preprocessing is ``y = net-scale-factor * (x - offsets[c])`` with one scalar scale, written as a float32
  tensor: a normalized-float graph with per-channel std (ImageNet's) cannot be fed exactly, and neither can a
  uint8-input graph; a ``pixels`` graph (float32 RGB 0–255, normalized inside) takes scale 1 and offsets 0,
  whatever its std;
* relative paths are resolved against the config file's folder, so the bundle can be moved as a whole;
* with ``network-mode=1`` and no ``int8-calib-file`` it builds from the ONNX with the FP16 flag only, which
  TensorRT's explicit (Q/DQ) quantization does not accept: an int8 bundle must ship effedge's engine;
* ``cluster-mode=4`` keeps the parser's detections as they are (``topk`` still caps each class);
* a box whose bottom, mapped to the frame, lies below the frame is dropped unless
  ``crop-objects-to-roi-boundary=1``, which clips it (and a box past the right edge) as effedge does.
"""
from __future__ import annotations

import importlib.resources
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from effedge.errors import EffedgeError
from effedge.io import read_manifest
from effedge.package.triton import NMS_OUTPUTS

PARSER_LIBRARY = "libnvds_effedge_parser.so"  # the target effedge/native/CMakeLists.txt builds
PARSER_DIR = "parser"
PARSER_CONFIG_HEADER = "effedge_parser_config.h"  # nvdsinfer_effedge.cpp includes it when present
PARSER_FUNCTIONS = {"efficientnms": "NvDsInferParseEffedgeNms", "none": "NvDsInferParseEffedgeRaw"}
RAW_OUTPUTS = ("boxes", "scores")  # what NvDsInferParseEffedgeRaw reads
NETWORK_MODES = {"fp32": 0, "int8": 1, "mixed": 1, "fp16": 2}
SCALING_FILTER_BILINEAR = 1  # NvBufSurfTransformInter_Bilinear: effedge's letterbox resizes bilinearly


def _integer(low: int, high: Optional[int] = None) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return value.lstrip("-").isdigit() and int(value) >= low and (high is None or int(value) <= high)
    return check


def _one_of(*values: int) -> Callable[[str], bool]:
    return lambda value: value in {str(v) for v in values}


def _number(low: float = -math.inf, high: float = math.inf) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            return low <= float(value) <= high
        except ValueError:
            return False
    return check


def _numbers(count: int, positive: bool = False) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        parts = value.split(";")
        return len(parts) == count and all(_number(1 if positive else -math.inf)(p) for p in parts)
    return check


def _text(value: str) -> bool:
    return bool(value) and "\n" not in value


# Gst-nvinfer's config keys effedge writes, with the values nvinfer accepts (its documented property table and
# gstnvinfer_property_parser.cpp, which rejects other enum values at start-up).
NVINFER_PROPERTIES: dict[str, dict[str, Callable[[str], bool]]] = {
    "property": {
        "gpu-id": _integer(0),
        "gie-unique-id": _integer(1),
        "process-mode": _one_of(1, 2),  # 1 primary (full frames), 2 secondary (objects)
        "network-type": _one_of(0, 1, 2, 3, 100),  # detector, classifier, segmentation, instance seg., other
        "onnx-file": _text,
        "model-engine-file": _text,
        "labelfile-path": _text,
        "batch-size": _integer(1, 1024),  # NVDSINFER_MAX_BATCH_SIZE
        "network-mode": _one_of(0, 1, 2, 3),  # fp32, int8, fp16, best
        "infer-dims": _numbers(3, positive=True),  # C;H;W
        "network-input-order": _one_of(0, 1),  # NCHW, NHWC
        "model-color-format": _one_of(0, 1, 2),  # RGB, BGR, GRAY
        "net-scale-factor": _number(0.0),
        "offsets": _numbers(3),
        "maintain-aspect-ratio": _one_of(0, 1),
        "symmetric-padding": _one_of(0, 1),  # 0: the image at the top-left corner, as effedge's letterbox
        "scaling-filter": _one_of(0, 1, 2, 3, 4, 5, 6),  # NvBufSurfTransform_Inter
        "crop-objects-to-roi-boundary": _one_of(0, 1),
        "num-detected-classes": _integer(1),
        "output-blob-names": _text,
        "cluster-mode": _one_of(0, 1, 2, 3, 4),  # group rectangles, DBSCAN, NMS, DBSCAN+NMS, none
        "parse-bbox-func-name": _text,
        "custom-lib-path": _text,
    },
    "class-attrs-all": {
        "pre-cluster-threshold": _number(0.0, 1.0),
        "nms-iou-threshold": _number(0.0, 1.0),
        "topk": _integer(-1),
    },
}


def _refuse_unsupported(manifest: Mapping, build_dir: Path) -> None:
    """One line for a build nvinfer cannot run as effedge built it."""
    if manifest.get("family") != "efficientdet":
        raise EffedgeError("DeepStream bundles are for EfficientDet detectors: nvinfer's classifier path resizes "
                           "whole frames and expects softmax outputs, while effedge classifiers take a centre crop "
                           "and output logits; use --format triton")
    nms = manifest.get("nms", "none")
    if nms == "onnx":
        raise EffedgeError("the ONNX NonMaxSuppression tail has data-dependent output shapes, which nvinfer cannot "
                           "bind; compile with --nms efficientnms (TensorRT) or --nms none for DeepStream")
    if nms not in PARSER_FUNCTIONS:
        raise EffedgeError(f"{build_dir}/build.json records an unknown NMS tail {nms!r}; rebuild with effedge "
                           "compile --force")
    input_format = (manifest.get("input") or {}).get("format", "float")
    if input_format == "uint8":
        raise EffedgeError("nvinfer always feeds the network a float32 tensor, but this graph takes uint8 (NHWC); "
                           "export with --input-format pixels (float32 RGB 0-255, normalized inside the graph) "
                           "for DeepStream")
    if input_format not in ("float", "pixels"):
        raise EffedgeError(f"{build_dir}/build.json records an unknown input format {input_format!r}; rebuild with "
                           "effedge compile --force")


def _normalization(manifest: Mapping, build_dir: Path) -> tuple[float, list[float]]:
    """(net-scale-factor, offsets) that give the graph its input: the pixels as they are for a ``pixels`` graph
    (it normalizes itself), else the normalization ``(x / 255 - mean) / std``."""
    recorded = manifest.get("input") or {}
    if recorded.get("format") == "pixels":
        return 1.0, [0.0, 0.0, 0.0]
    mean, std = recorded.get("mean"), recorded.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        raise EffedgeError(f"{build_dir}/build.json records no input mean/std; rebuild with effedge compile --force")
    if max(std) - min(std) > 1e-9:
        raise EffedgeError(f"{manifest.get('variant', 'this model')} normalizes with a per-channel std "
                           f"({'/'.join(f'{s:g}' for s in std)}), which nvinfer's single net-scale-factor cannot "
                           "reproduce; export with --input-format pixels (the graph normalizes float32 RGB 0-255 "
                           "itself) or use --format triton")
    return 1.0 / (255.0 * std[0]), [255.0 * m for m in mean]


def _model_files(manifest: Mapping, build_dir: Path) -> tuple[str, Optional[str]]:
    """(ONNX file, engine file or None) of the build, both present; refuses TensorRT-RTX engines."""
    compile_info = manifest.get("compile") or {}
    deployable = compile_info.get("deployable")
    if not deployable:
        raise EffedgeError(f"{build_dir}/build.json names no deployable model; run effedge compile first")
    engine = None
    if deployable.endswith(".engine"):
        entry = (manifest.get("engines") or {}).get(deployable, {})
        if entry.get("backend") == "tensorrt-rtx":
            raise EffedgeError("DeepStream's nvinfer runs full TensorRT, not TensorRT-RTX engines; compile with "
                               "--backend tensorrt on the target (or package the ONNX Runtime build)")
        engine = deployable
    precision = manifest.get("precision")
    onnx_file = f"model.{precision}.onnx"
    for name in (onnx_file, engine):
        if name is not None and not (build_dir / name).is_file():
            raise EffedgeError(f"{build_dir / name} is missing; rebuild with effedge compile --force")
    if engine is None and precision in ("int8", "mixed"):
        raise EffedgeError(f"nvinfer builds an ONNX without an int8-calib-file with the FP16 flag only, which "
                           f"TensorRT's explicit (Q/DQ) int8 does not accept: compile --precision {precision} "
                           "--backend tensorrt on the target so the bundle ships the engine, or --precision fp16")
    return onnx_file, engine


def _outputs(manifest: Mapping, nms: str, build_dir: Path) -> list[str]:
    """The output names the parser reads, checked against the graph build.json describes."""
    if nms == "efficientnms":
        return list(NMS_OUTPUTS)  # the EfficientNMS tail's fixed outputs (effedge.export.nms_tail)
    try:
        names = [o["name"] for o in manifest["graph"]["simplified"]["outputs"]]
    except (KeyError, TypeError) as exc:
        raise EffedgeError(f"{build_dir}/build.json describes no graph outputs; rebuild with effedge compile "
                           "--force") from exc
    missing = [name for name in RAW_OUTPUTS if name not in names]
    if missing:
        raise EffedgeError(f"the graph has no {', '.join(missing)} output(s), which {PARSER_FUNCTIONS['none']} "
                           "reads; re-export it with effedge")
    return list(RAW_OUTPUTS)


def _input_dims(manifest: Mapping, build_dir: Path) -> tuple[int, int, int]:
    try:
        graph_input = manifest["graph"]["simplified"]["inputs"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise EffedgeError(f"{build_dir}/build.json describes no graph input; rebuild with effedge compile "
                           "--force") from exc
    dims = graph_input.get("shape", [])[1:]
    if graph_input.get("dtype") != "float32" or len(dims) != 3 or dims[0] != 3 or \
            not all(isinstance(d, int) and d > 0 for d in dims):
        raise EffedgeError(f"the graph input {graph_input.get('name')} is {graph_input.get('dtype')} "
                           f"{graph_input.get('shape')}, not float32 [batch, 3, H, W] as nvinfer feeds it; "
                           "export with --input-format pixels")
    return dims[0], dims[1], dims[2]


def _batch_size(manifest: Mapping) -> int:
    batch = manifest.get("batch") or {}
    return int(batch["max"]) if "max" in batch else int(batch.get("static", 1))


def deepstream_config(manifest: Mapping[str, Any], onnx_file: str, engine_file: Optional[str],
                      build_dir: Path = Path(".")) -> dict[str, dict[str, str]]:
    """The nvinfer config as {group: {key: value}}, every value derived from build.json (``manifest``)."""
    _refuse_unsupported(manifest, build_dir)
    nms = manifest.get("nms", "none")
    scale, offsets = _normalization(manifest, build_dir)
    channels, height, width = _input_dims(manifest, build_dir)
    num_classes = manifest.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise EffedgeError(f"{build_dir}/build.json records no num_classes; rebuild with effedge compile --force")
    settings = (manifest.get("compile") or {}).get("config") or {}
    if "score_threshold" not in settings or "max_detections" not in settings:
        raise EffedgeError(f"{build_dir}/build.json records no score threshold / max detections; rebuild with "
                           "effedge compile --force")
    properties = {
        "gpu-id": "0",
        "gie-unique-id": "1",
        "process-mode": "1",
        "network-type": "0",
        "onnx-file": onnx_file,
        **({"model-engine-file": engine_file} if engine_file else {}),
        "labelfile-path": "labels.txt",
        "batch-size": str(_batch_size(manifest)),
        "network-mode": str(NETWORK_MODES[manifest.get("precision", "fp32")]),
        "infer-dims": f"{channels};{height};{width}",
        "network-input-order": "0",
        "model-color-format": "0",
        "net-scale-factor": repr(scale),
        "offsets": ";".join(f"{o:.10g}" for o in offsets),
        "maintain-aspect-ratio": "1",
        "symmetric-padding": "0",
        "scaling-filter": str(SCALING_FILTER_BILINEAR),
        # without it nvinfer drops a box whose bottom, mapped to the frame, passes the frame's (one reaching into
        # the letterbox's padding: an object at the bottom edge); effedge clips such boxes to the image instead
        "crop-objects-to-roi-boundary": "1",
        "num-detected-classes": str(num_classes),
        "output-blob-names": ";".join(_outputs(manifest, nms, build_dir)),
        # both parsers hand over final detections: the EfficientNMS tail's, or the raw heads after the decode
        # core's own NMS (effedge.runtime's), so nvinfer must not cluster them again
        "cluster-mode": "4",
        "parse-bbox-func-name": PARSER_FUNCTIONS[nms],
        "custom-lib-path": f"{PARSER_DIR}/build/{PARSER_LIBRARY}",
    }
    class_attrs = {"pre-cluster-threshold": f"{float(settings['score_threshold']):g}",
                   "topk": str(int(settings["max_detections"]))}
    return {"property": properties, "class-attrs-all": class_attrs}


def parser_config_header(manifest: Mapping[str, Any], build_dir: Path = Path(".")) -> str:
    """The text of effedge_parser_config.h: the build's IoU threshold and max detections (build.json's compile
    config) for NvDsInferParseEffedgeRaw, whose NMS nvinfer's parser interface gives no IoU."""
    settings = (manifest.get("compile") or {}).get("config") or {}
    iou, count = settings.get("iou_threshold"), settings.get("max_detections")
    if not (isinstance(iou, (int, float)) and not isinstance(iou, bool) and 0 < iou <= 1
            and isinstance(count, int) and not isinstance(count, bool) and count >= 1):
        raise EffedgeError(f"{build_dir}/build.json records no valid IoU threshold / max detections "
                           f"({iou!r}, {count!r}); rebuild with effedge compile --force")
    return "\n".join([
        f"/* Generated by effedge package from build.json (build {manifest.get('variant')}): the NMS settings",
        " * the raw-heads parser (NvDsInferParseEffedgeRaw) applies; to change them, edit and rebuild the parser. */",
        "#pragma once",
        f"#define EFFEDGE_IOU_THRESHOLD {float(iou)!r}f",
        f"#define EFFEDGE_MAX_DETECTIONS {count}", ""])


def render_config(config: Mapping[str, Mapping[str, str]], header: str) -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for group, entries in config.items():
        lines += ["", f"[{group}]", *(f"{key}={value}" for key, value in entries.items())]
    return "\n".join(lines) + "\n"


def label_lines(manifest: Mapping) -> list[str]:
    """One name per class: build.json's names, else the family's list (COCO-90), else class0..N-1."""
    from effedge.runtime.labels import labels_for

    count = int(manifest["num_classes"])
    labels = labels_for(manifest, count)
    names = labels.names if labels is not None and len(labels.names) == count else (None,) * count
    return [name or f"class{i}" for i, name in enumerate(names)]  # an unnamed slot still needs its own line


def native_sources() -> list[Path]:
    """The parser's sources as installed with effedge (package data ``native/*``)."""
    root = Path(str(importlib.resources.files("effedge").joinpath("native")))
    files = sorted(p for p in root.iterdir() if p.is_file() and (p.suffix in (".h", ".cpp")
                                                                  or p.name == "CMakeLists.txt"))
    if not any(p.name == "CMakeLists.txt" for p in files):
        raise EffedgeError(f"effedge's parser sources are missing from {root}; reinstall effedge")
    return files


def build_instructions(config_name: str) -> list[str]:
    return [f"cmake -S {PARSER_DIR} -B {PARSER_DIR}/build -DDEEPSTREAM_INCLUDE=/opt/nvidia/deepstream/deepstream/"
            "sources/includes -DCUDA_INCLUDE=/usr/local/cuda/include",
            f"cmake --build {PARSER_DIR}/build",
            f"gst-launch-1.0 filesrc location=VIDEO.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 "
            f"nvstreammux name=m batch-size=1 width=1280 height=720 ! nvinfer config-file-path={config_name} ! "
            "nvvideoconvert ! nvdsosd ! fakesink"]


def _readme(name: str, config_name: str, manifest: Mapping, engine_file: Optional[str]) -> str:
    engine = (manifest.get("engines") or {}).get(engine_file or "", {})
    lines = [f"# {name}: an effedge DeepStream bundle", "",
             f"Model {manifest.get('variant')} ({manifest.get('precision')}, NMS tail: {manifest.get('nms')}), "
             f"written by `effedge package --format deepstream`.", ""]
    if engine_file:
        lines += [f"`{engine_file}` was built by {engine.get('product', 'TensorRT')} {engine.get('version', '')}"
                  + (f" for compute capability {engine['compute_capability']}" if engine.get("compute_capability")
                     else "")
                  + ": it runs only with that TensorRT version on that GPU. Elsewhere nvinfer rebuilds from the "
                    "ONNX (minutes)" + (", which it cannot do for this int8 graph: rebuild with effedge on the "
                                         "target instead." if manifest.get("precision") in ("int8", "mixed")
                                         else "."), ""]
    lines += ["Build the bbox parser (once per DeepStream install), then run:", "", "```sh",
              *build_instructions(config_name), "```", "",
              "Paths in the config are relative to its folder. `pre-cluster-threshold` is the build's score "
              "threshold; raise it (e.g. 0.3, `effedge detect`'s default) to show fewer boxes.", "",
              f"`{PARSER_DIR}/{PARSER_CONFIG_HEADER}` holds the build's IoU threshold and max detections, which the "
              "raw-heads parser's NMS applies (the parser is compiled with them: edit the header and rebuild the "
              "parser to change them; without the header it falls back to IoU 0.5 and 100 detections).", ""]
    return "\n".join(lines)


def package_deepstream(build_dir: str | os.PathLike, out: str | os.PathLike, name: Optional[str] = None) -> dict:
    """Write ``out``/NAME as a DeepStream bundle (whole or not at all); returns what was written."""
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    _refuse_unsupported(manifest, build_dir)
    onnx_file, engine_file = _model_files(manifest, build_dir)
    config = deepstream_config(manifest, onnx_file, engine_file, build_dir)
    labels = label_lines(manifest)
    parser_header = parser_config_header(manifest, build_dir)
    sources = native_sources()
    name = name or str(manifest.get("variant", "model"))
    config_name = f"config_infer_primary_{name}.txt"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    if target.exists():
        raise EffedgeError(f"{target} exists; remove it or choose another --name")
    header = (f"nvinfer config for effedge build {manifest.get('variant')} ({manifest.get('precision')}), "
              "from its build.json.\nBuild the parser first: see README.md.")
    stage = Path(tempfile.mkdtemp(prefix=".package-", dir=out))
    try:
        (stage / config_name).write_text(render_config(config, header))
        (stage / "labels.txt").write_text("\n".join(labels) + "\n")
        for model_file in filter(None, (onnx_file, engine_file)):
            shutil.copyfile(build_dir / model_file, stage / model_file)
        (stage / PARSER_DIR).mkdir()
        for source in sources:
            shutil.copyfile(source, stage / PARSER_DIR / source.name)
        (stage / PARSER_DIR / PARSER_CONFIG_HEADER).write_text(parser_header)
        (stage / "README.md").write_text(_readme(name, config_name, manifest, engine_file))
        os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    files = sorted(str(p) for p in target.rglob("*") if p.is_file())
    return {"format": "deepstream", "bundle": str(target), "config": str(target / config_name),
            "parse_function": config["property"]["parse-bbox-func-name"], "engine": engine_file,
            "onnx": onnx_file, "files": files,
            "build_parser": build_instructions(config_name)[:2], "run": build_instructions(config_name)[2]}
