"""Pretrained checkpoint import: effdet detectors, timm ``tf_efficientnet_*`` classifiers (B and Lite), and
classifiers in the ``efficientnet_pytorch`` layout (lukemelas/EfficientNet-PyTorch and its Lite ports: ``_conv_stem``,
``_blocks.N._expand_conv``, ...), told apart by their keys.

A checkpoint is a local file, a URL (downloaded once into the torch hub cache, hash-checked when the file
name carries one), or a known name from :data:`KNOWN_CHECKPOINTS`. Keys are mapped onto effedge's modules and
must match exactly — no missing, unexpected or mis-shaped entries — otherwise a :class:`CheckpointError`
names the first offending keys and, where it can tell, what the checkpoint was built for.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from effedge.arch.scaling import IMAGENET_NORMALIZATION, EfficientNetSpec, Normalization
from effedge.errors import CheckpointError

_EFFDET = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"


@dataclass(frozen=True)
class KnownCheckpoint:
    url: str
    variant: str
    pad: str  # the layout the weights were trained with: "same" (TF port) or "symmetric" (PyTorch)
    # the input mean/std the weights were trained with, where it is not the variant's family's
    normalization: Optional[Normalization] = None


KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    **{f"tf_efficientdet_{v}": KnownCheckpoint(_EFFDET + f, v, "same") for v, f in {
        "d0": "tf_efficientdet_d0_34-f153e0cf.pth", "d1": "tf_efficientdet_d1_40-a30f94af.pth",
        "d2": "tf_efficientdet_d2_43-8107aa99.pth", "d3": "tf_efficientdet_d3_47-0b525f35.pth",
        "d4": "tf_efficientdet_d4_49-f56376d9.pth", "d5": "tf_efficientdet_d5_51-c79f9be6.pth",
        "d6": "tf_efficientdet_d6_52-4eda3773.pth", "d7": "tf_efficientdet_d7_53-6d1d7a95.pth",
        "d7x": "tf_efficientdet_d7x-f390b87c.pth"}.items()},
    "efficientdet_d0": KnownCheckpoint(_EFFDET + "efficientdet_d0-f3276ba8.pth", "d0", "symmetric"),
    "efficientdet_d1": KnownCheckpoint(_EFFDET + "efficientdet_d1-bb7e98fe.pth", "d1", "symmetric"),
    **{f"tf_efficientnet_{v}": KnownCheckpoint(_TIMM + f, v, "same") for v, f in {
        "b0": "tf_efficientnet_b0_aa-827b6e33.pth", "b1": "tf_efficientnet_b1_aa-ea7a6ee0.pth",
        "b2": "tf_efficientnet_b2_aa-60c94f97.pth", "b3": "tf_efficientnet_b3_aa-84b4657e.pth",
        "b4": "tf_efficientnet_b4_aa-818f208c.pth", "b5": "tf_efficientnet_b5_ra-9a3e5369.pth",
        "b6": "tf_efficientnet_b6_aa-80ba17e4.pth", "b7": "tf_efficientnet_b7_ra-6c08e654.pth"}.items()},
    **{f"tf_efficientnet_{v}": KnownCheckpoint(_TIMM + f, v, "same") for v, f in {
        "lite0": "tf_efficientnet_lite0-0aa007d2.pth", "lite1": "tf_efficientnet_lite1-bde8b488.pth",
        "lite2": "tf_efficientnet_lite2-dcccb7df.pth", "lite3": "tf_efficientnet_lite3-b733e338.pth",
        "lite4": "tf_efficientnet_lite4-741542c3.pth"}.items()},
    # timm's own PyTorch-trained Lite0 (symmetric padding, BN eps 1e-5), trained on ImageNet's mean/std, not 0.5
    "efficientnet_lite0": KnownCheckpoint(_TIMM + "efficientnet_lite0_ra-37913777.pth", "lite0", "symmetric",
                                          IMAGENET_NORMALIZATION),
    **{f"tf_efficientdet_{v}": KnownCheckpoint(_EFFDET + f, f"d-{v}", "same") for v, f in {
        "lite0": "tf_efficientdet_lite0-dfacfc78.pth", "lite1": "tf_efficientdet_lite1-6dc7ab30.pth",
        "lite2": "tf_efficientdet_lite2-86c5d55b.pth", "lite3": "tf_efficientdet_lite3-506852cb.pth",
        "lite3x": "tf_efficientdet_lite3x-8404c57b.pth", "lite4": "tf_efficientdet_lite4-391ddabc.pth"}.items()},
}

Weights = Union[str, os.PathLike, Mapping[str, torch.Tensor]]

# Reference key -> effedge key. The reference wraps each head BatchNorm in a one-entry Sequential.
_KEY_RULES = [(re.compile(r"\.bn_rep\.(\d+)\.(\d+)\.bn\."), r".bn_rep.\1.\2.")]
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "model.")


def checkpoint_path(weights: Union[str, os.PathLike]) -> Path:
    """Local path of a checkpoint given as a path, URL or known name (downloading a URL once)."""
    text = str(weights)
    if text in KNOWN_CHECKPOINTS:
        text = KNOWN_CHECKPOINTS[text].url
    if urllib.parse.urlparse(text).scheme in ("http", "https", "file"):
        return _download(text)
    path = Path(text).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(KNOWN_CHECKPOINTS)[:3])
        raise CheckpointError(f"weights '{text}' not found: give a .pth file, a URL, or a known name "
                              f"({known}, …; `effedge models --weights` lists them)")
    return path


def _download(url: str) -> Path:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    name = Path(urllib.parse.urlparse(url).path).name
    target = cache / name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # torch.hub names files "<stem>-<sha256 prefix>.<ext>"; check that prefix when present.
    match = re.search(r"-([a-f0-9]{6,})\.", name)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1) if match else None,
                                       progress=True)
    except Exception as exc:  # network, HTTP or hash errors: the partial file is removed by torch.hub
        raise CheckpointError(f"could not download {url}: {exc}; download it yourself and pass the file "
                              "path as weights") from exc
    return target


def read_state_dict(weights: Weights) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, unwrapped from training containers (``state_dict``, ``model``, ``module.``)."""
    if isinstance(weights, Mapping):
        state = dict(weights)
        source = "the given state dict"
    else:
        path = checkpoint_path(weights)
        source = str(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]  # an empty file raises with no message
            raise CheckpointError(f"cannot read checkpoint {path}: {reason}; "
                                  "is it a PyTorch .pth file?") from exc
    for key in _WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source} holds no state dict of tensors")
    state = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# efficientnet_pytorch: top-level modules, and per block kind its modules (blocks are numbered flat, _blocks.N).
