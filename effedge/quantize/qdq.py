"""Operations on explicit-quantization (Q/DQ) ONNX graphs: find activation quantizers, write calibrated
scales, keep every scale valid, take layers back out of INT8, and summarise what is quantized.

TensorRT's ONNX importer asserts that every Q/DQ scale is positive (``scaleAllPositive``), and a scale that is
subnormal in its storage dtype loses its precision or flushes to zero on the GPU. So a scale is floored at the
smallest normal number of its dtype (fp16: 2^-14, i.e. an int8 range of ±0.0078), and a tensor or weight channel
that is all zero on the calibration set gets that floor instead of a zero range.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np

INT8_MAX = 127.0


def smallest_valid_scale(dtype) -> float:
    """The smallest Q/DQ scale effedge writes in ``dtype``: its smallest normal number."""
    return float(np.finfo(dtype).tiny)


def valid_scale(values: np.ndarray) -> np.ndarray:
    """``values`` with every entry that is not a normal positive number of its dtype raised to the floor
    (non-finite entries become the floor too: they mean a broken range, never a usable one)."""
    floor = np.asarray(smallest_valid_scale(values.dtype), values.dtype)
    return np.where(np.isfinite(values) & (values >= floor), values, floor).astype(values.dtype)


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph) -> dict:
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _source_tensor(name: str, producers: dict) -> str:
    """Follow Cast nodes back to the tensor of the original (fp32) graph."""
    while name in producers and producers[name].op_type == "Cast":
        name = producers[name].input[0]
    return name


def activation_quantizers(model) -> dict[str, list[tuple]]:
    """{original activation tensor: [(QuantizeLinear, DequantizeLinear), …]} for quantized activations."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producers, consumers = _producers(graph), _consumers(graph)
    found = defaultdict(list)
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        source = _source_tensor(node.input[0], producers)
        if source in initializers:  # a weight
            continue
        for dq in consumers[node.output[0]]:
            if dq.op_type == "DequantizeLinear":
                found[source].append((node, dq))
    return dict(found)


def _activation_amax(q_node, initializers: dict) -> float:
    from onnx import numpy_helper

    return float(numpy_helper.to_array(initializers[q_node.input[1]]).astype(np.float64).max() * INT8_MAX)


def activation_ranges(model) -> dict[str, float]:
    """{original activation tensor: amax} as the graph's activation quantizers hold them (scale × 127): the
    inverse of :func:`set_activation_ranges`."""
    initializers = {i.name: i for i in model.graph.initializer}
    return {tensor: max(_activation_amax(q, initializers) for q, _ in pairs)
            for tensor, pairs in activation_quantizers(model).items()}


PASS_THROUGH = ("Pad", "Cast", "Identity")  # ops between a convolution and the DQ of its input that keep its values


def convolution_input_ranges(model) -> dict[str, tuple[float, str]]:
    """{Conv node name: (amax, tensor)} for every Conv whose data input is dequantized (possibly through a Pad or
    Cast): the range of the activation quantizer it comes through and the tensor that quantizer quantizes (before
    any padding; graph inputs included)."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    ranges = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        producer = producers.get(node.input[0])
        while producer is not None and producer.op_type in PASS_THROUGH:
            producer = producers.get(producer.input[0])
        if producer is None or producer.op_type != "DequantizeLinear":
            continue
        q = producers.get(producer.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[1] in initializers:
            ranges[node.name] = (_activation_amax(q, initializers), _source_tensor(q.input[0], producers))
    return ranges


def set_activation_ranges(model, amax: dict[str, float]) -> int:
    """Write scale = amax/127 into every activation Q and DQ node; returns the number of tensors set."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    written = 0
    for tensor, pairs in activation_quantizers(model).items():
        if tensor not in amax:
            raise KeyError(f"no calibrated range for activation '{tensor}'")
        for pair in pairs:
            for node in pair:
                old = initializers[node.input[1]]
                dtype = numpy_helper.to_array(old).dtype
                name = node.input[1]
                if uses[name] > 1:  # shared scale: give this node its own
                    name = f"{node.name or node.output[0]}/scale"
                    node.input[1] = name
                scale = valid_scale(np.array(amax[tensor] / INT8_MAX, dtype=dtype))
                tensor_proto = numpy_helper.from_array(scale, name)
                if name in initializers:
                    initializers[name].CopyFrom(tensor_proto)
                else:
                    graph.initializer.append(tensor_proto)
                    initializers[name] = graph.initializer[-1]
        written += 1
    return written


def _scale_initializers(model):
    """(node, scale initializer) for every Q/DQ node whose scale is an initializer."""
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in initializers:
            yield node, initializers[node.input[1]]


def repair_scales(model) -> int:
    """Floor every Q/DQ scale initializer of ``model`` (e.g. ModelOpt's weight scales of an all-zero output
    channel are 0) so TensorRT accepts it; returns the number of scale values changed."""
    from onnx import numpy_helper

    changed = 0
    for _, initializer in _scale_initializers(model):
        values = numpy_helper.to_array(initializer)
        repaired = valid_scale(values)
        count = int(np.count_nonzero(repaired != values))  # NaN != anything: counted too
        if count:
            initializer.CopyFrom(numpy_helper.from_array(repaired, initializer.name))
            changed += count
    return changed


