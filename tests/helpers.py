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


def input_sensitive_weights(variant, image_size, seed=0) -> dict:
    """Random weights whose logits follow the image: :func:`randomize_`'s BN statistics let a deep classifier's
    input signal fade (its logits barely move with the image), so each BN here normalizes by the statistics of a
    batch of random inputs (scale 1)."""
    model = randomize_(build_model(variant, image_size=image_size), seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
            module.weight.data.fill_(1.0)
    model.train()
    with torch.no_grad():
        model(torch.randn((8, 3, image_size, image_size), generator=torch.Generator().manual_seed(seed)))
    return model.eval().state_dict()


def photo(size=(96, 64), seed=0) -> np.ndarray:
    """A photo-like HWC uint8 RGB image: gradients plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([xx * 255 / size[0], yy * 255 / size[1], (xx + yy) % 256], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def photo_folder(folder, count: int, size=(96, 64), suffix: str = ".jpg"):
    """``folder`` (made here) with ``count`` generated photos ``0<suffix>`` … (seeds 0 … count − 1)."""
    from PIL import Image

    folder.mkdir()
    for i in range(count):
        Image.fromarray(photo(size, seed=i)).save(folder / f"{i}{suffix}")
    return folder


def tiny_model(batch: int, size: int = 32, seed: int = 0):
    """Two convolutions with a static batch: enough graph for calibration, placement and fidelity, in seconds."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    nodes = [helper.make_node("Conv", ["images", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="pool"),
             helper.make_node("Flatten", ["pool"], ["features"], name="flatten")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def tiny_detector(stride: int, gain: float, bias: float, size: int = 32, classes: int = 2, seed: int = 0):
    """A detector in two nodes: a ``stride``×``stride`` convolution (weights × ``gain``, bias ``bias``) gives
    ``class_logits`` per anchor, ``scores`` their sigmoid, and ``boxes`` the fixed, non-overlapping anchor cells.
    Large ``gain``: a few decisive scores; tiny ``gain``: a crowd of near-tied ones."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    cells = size // stride
    weight = rng.standard_normal((classes, 3, stride, stride)) * gain / (3 * stride * stride) ** 0.5
    ys, xs = np.mgrid[0:cells, 0:cells].reshape(2, -1) * stride
    anchors = np.stack([xs, ys, xs + stride, ys + stride], -1)[None].astype(np.float32)
    initializers = [numpy_helper.from_array(weight.astype(np.float32), "w"),
                    numpy_helper.from_array(np.full(classes, bias, np.float32), "b"),
                    numpy_helper.from_array(np.array([1, classes, cells * cells], np.int64), "shape"),
                    numpy_helper.from_array(anchors, "anchors")]
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["conv"], strides=[stride, stride], name="head/conv"),
             helper.make_node("Reshape", ["conv", "shape"], ["flat"], name="head/reshape"),
             helper.make_node("Transpose", ["flat"], ["class_logits"], perm=[0, 2, 1], name="head/transpose"),
             helper.make_node("Sigmoid", ["class_logits"], ["scores"], name="head/sigmoid"),
             helper.make_node("Identity", ["anchors"], ["boxes"], name="head/boxes")]
    outputs = [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, [1, cells * cells, classes]),
               helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, cells * cells, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, cells * cells, classes])]
    graph = helper.make_graph(nodes, "tiny_detector", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, [1, 3, size, size])], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def overflowing_model(size: int = 32):
    """A convolution whose reciprocal is finite in fp32 but not in int8 with fp16 around it: the conv output's
    near-zero values become exact zeros or overflow fp16, so 1/x is infinite where fp32's is large but finite."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    identity = np.zeros((8, 8, 3, 3), np.float32)
    identity[np.arange(8), np.arange(8), 1, 1] = 1
    weights = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
               numpy_helper.from_array(identity, "w2")]
    nodes = [helper.make_node("Conv", ["images", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Reciprocal", ["c2"], ["inverse"], name="inverse")]
    graph = helper.make_graph(
        nodes, "overflow", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("inverse", TensorProto.FLOAT, [1, 8, size, size])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def fake_export(model, **recorded):
    """A stand-in for effedge.export.onnx_export.export that writes ``model`` as the export of any variant
    (model.onnx, model.sim.onnx, build.json with ``recorded`` added, e.g. weights="random"): compile's later
    stages then run on a graph of seconds."""
    def export(variant, out_dir, **kwargs):
        import json
        from pathlib import Path

        import onnx

        from effedge.io import sha256_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.onnx", "model.sim.onnx"):
            onnx.save(model, str(out / name))
        manifest = {"effedge_manifest": 1, "variant": str(variant), "precision": "fp32",
                    "artifacts": {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
                                  for name in ("model.onnx", "model.sim.onnx")}, **recorded}
        (out / "build.json").write_text(json.dumps(manifest))
        return manifest
    return export


def check_hashes_name_their_files(build_dir) -> int:
    """Every sha256 in ``build_dir``/build.json names its file (an ``artifacts`` key or a ``file`` beside it)
    and equals that file's hash on disk; returns how many were checked."""
    import json
    from pathlib import Path

    from effedge.io import sha256_file

    build_dir = Path(build_dir)
    checked = 0

    def walk(node, key=None, parent_key=None):
        nonlocal checked
        if isinstance(node, dict):
            if "sha256" in node:
                name = key if parent_key == "artifacts" else node.get("file")
                assert name, f"a sha256 in build.json names no file: {key}: {node}"
                path = Path(name) if Path(name).is_absolute() else build_dir / name
                assert sha256_file(path) == node["sha256"], f"build.json's sha256 for {name} ({key}) is another file's"
                checked += 1
            for child_key, child in node.items():
                walk(child, child_key, key)
        elif isinstance(node, list):
            for child in node:
                walk(child, key, parent_key)

    walk(json.loads((build_dir / "build.json").read_text()))
    return checked


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


def run_main(monkeypatch, capsys, args: list[str], *, drop_progress: bool = False) -> tuple[int, str, str]:
    """The real console entry point in this process: (exit code, stdout, stderr), stderr without the
    ``[effedge]`` progress lines with ``drop_progress``."""
    from effedge.cli.main import main

    monkeypatch.setattr("sys.argv", ["effedge", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    if drop_progress:
        err = "\n".join(line for line in err.splitlines() if not line.startswith("[effedge]"))
    return code, out, err
