"""PyTorch -> ONNX that TensorRT compiles well: static by construction, simplified, checked against PyTorch.

Graph contract (detectors; ``N`` anchors, ``C`` classes):

* input ``images``: NCHW float32 RGB normalized with the spec's mean/std (ImageNet's for B/D, 0.5/0.5 for
  Lite; ``input_format="float"``), or RGB 0–255 normalized inside the graph: NHWC uint8 (``"uint8"``) or
  NCHW float32 (``"pixels"``, what DeepStream feeds); see :mod:`effedge.runtime.preprocess`. build.json's
  ``input`` block and the graph's metadata_props (``effedge.input.mean``, ``.std``, ``.layout``, ...) record
  which.
* ``class_logits [B, N, C]`` and ``box_regression [B, N, 4]`` — the heads concatenated over levels in anchor
  order (level, y, x, anchor); regression in (dx, dy, dw, dh) order (the box predictor's output channels are
  permuted at export so decoding needs no gather);
* ``boxes [B, N, 4]`` — decoded (x1, y1, x2, y2) in input pixels, anchors held as constants;
* ``scores [B, N, C]`` — sigmoid of the logits;
* optionally an NMS tail in place of these outputs (:mod:`effedge.export.nms_tail`).

Classifiers (b0..b7) export ``logits [B, 1000]``.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from effedge.io import output_directory, publish, sha256_file, staging
from effedge.errors import EffedgeError
from effedge.provenance import onnx_summary, tool_versions, write_manifest
from effedge.provenance.stages import StageMeter
from effedge.export.nms_tail import NMS_TAILS, append_nms_tail
from effedge.runtime.preprocess import INPUT_FORMATS, graph_metadata, input_layout, mean_pixel
from effedge.arch.scaling import EfficientDetSpec, ModelSpec, resolve

PARITY_RTOL = 1e-4  # max |ONNX Runtime − PyTorch| ≤ 1e-4 × max(1, max |output|)
OPSET_RANGE = (13, 21)
RAW_ONNX, SIMPLIFIED_ONNX = "model.onnx", "model.sim.onnx"
TAILED_ONNX = "model.fp32.onnx"  # the simplified graph with its NMS tail (model.sim.onnx stays tail-free)


@dataclass(frozen=True)
class ExportOptions:
    image_size: Optional[int] = None
    batch: int = 1
    dynamic_batch: Optional[tuple[int, int, int]] = None  # (min, opt, max)
    opset: int = 17
    nms: str = "none"
    input_format: str = "float"
    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_detections: int = 100

    def validate(self, is_detector: bool) -> None:
        if self.dynamic_batch is not None:
            low, opt, high = self.dynamic_batch
            if not 1 <= low <= opt <= high:
                raise EffedgeError(f"--dynamic-batch {low}:{opt}:{high} must satisfy 1 ≤ MIN ≤ OPT ≤ MAX")
        elif self.batch < 1:
            raise EffedgeError(f"--batch {self.batch} must be at least 1")
        if not OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1]:
            raise EffedgeError(f"--opset {self.opset} is not supported; use {OPSET_RANGE[0]}–{OPSET_RANGE[1]} "
                               "(17 for TensorRT 8.5/8.6)")
        if self.nms not in NMS_TAILS:
            raise EffedgeError(f"unknown --nms {self.nms!r}; use one of {', '.join(NMS_TAILS)}")
        if self.input_format not in INPUT_FORMATS:
            raise EffedgeError(f"unknown input format {self.input_format!r}; use one of {', '.join(INPUT_FORMATS)}")
        if not is_detector and self.nms != "none":
            raise EffedgeError("--nms applies to detectors (d0..d7x, φ) only; classifiers export logits")
        if not 0 <= self.score_threshold < 1 or not 0 < self.iou_threshold <= 1 or self.max_detections < 1:
            raise EffedgeError("NMS options out of range: need 0 ≤ score threshold < 1, 0 < IoU threshold ≤ 1, "
                               "max detections ≥ 1")

    @property
    def example_batch(self) -> int:
        return self.dynamic_batch[1] if self.dynamic_batch else self.batch


def deployable(model, input_format: str):
    """Wrap a built model with the graph contract of this module (see the module docstring)."""
    import torch
    from torch import nn

    from effedge.arch.anchors import anchors_for

    normalization = model.spec.normalization

    class Normalize(nn.Module):
        """RGB pixels 0–255 (NHWC uint8, or NCHW float for "pixels") -> the normalized NCHW the network takes."""

        def __init__(self):
            super().__init__()
            self.channels_last = input_layout(input_format) == "NHWC"
            self.register_buffer("mean", torch.tensor(normalization.mean).view(1, 3, 1, 1) * 255)
            self.register_buffer("inv_std", 1 / (torch.tensor(normalization.std).view(1, 3, 1, 1) * 255))

        def forward(self, images):
            # Cast first: TensorRT's Transpose (and most layers) take no UInt8 input. Cast to the weights' dtype
            # (float32 in the export; fp16 when PyTorch runs the module in half), so the model gets its own dtype.
            images = images.to(self.mean.dtype)
            return ((images.permute(0, 3, 1, 2) if self.channels_last else images) - self.mean) * self.inv_std

    in_graph = input_format in ("uint8", "pixels")  # the graph normalizes its input itself

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.normalize = Normalize() if in_graph else nn.Identity()
            self.model = model

        def forward(self, images):
            return self.model(self.normalize(images))

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            spec = model.spec
            self.normalize = Normalize() if in_graph else nn.Identity()
            self.model = copy.deepcopy(model)
            # Per anchor the box predictor emits (dy, dx, dh, dw); reorder its output channels to (dx, dy, dw, dh).
            predict = self.model.box_net.predict.conv_pw
            order = torch.tensor([1, 0, 3, 2]).repeat(spec.num_anchors) + 4 * torch.arange(
                spec.num_anchors).repeat_interleave(4)
            with torch.no_grad():
                predict.weight.copy_(predict.weight[order])
                predict.bias.copy_(predict.bias[order])
            height, width = model.image_size
            self.level_cells = [-(-height // 2**lv) * -(-width // 2**lv)
                                for lv in range(spec.min_level, spec.max_level + 1)]
            self.num_classes = model.num_classes
            anchors = torch.from_numpy(anchors_for(spec, (height, width)))  # (y1, x1, y2, x2)
            sizes = torch.stack([anchors[:, 3] - anchors[:, 1], anchors[:, 2] - anchors[:, 0]], -1)
            centers = torch.stack([anchors[:, 1] + anchors[:, 3], anchors[:, 0] + anchors[:, 2]], -1) / 2
            self.register_buffer("anchor_sizes", sizes[None])
            self.register_buffer("anchor_half_sizes", sizes[None] / 2)
            self.register_buffer("anchor_centers", centers[None])

        def _concat_levels(self, levels, width: int):
            # [B, A·W, H, W'] per level -> [B, A·W, cells] -> concat -> [B, Σcells, A·W] -> [B, N, W].
            # Python ints only: the graph gets constant shapes (batch as -1), no Shape arithmetic.
            flat = [t.reshape(-1, t.shape[1], cells) for t, cells in zip(levels, self.level_cells)]
            joined = torch.cat(flat, dim=2).transpose(1, 2)
            return joined.reshape(-1, joined.shape[1] * joined.shape[2] // width, width)

        def forward(self, images):
            class_out, box_out = self.model(self.normalize(images))
            class_logits = self._concat_levels(class_out, self.num_classes)
            box_regression = self._concat_levels(box_out, 4)
            shift, log_scale = box_regression.split(2, dim=-1)
            centers = shift * self.anchor_sizes + self.anchor_centers
            half_sizes = torch.exp(log_scale) * self.anchor_half_sizes
            boxes = torch.cat([centers - half_sizes, centers + half_sizes], dim=-1)
            return class_logits, box_regression, boxes, torch.sigmoid(class_logits)

    wrapper = Detector() if isinstance(model.spec, EfficientDetSpec) else Classifier()
    # Without this the tracer's forward records autograd state for every activation: 19 GB for D6 at 1280.
    return wrapper.eval().requires_grad_(False)


def torch_runner(manifest: dict, *, device: str = "cpu", half: bool = False, weights: Optional[object] = None):
    """The PyTorch original of a build (rebuilt from its build.json: variant, input size, classes, padding,
    weights, input format) as a runner with the same inputs and outputs as its ONNX export."""
    from effedge.models import build_model
    from effedge.runtime.base import TensorInfo
    from effedge.runtime.torch import TorchRunner

    recorded = manifest.get("weights")
    weights = weights if weights is not None else None if recorded == "random" else recorded
    if weights == "<state dict>":
        raise EffedgeError("this build was exported from an in-memory state dict; pass weights= to rebuild it")
    input_format = manifest.get("input", {}).get("format", "float")
    height, width = manifest["resolution"]

    def build_module():
        model = build_model(manifest["variant"], weights=weights, num_classes=manifest.get("num_classes"),
                            image_size=(height, width), pad=manifest.get("pad", "same"))
        return deployable(model, input_format)

    shape = ("batch", height, width, 3) if input_layout(input_format) == "NHWC" else ("batch", 3, height, width)
    inputs = [TensorInfo("images", shape, np.dtype(np.uint8 if input_format == "uint8" else np.float32))]
    return TorchRunner(build_module, inputs, output_names(manifest.get("family") == "efficientdet"), device=device,
                       half=half)


def output_names(is_detector: bool) -> list[str]:
    return ["class_logits", "box_regression", "boxes", "scores"] if is_detector else ["logits"]


def example_input(image_size: tuple[int, int], batch: int, input_format: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if input_format == "uint8":
        return rng.integers(0, 256, size=(batch, *image_size, 3), dtype=np.uint8)
    if input_format == "pixels":  # whole pixel values, as decoded images give
        return rng.integers(0, 256, size=(batch, 3, *image_size)).astype(np.float32)
    return rng.standard_normal((batch, 3, *image_size)).astype(np.float32)


def export(variant: Union[str, float, ModelSpec], out_dir: Union[str, Path], *, weights: Optional[str] = None,
           num_classes: Optional[int] = None, pad: str = "same", options: ExportOptions = ExportOptions(),
           class_names: Optional[Sequence[str]] = None, log: Callable[[str], None] = lambda message: None) -> dict:
    """Export ``variant`` into ``out_dir`` (``model.onnx``, ``model.sim.onnx``, ``build.json``); returns the
    manifest. ``class_names`` (one per class) go into build.json for the Detector. Nothing is left in ``out_dir``
    if any step fails."""
    spec = resolve(variant)
    is_detector = isinstance(spec, EfficientDetSpec)
    options.validate(is_detector)

    from effedge.models import input_size_for

    input_size_for(spec, options.image_size)  # bad sizes fail before anything is written
    with output_directory(out_dir) as out:
        return _export(spec, out, weights=weights, num_classes=num_classes, pad=pad, options=options,
                       class_names=class_names, log=log)


def _export(spec, out: Path, *, weights, num_classes, pad, options: ExportOptions, class_names, log) -> dict:
    import onnx
    import torch

    from effedge.models import build_model, count_macs, count_params
    from effedge.export.simplify import check_parity, simplify_model

    is_detector = isinstance(spec, EfficientDetSpec)

    meter = StageMeter()
    with meter.stage("build"):
        log(f"building {spec.name}")
        if weights is None:
            log(f"warning: no --weights: {spec.name} gets random weights (fine for latency, meaningless detections)")
        model = build_model(spec, weights=weights, num_classes=num_classes, image_size=options.image_size, pad=pad)
        image_size = model.image_size
        normalization = model.spec.normalization  # the weights' own where a known checkpoint says so
        crop = {} if is_detector else {"crop_pct": spec.crop_pct}  # the crop the variant was evaluated with
        if class_names is not None and len(class_names) != model.num_classes:
            raise EffedgeError(f"{len(class_names)} class names for a head of {model.num_classes} classes")
        wrapper = deployable(model, options.input_format)
        names = output_names(is_detector)
        batch = options.example_batch
        images = example_input(image_size, batch, options.input_format)
        with torch.no_grad():
            reference = wrapper(torch.from_numpy(images))
        reference = reference if isinstance(reference, tuple) else (reference,)
        expected = {name: t.numpy() for name, t in zip(names, reference)}

    with staging(out) as stage:
        with meter.stage("export"):
            log(f"exporting ONNX (opset {options.opset}, batch "
                f"{'%d:%d:%d' % options.dynamic_batch if options.dynamic_batch else options.batch})")
            dynamic_axes = ({name: {0: "batch"} for name in ["images", *names]} if options.dynamic_batch else None)
            torch_export(wrapper, torch.from_numpy(images), stage / RAW_ONNX, names, options.opset, dynamic_axes)
            raw = onnx.load(str(stage / RAW_ONNX))

        with meter.stage("simplify"):
            log("simplifying")
            simplified = simplify_model(raw)
            # which normalization the graph expects, for a user without build.json (onnxruntime's custom metadata)
            metadata = graph_metadata(normalization.mean, normalization.std, options.input_format,
                                      classifier=not is_detector, **crop)
            for graph in (raw, simplified):
                onnx.helper.set_model_props(graph, metadata)
            onnx.save(raw, str(stage / RAW_ONNX))
            onnx.save(simplified, str(stage / SIMPLIFIED_ONNX))

        with meter.stage("parity"):
            log("checking parity with PyTorch in ONNX Runtime")
            parity = check_parity(stage / SIMPLIFIED_ONNX, {"images": images}, expected, PARITY_RTOL)

        if options.nms != "none":
            log(f"appending the {options.nms} NMS tail")
            # a copy: the tail is appended in place, and model.sim.onnx (and its summary) stays tail-free
            final = append_nms_tail(copy.deepcopy(simplified), options.nms, score_threshold=options.score_threshold,
                                    iou_threshold=options.iou_threshold, max_detections=options.max_detections)
            onnx.checker.check_model(final)
            onnx.save(final, str(stage / TAILED_ONNX))
        files = [RAW_ONNX, SIMPLIFIED_ONNX] + ([TAILED_ONNX] if options.nms != "none" else [])

        artefacts = {name: {"sha256": sha256_file(stage / name), "bytes": (stage / name).stat().st_size}
                     for name in files}
        with torch.device("meta"):
            meta_model = build_model(spec, num_classes=num_classes, image_size=image_size, pad=pad)
        manifest = {
            "effedge_manifest": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "variant": spec.name,
            "family": spec.family,
            "phi": spec.phi,
            "resolution": list(image_size),
            "num_classes": model.num_classes,
            **({"class_names": list(class_names)} if class_names is not None else {}),
            "pad": pad,
            "weights": "random" if weights is None else (str(weights) if isinstance(weights, (str, Path))
                                                         else "<state dict>"),
            "precision": "fp32",
            "input": {"name": "images", "format": options.input_format,
                      "layout": input_layout(options.input_format),
                      "mean": list(normalization.mean), "std": list(normalization.std),
                      "letterbox_fill": list(mean_pixel(normalization.mean)), **crop},
            "batch": ({"min": options.dynamic_batch[0], "opt": options.dynamic_batch[1],
                       "max": options.dynamic_batch[2]} if options.dynamic_batch else {"static": options.batch}),
            "export_options": asdict(options),
            "params": count_params(meta_model),
            "macs": count_macs(meta_model, image_size),
            "graph": {"raw": onnx_summary(raw), "simplified": onnx_summary(simplified),
                      **({"tailed": onnx_summary(final)} if options.nms != "none" else {})},
            "nms": options.nms,
            "parity": [{"output": p.name, "max_abs_diff": p.max_abs_diff, "tolerance": p.tolerance,
                        "scale": p.scale} for p in parity],
            "stages_seconds": meter.rounded_seconds(), "stages_peak_rss_mb": meter.peak_rss_mb,
            "artifacts": artefacts,
            "versions": tool_versions(),
        }
        if is_detector:
            manifest["anchors"] = int(wrapper.anchor_centers.shape[1])
            manifest["box_regression_order"] = "dx, dy, dw, dh"
        publish(stage, out, files)
        write_manifest(out, manifest)
    log(f"wrote {out / SIMPLIFIED_ONNX} ({manifest['graph']['simplified']['nodes']} nodes)"
        + (f" and {out / TAILED_ONNX} with the {options.nms} NMS tail" if options.nms != "none" else ""))
    return manifest


def torch_export(wrapper, images, path: Path, names: list[str], opset: int, dynamic_axes) -> None:
    import warnings

    import torch

    # The TorchScript exporter: the dynamo exporter needs onnxscript and writes opset 18 with external
    # weights; this one gives opset 17 (TensorRT 8.5/8.6) in one file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (images,), str(path), opset_version=opset, dynamo=False,
                          input_names=["images"], output_names=names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
