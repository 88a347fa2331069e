"""Descriptions of the model zoo for people: the variant table and the full scaled architecture."""
from __future__ import annotations

from typing import Any, Union

from effedge.arch.complexity import analytic_complexity
from effedge.arch.scaling import IMAGENET_NORMALIZATION, NAMED_VARIANTS, EfficientDetSpec, EfficientNetSpec, ModelSpec, \
    Normalization, resolve


def normalization_label(normalization: Normalization) -> str:
    """Short name of an input normalization for tables: "imagenet", or "mean=std=0.5" for the Lite family."""
    if normalization == IMAGENET_NORMALIZATION:
        return "imagenet"
    if len(set(normalization.mean + normalization.std)) == 1:
        return f"mean=std={normalization.mean[0]:g}"
    return f"mean={'/'.join(f'{m:g}' for m in normalization.mean)} std={'/'.join(f'{s:g}' for s in normalization.std)}"


def summary(spec: ModelSpec) -> dict[str, Any]:
    """One row of ``effedge models``: scaling figures, params and MACs (multiply-adds, one image)."""
    backbone = spec.backbone if isinstance(spec, EfficientDetSpec) else spec
    params, macs = analytic_complexity(spec)
    row: dict[str, Any] = {
        "variant": spec.name,
        "family": spec.family,
        "phi": spec.phi,
        "resolution": spec.resolution,
        "width": round(backbone.width, 4),
        "depth": round(backbone.depth, 4),
        "backbone": backbone.name,
        "lite": spec.lite,
        "activation": spec.activation,
        "normalization": {"mean": list(spec.normalization.mean), "std": list(spec.normalization.std),
                          "label": normalization_label(spec.normalization)},
        "bifpn_channels": None,
        "bifpn_layers": None,
        "head_layers": None,
        "levels": None,
        "params": params,
        "macs": macs,
    }
    if isinstance(spec, EfficientDetSpec):
        row.update(bifpn_channels=spec.fpn_channels, bifpn_layers=spec.fpn_layers, head_layers=spec.head_layers,
                   levels=f"P{spec.min_level}-P{spec.max_level}", fusion=spec.fusion,
                   anchor_scale=spec.anchor_scale)
    return row


def model_table() -> list[dict[str, Any]]:
    return [summary(spec) for spec in NAMED_VARIANTS.values()]


def _backbone_arch(spec: EfficientNetSpec, image_size: int) -> dict[str, Any]:
    size = -(-image_size // 2)
    stages = []
    in_ch = spec.stem_channels
    for index, stage in enumerate(spec.stages):
        size = -(-size // stage.stride)
        stages.append({
            "stage": index, "block": {"ds": "DepthwiseSeparable", "ir": "MBConv"}[stage.block],
            "repeats": stage.repeats, "kernel": stage.kernel, "stride": stage.stride,
            "expansion": stage.expansion, "in_channels": in_ch, "out_channels": stage.out_channels,
            "se_channels": round(in_ch * stage.se_ratio), "output_size": size,
        })
        in_ch = stage.out_channels
    return {"name": spec.name, "width": spec.width, "depth": spec.depth, "stem_channels": spec.stem_channels,
            "head_channels": spec.head_channels, "stages": stages}


def architecture(variant: Union[str, float, ModelSpec]) -> dict[str, Any]:
    """The full scaled architecture of a variant (``effedge info``)."""
    spec = resolve(variant)
    arch = summary(spec)
    arch["backbone_stages"] = _backbone_arch(spec.backbone if isinstance(spec, EfficientDetSpec) else spec,
                                             spec.resolution)
    if isinstance(spec, EfficientDetSpec):
        arch["pyramid"] = [
            {"level": f"P{level}", "stride": 2**level, "size": -(-spec.image_size // 2**level)}
            for level in range(spec.min_level, spec.max_level + 1)
        ]
        arch["anchors"] = {
            "per_location": spec.num_anchors, "scale": spec.anchor_scale, "octaves": spec.num_scales,
            "aspect_ratios": [list(a) for a in spec.aspect_ratios],
            "total": spec.num_anchors * sum((-(-spec.image_size // 2**lv)) ** 2
                                            for lv in range(spec.min_level, spec.max_level + 1)),
        }
    return arch
