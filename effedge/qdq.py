"""Operations on explicit-quantization (Q/DQ) ONNX graphs: find activation quantizers, write calibrated
scales, take layers back out of INT8, and summarise what is quantized."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

INT8_MAX = 127.0


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
        scale_value = (amax[tensor] if amax[tensor] > 0 else 1.0) / INT8_MAX
        for pair in pairs:
            for node in pair:
                old = initializers[node.input[1]]
                dtype = numpy_helper.to_array(old).dtype
                name = node.input[1]
                if uses[name] > 1:  # shared scale: give this node its own
                    name = f"{node.name or node.output[0]}/scale"
                    node.input[1] = name
                tensor_proto = numpy_helper.from_array(np.array(scale_value, dtype=dtype), name)
                if name in initializers:
                    initializers[name].CopyFrom(tensor_proto)
                else:
                    graph.initializer.append(tensor_proto)
                    initializers[name] = graph.initializer[-1]
        written += 1
    return written


def dequantize_nodes(model, node_names: set[str]) -> int:
    """Take the named nodes out of INT8: their inputs bypass Q→DQ (activation and weight alike), so they run
    in the graph's high precision with the original weights. Returns the number of inputs bypassed."""
    from effedge.onnx_graph import prune_dead_nodes

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


def layer_group(node_name: str) -> str:
    """The block a node belongs to, from the exporter's module path ("/model/backbone/blocks.3/…"):
    a backbone stage, the stem, a BiFPN layer, the extra-level resampling, a head, or the classifier head."""
    parts = [p for p in node_name.split("/") if p][1:]  # drop the wrapper's "model"
    prefix = ""
    if parts[:1] == ["backbone"]:
        prefix, parts = "backbone/", parts[1:]
    if not parts:
        return "other"
    first = parts[0]
    if first.startswith("blocks."):
        return prefix + first
    if first in ("conv_stem", "bn1"):
        return prefix + "stem"
    if first == "fpn":
        return "fpn/" + (parts[1] if len(parts) > 1 and parts[1].startswith("cell.") else "resample")
    if first in ("conv_head", "bn2", "classifier"):
        return "head"
    return prefix + first


def summary(model) -> dict:
    """Counts and properties of the Q/DQ graph, for build.json and the acceptance checks."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    convs = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    quantized_inputs = {}
    for conv in convs:
        kinds = []
        for name in conv.input[:2]:
            dq = producers.get(name)
            kinds.append(dq is not None and dq.op_type == "DequantizeLinear")
        quantized_inputs[conv.name] = kinds
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
    kept = sorted(name for name, kinds in quantized_inputs.items() if not any(kinds))
    high = Counter(helper.tensor_dtype_to_np_dtype(i.data_type).name for i in graph.initializer
                   if i.data_type in (1, 10, 16))
    return {
        "convolutions": len(convs),
        "convolutions_int8": sum(all(k) for k in quantized_inputs.values()),
        "activation_quantizers": activation_count,
        "weight_quantizers": len(weight_quantizers),
        "weights_per_channel_axis0": sum(w["axis"] == 0 and w["channels"] == w["out_channels"]
                                         for w in weight_quantizers),
        "zero_points_all_zero": zero_points_zero,
        "not_quantized": kept,
        "not_quantized_groups": sorted(Counter(layer_group(n) for n in kept).items()),
        "float_initializers": dict(high),
    }
