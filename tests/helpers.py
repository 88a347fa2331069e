"""Small helpers shared by tests."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from effedge import build_model


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and BN statistic a random, well-scaled value (so outputs exercise all weights)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            if name.endswith("edge_weights"):  # BiFPN fusion weights: trained ones are non-negative
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.2)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            elif tensor.ndim == 4:  # conv kernels: keep activations O(1) through deep stacks
                fan_in = tensor.shape[1] * tensor.shape[2] * tensor.shape[3]
                gain = 4.0 if "predict" in name else 1.0  # logits and box deltas of a few units, as trained
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * gain / fan_in**0.5)
            else:  # BN scale ≈ 0.5 keeps the un-normalized (sum) fusion of D6+ from growing layer by layer
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1
                             + (0.5 if name.endswith(".weight") and tensor.ndim == 1 else 0.0))
    return model


def effedge_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real console entry point (its error handling included) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "effedge", *args], capture_output=True, text=True, timeout=timeout)


def random_weights(variant, image_size=None, seed=0) -> dict:
    """A state dict of ``variant`` with realistic random values (see :func:`randomize_`)."""
    return randomize_(build_model(variant, image_size=image_size), seed).state_dict()


def photo(size=(96, 64), seed=0) -> np.ndarray:
    """A photo-like HWC uint8 RGB image: gradients plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([xx * 255 / size[0], yy * 255 / size[1], (xx + yy) % 256], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def raw_outputs_graph(batch: int, anchors: int, classes: int, opset: int = 17):
    """An ONNX graph that passes ``raw_boxes`` and ``raw_scores`` through as ``boxes [B, N, 4]`` and
    ``scores [B, N, C]``, the exported detector's outputs an NMS tail consumes."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", [f"raw_{n}"], [n]) for n in ("boxes", "scores")]
    graph = helper.make_graph(nodes, "raw", [
        helper.make_tensor_value_info("raw_boxes", TensorProto.FLOAT, [batch, anchors, 4]),
        helper.make_tensor_value_info("raw_scores", TensorProto.FLOAT, [batch, anchors, classes])], [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, anchors, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, anchors, classes])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