def invalid_scales(model) -> list[str]:
    """Descriptions of the Q/DQ scales TensorRT would reject or that are subnormal in their dtype (empty when
    the graph is valid); scales computed at run time (not initializers) are not checked."""
    from onnx import numpy_helper

    problems = []
    for node, initializer in _scale_initializers(model):
        values = numpy_helper.to_array(initializer)
        bad = ~np.isfinite(values) | (values < smallest_valid_scale(values.dtype))
        if bad.any():
            worst = values[bad].ravel()[0]
            problems.append(f"{node.name or node.output[0]}: {int(bad.sum())} of {values.size} {values.dtype} "
                            f"scale(s) invalid (e.g. {worst!r})")
    return problems


def dequantize_nodes(model, node_names: set[str]) -> int:
    """Take the named nodes out of INT8: their inputs bypass Q→DQ (activation and weight alike), so they run
    in the graph's high precision with the original weights. Returns the number of inputs bypassed."""
    from effedge.export.graph import prune_dead_nodes

    graph = model.graph
    producers = _producers(graph)
    bypassed = 0
    for node in graph.node:
        if node.name not in node_names:
            continue
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            node.input[index] = q.input[0]
            bypassed += 1
    prune_dead_nodes(graph)
    return bypassed


# The network's parts by module name (the layout of the reference checkpoints, shared by both families).
_STAGE = re.compile(r"blocks\.(\d+)(\.\d+)?$")  # a stage ("blocks.3"), or a block in it ("blocks.3.1")
_PARTS = {"conv_stem": "stem", "bn1": "stem", "conv_head": "head", "bn2": "head", "classifier": "classifier",
          "class_net": "class_net", "box_net": "box_net"}


def layer_group(node_name: str) -> str:
    """The block a node belongs to, from the module path the exporter writes into its name
    ("/model/backbone/blocks.3/blocks.3.1/conv_pw/Conv"; the last part is the operator's own name).

    The outermost scope that names a part of the network decides: the stem (conv_stem, bn1), a stage
    (blocks.N), a classifier's head (conv_head, bn2) and its Linear (classifier), a BiFPN layer (fpn/cell.N) or
    the extra-level resampling (fpn/resample), a detector head (class_net, box_net); a detector's backbone parts
    are prefixed "backbone/". Scopes around the network (the export wrapper, its input normalization, a
    Sequential called whole) name no part and are passed over, so the groups do not depend on how deep the
    network sits in the exported module; a node in no part (pooling, box decoding) is "other"."""
    scopes = [scope for scope in node_name.split("/")[:-1] if scope]
    prefix = ""
    for index, scope in enumerate(scopes):
        stage = _STAGE.match(scope)
        if stage:
            return f"{prefix}blocks.{stage[1]}"
        if scope in _PARTS:
            return prefix + _PARTS[scope]
        if scope == "fpn":
            layer = scopes[index + 1] if index + 1 < len(scopes) else ""
            return "fpn/" + (layer if layer.startswith("cell.") else "resample")
        if scope == "backbone":
            prefix = "backbone/"
    return "other"


def summary(model) -> dict:
    """Counts and properties of the Q/DQ graph, for build.json and the acceptance checks."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    convs = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    quantized_inputs = []  # (name, [input is dequantized, weight is dequantized]) per node: names may repeat
    for conv in convs:
        kinds = []
        for name in conv.input[:2]:
            dq = producers.get(name)
            kinds.append(dq is not None and dq.op_type == "DequantizeLinear")
        quantized_inputs.append((conv.name, kinds))
    weight_quantizers, activation_count = [], 0
    zero_points_zero = True
    for node in graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        if len(node.input) > 2 and node.input[2] in initializers:
            zero_points_zero &= bool(np.all(numpy_helper.to_array(initializers[node.input[2]]) == 0))
        source = _source_tensor(node.input[0], producers)
        if source in initializers:
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
            scale = numpy_helper.to_array(initializers[node.input[1]])
            weight_quantizers.append({"axis": int(axis), "channels": int(scale.size),
                                      "out_channels": int(initializers[source].dims[0])})
        else:
            activation_count += 1
    kept = sorted(name for name, kinds in quantized_inputs if not any(kinds))
    int8 = [name for name, kinds in quantized_inputs if all(kinds)]
    high = Counter(helper.tensor_dtype_to_np_dtype(i.data_type).name for i in graph.initializer
                   if i.data_type in (1, 10, 16))
    return {
        "convolutions": len(convs),
        "convolutions_int8": len(int8),
        "activation_quantizers": activation_count,
        "weight_quantizers": len(weight_quantizers),
        "weights_per_channel_axis0": sum(w["axis"] == 0 and w["channels"] == w["out_channels"]
                                         for w in weight_quantizers),
        "zero_points_all_zero": zero_points_zero,
        "not_quantized": kept,
        "not_quantized_groups": sorted(Counter(layer_group(n) for n in kept).items()),
        "int8_groups": sorted(Counter(layer_group(n) for n in int8).items()),
        "float_initializers": dict(high),
    }
