"""Mixed precision for classifiers goes by stage: stem, blocks.0 … blocks.6, head, classifier, other."""
import io
from collections import Counter

import onnx
import pytest
import torch
from helpers import photo_folder, random_weights

from effedge import build_model
from effedge.export.onnx_export import ExportOptions, export
from effedge.quantize import qdq
from effedge.quantize.fidelity import min_sqnr
from effedge.quantize.precision import PrecisionOptions, convert

SIZE = 64
CLASSIFIER_GROUPS = {"stem", *(f"blocks.{i}" for i in range(7)), "head", "classifier", "other"}
SEARCHED_GROUPS = CLASSIFIER_GROUPS - {"classifier", "other"}  # the groups with quantized inputs


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """A Lite0 classifier (uint8 input: its normalization is in the graph) at 64 px with random weights, a folder
    of photos and a private cache."""
    root = tmp_path_factory.mktemp("mixed_groups")
    export("lite0", root / "build", weights=random_weights("lite0", SIZE),
           options=ExportOptions(image_size=SIZE, input_format="uint8"))
    images = photo_folder(root / "images", 8, (96, 80))
    patcher = pytest.MonkeyPatch()
    patcher.setenv("EFFEDGE_CACHE_DIR", str(root / "cache"))
    yield root, images
    patcher.undo()


def _convert(lite0, precision, **extra):
    root, images = lite0
    extra.setdefault("holdout_views", 2)
    options = PrecisionOptions(precision=precision, calib_dir=images, calib_images=6, holdout=2, **extra)
    return convert(root / "build" / "model.sim.onnx", options=options)


def _convolutions(path, int8_only: bool, ops=("Conv", "Gemm")) -> Counter:
    """Conv/Gemm nodes per group, counted in the graph itself (INT8: input and weight both dequantized)."""
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}

    def dequantized(name):
        return name in producers and producers[name].op_type == "DequantizeLinear"

    return Counter(qdq.layer_group(n.name) for n in graph.node if n.op_type in ops
                   and (not int8_only or (dequantized(n.input[0]) and dequantized(n.input[1]))))


def test_the_groups_do_not_depend_on_how_the_network_is_wrapped():
    """timm's forward calls the stages as one Sequential, which puts a "/blocks/" scope above every stage, and a
    network exported on its own has no wrapper scope: both must give effedge's export's groups, node for node."""

    class Wrapper(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            net = self.net
            features = net.bn2(net.conv_head(net.blocks(net.bn1(net.conv_stem(x)))))
            return net.classifier(features.mean((2, 3)))

    net = build_model("lite0", image_size=SIZE)
    graphs = {}
    for name, module in (("bare", net), ("wrapped", Wrapper(net))):
        buffer = io.BytesIO()
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, SIZE, SIZE),), buffer, dynamo=False, opset_version=17)
        graphs[name] = onnx.load_from_string(buffer.getvalue()).graph
    convs = {name: Counter(qdq.layer_group(n.name) for n in graph.node if n.op_type in ("Conv", "Gemm"))
             for name, graph in graphs.items()}
    assert any("/blocks/blocks.3/" in n.name for n in graphs["wrapped"].node)  # the scope is really there
    assert convs["wrapped"] == convs["bare"]
    assert set(convs["bare"]) == CLASSIFIER_GROUPS - {"other"}
    assert convs["bare"]["classifier"] == 1 and convs["bare"]["head"] == 1 and convs["bare"]["stem"] == 1


def test_mixed_keeps_only_the_stages_the_target_needs(lite0):
    views = 8  # more than the search ranks the groups on: the target must hold on all of them
    int8, fp16 = _convert(lite0, "int8", holdout_views=views), _convert(lite0, "fp16", holdout_views=views)
    # halfway between int8 and fp16: here more than the most sensitive group (the head) gives on its own
    target = (min_sqnr(int8["fidelity"]) + min_sqnr(fp16["fidelity"])) / 2
    mixed = _convert(lite0, "mixed", fidelity_target=target, holdout_views=views)
    build = lite0[0] / "build"
    # searched: the groups with quantized inputs (the classifier's Gemm and "other" have none to keep)
    assert {s["group"] for s in mixed["sensitivity"]} == SEARCHED_GROUPS
    kept = set(mixed["kept_fp16"])
    assert mixed["fidelity_target_met"] is True and kept and kept < SEARCHED_GROUPS
    assert min_sqnr(mixed["fidelity"]) >= target  # met by the figures reported, on every held-out view
    int8_convs = _convolutions(build / "model.int8.onnx", int8_only=True)
    # int8 quantizes every Conv (ModelOpt leaves the classifier's Gemm in high precision)
    assert _convolutions(build / "model.int8.onnx", True, ("Conv",)) == _convolutions(build / "model.sim.onnx", False,
                                                                                       ("Conv",))
    mixed_convs = _convolutions(build / "model.mixed.onnx", int8_only=True)
    # a kept group holds no INT8 convolution; every other group keeps all of its INT8 convolutions
    assert mixed_convs == Counter({g: n for g, n in int8_convs.items() if g not in kept})
    assert any(g.startswith("blocks.") for g in mixed_convs) and any(g.startswith("blocks.") for g in kept)
    assert dict(mixed["qdq"]["int8_groups"]) == dict(mixed_convs)  # the report names the same groups


def test_an_unreachable_target_keeps_every_group(lite0):
    mixed = _convert(lite0, "mixed", fidelity_target=500.0)
    assert set(mixed["kept_fp16"]) == SEARCHED_GROUPS
    graph = onnx.load(str(lite0[0] / "build" / "model.mixed.onnx")).graph
    assert not [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert mixed["qdq"]["convolutions_int8"] == 0 and mixed["fidelity_target_met"] is False