_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EP_SE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_EP_BLOCK = {
    "ds": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2", **_EP_SE},
    "ir": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3", **_EP_SE},
}
_BLOCK_PREFIX = re.compile(r"blocks\.\d+\.\d+\.|_blocks\.\d+\.")
_EP_KEY = re.compile(r"(?:_blocks\.(\d+)\.)?(_\w+?)\.(\w+)$")


def is_efficientnet_pytorch(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is in the efficientnet_pytorch layout (its stem is ``_conv_stem``)."""
    return "_conv_stem.weight" in state


def _from_efficientnet_pytorch(key: str, blocks: list[tuple[str, str]]) -> str:
    """effedge's name for an efficientnet_pytorch key, given the model's blocks as (prefix, kind) in order; a key
    that has no counterpart (a block the model lacks, an unknown module) is kept, so it shows as unexpected."""
    match = _EP_KEY.fullmatch(key)
    if match is None:
        return key
    index, module, tensor = match.groups()
    if index is None:
        return f"{_EP_TOP[module]}.{tensor}" if module in _EP_TOP else key
    if int(index) >= len(blocks):
        return key
    prefix, kind = blocks[int(index)]
    return f"{prefix}.{_EP_BLOCK[kind][module]}.{tensor}" if module in _EP_BLOCK[kind] else key


def _blocks_of(spec: EfficientNetSpec) -> list[tuple[str, str]]:
    return [(f"blocks.{i}.{j}", stage.block) for i, stage in enumerate(spec.stages) for j in range(stage.repeats)]


def to_effedge_keys(state: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, str]:
    """effedge key -> the checkpoint's key, for every entry of ``state`` (timm/effdet names are nearly effedge's;
    an efficientnet_pytorch classifier is renamed block by block along ``model``'s spec)."""
    if is_efficientnet_pytorch(state):
        spec = getattr(model, "spec", None)
        if not isinstance(spec, EfficientNetSpec):
            raise CheckpointError("the checkpoint is an efficientnet_pytorch classifier (_conv_stem, _blocks.N); "
                                  "load it into a classifier variant (b0..b7, lite0..lite4), not a detector")
        blocks = _blocks_of(spec)
        return {_from_efficientnet_pytorch(key, blocks): key for key in state}
    mapped = {}
    for source in state:
        key = source
        for pattern, replacement in _KEY_RULES:
            key = pattern.sub(replacement, key)
        mapped[key] = source
    return mapped


def _diagnose(state: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """A hint at what the checkpoint was built for, from shapes that identify a configuration."""
    hints = []
    predict = "class_net.predict.conv_pw.weight"
    anchors = getattr(getattr(model, "spec", None), "num_anchors", None)
    if predict in state and anchors and hasattr(model, "num_classes"):
        classes = state[predict].shape[0] // anchors
        if classes != model.num_classes:
            hints.append(f"it has {classes} classes (pass num_classes={classes})")
    if "classifier.weight" in state and getattr(model, "num_classes", None) not in (None, state[
            "classifier.weight"].shape[0]):
        hints.append(f"it has {state['classifier.weight'].shape[0]} classes")
    bias_key = "fpn.cell.0.fnode.0.after_combine.conv.conv_pw.bias"
    model_keys = model.state_dict().keys()
    if (bias_key in state) != (bias_key in model_keys) and "fpn.cell.0.fnode.0.after_combine.conv.conv_pw.weight" in state:
        hints.append("its layout is the " + ("TF-ported one (pad='same')" if bias_key in state
                                             else "PyTorch-trained one (pad='symmetric')"))
    stem = state.get("backbone.conv_stem.weight", state.get("conv_stem.weight"))
    fpn = state.get("fpn.cell.0.fnode.0.after_combine.conv.conv_pw.weight")
    if stem is not None:
        cells = len({k.split(".")[2] for k in state if k.startswith("fpn.cell.")})
        desc = f"stem {stem.shape[0]} ch"
        if fpn is not None:
            desc += f", BiFPN {fpn.shape[0]} ch × {cells} layers"
        else:  # a classifier: its depth (blocks the model lacks keep their efficientnet_pytorch name, _blocks.N)
            blocks = {match.group(0) for k in state if (match := _BLOCK_PREFIX.match(k))}
            desc += f", {len(blocks)} blocks" + (", squeeze-excite" if any(".se." in k for k in state) else
                                                   ", no squeeze-excite")
        hints.append(f"it was built for {desc}")
    return "; ".join(hints)


def load_weights(model: nn.Module, weights: Weights, *, name: str = "model") -> None:
    """Load ``weights`` into ``model`` strictly, or raise a :class:`CheckpointError` saying what differs."""
    source = read_state_dict(weights)
    origin = to_effedge_keys(source, model)
    state = {key: source[original] for key, original in origin.items()}
    expected = model.state_dict()

    def named(key: str) -> str:  # an effedge key, with the checkpoint's own name where that differs
        return key if origin.get(key, key) == key else f"{key} (checkpoint {origin[key]})"

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mis_shaped:
        parts = []
        if mis_shaped:
            k = mis_shaped[0]
            parts.append(f"{len(mis_shaped)} shape mismatches (first {named(k)}: {tuple(state[k].shape)} in checkpoint, "
                         f"{tuple(expected[k].shape)} in model)")
        if missing:
            parts.append(f"{len(missing)} missing (first {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {', '.join(map(named, unexpected[:3]))})")
        hint = _diagnose(state, model)
        raise CheckpointError(f"weights do not fit {name}: " + "; ".join(parts)
                              + (f" — {hint}" if hint else "") + "; use weights made for this variant")
    model.load_state_dict(state, strict=True)
