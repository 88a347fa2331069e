"""The model zoo: ``build_model`` turns a variant name or a φ into a PyTorch network."""
from __future__ import annotations

import dataclasses
from typing import Union

import torch
from torch import nn

from effedge.errors import VariantError
from effedge.models.checkpoint import KNOWN_CHECKPOINTS, Weights, load_weights
from effedge.models.bifpn import FpnNode
from effedge.models.efficientdet import EfficientDet, Head
from effedge.models.efficientnet import DepthwiseSeparable, EfficientNet, InvertedResidual
from effedge.models.layers import PAD_MODES
from effedge.arch.scaling import DEFAULT_NUM_CLASSES, EfficientDetSpec, ModelSpec, resolve
from effedge.arch.topology import input_size_for

__all__ = ["build_model", "EfficientDet", "EfficientNet", "input_size_for", "count_params", "count_macs",
           "complexity", "RECOMPUTABLE_BLOCKS"]

# The blocks whose inner activations training may recompute in backward instead of keeping (activation
# checkpointing): each backbone block, BiFPN node and head. What is kept is then one tensor per block boundary.
RECOMPUTABLE_BLOCKS = (DepthwiseSeparable, InvertedResidual, FpnNode, Head)


def build_model(variant: Union[str, float, ModelSpec], *, weights: Weights | None = None,
                num_classes: int | None = None, image_size: Union[int, tuple[int, int], None] = None,
                pad: str = "same") -> nn.Module:
    """Build a network in eval mode.

    Args:
        variant: "b0".."b7" (classifier), "d0".."d7x" (detector), a float φ (custom detector), or a spec.
        weights: a checkpoint path, URL or known name (e.g. "tf_efficientdet_d0"); a known name also sets
            ``pad`` to the layout it was trained with, and the spec's input normalization where its training's
            differs from the family's (``model.spec`` then says which).
        num_classes: classes of the head; default 90 (COCO) for detectors, 1000 (ImageNet) for classifiers.
        image_size: input size the padding is resolved for; default the variant's resolution.
        pad: "same" (TF 'same', the tf_* checkpoints) or "symmetric" (the PyTorch-trained efficientdet_d*).
    """
    spec = resolve(variant)
    if isinstance(weights, str) and weights in KNOWN_CHECKPOINTS:
        known = KNOWN_CHECKPOINTS[weights]
        if known.variant != spec.name:
            raise VariantError(f"weights '{weights}' are for {known.variant}, not {spec.name}; "
                               f"use --variant {known.variant}")
        pad = known.pad
        if known.normalization is not None:  # the export folds / records the model's spec normalization
            spec = dataclasses.replace(spec, normalization=known.normalization)
    if pad not in PAD_MODES:
        raise VariantError(f"unknown padding {pad!r}; use one of {', '.join(PAD_MODES)}")
    size = input_size_for(spec, image_size)
    classes = num_classes or DEFAULT_NUM_CLASSES[spec.family]
    # Without weights the initialisation is seeded, so every backend rebuilding this model gets the same one.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if isinstance(spec, EfficientDetSpec):
            model = EfficientDet(spec, num_classes=classes, image_size=size, padding=pad)
        else:
            model = EfficientNet(spec, num_classes=classes, image_size=size, padding=pad,
                                 bn_eps=1e-3 if pad == "same" else 1e-5)
    if weights is not None:
        load_weights(model, weights, name=f"{spec.name} ({size[0]}x{size[1]}, pad={pad})")
    return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: tuple[int, int]) -> int:
    """Multiply-adds of convolutions and linear layers for one image (the papers' count)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.empty(1, 3, *image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def complexity(variant: Union[str, float, ModelSpec], image_size: Union[int, tuple[int, int], None] = None,
               num_classes: int | None = None) -> tuple[int, int]:
    """(params, MACs) of a variant, counted on a weightless ("meta") instance: fast even for D7x."""
    spec = resolve(variant)
    size = input_size_for(spec, image_size)
    with torch.device("meta"):
        model = build_model(spec, image_size=size, num_classes=num_classes)
    return count_params(model), count_macs(model, size)
