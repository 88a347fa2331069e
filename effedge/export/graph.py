"""Small, verifiable rewrites of ONNX graphs (after onnxsim has folded what it can).

* :func:`constants_to_initializers` — ``Constant`` nodes become initializers (fewer nodes for the parser).
* :func:`fold_scales_into_convs` — BiFPN fusion multiplies each input by a positive constant weight. Where a
  Conv output reaches only such multiplications, possibly through max-pooling or resizing (both commute with a
  positive scale), the first weight is folded into the Conv's kernel and bias and the others are divided by
  it: one element-wise pass fewer per feature map, same result.
* :func:`prune_dead_nodes` — drop nodes whose outputs nothing uses.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

_SCALE_COMMUTING = {"MaxPool", "Resize"}  # f(s·x) = s·f(x) for s > 0


def _consumers(graph) -> dict[str, list]:
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                users[name].append(node)
    return users


def constants_to_initializers(graph) -> int:
    from onnx import numpy_helper

    kept, moved = [], 0
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0]))
            moved += 1
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return moved


def prune_dead_nodes(graph) -> int:
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = needed
    live_initializers = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live_initializers)
    return removed


def fold_scales_into_convs(graph) -> int:
    """Fold positive scalar multiplications into the Conv producing their input; returns Muls removed."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    users = _consumers(graph)

    def scalar(name: str) -> float | None:
        if name in inits:
            array = numpy_helper.to_array(inits[name])
            if array.size == 1 and array.dtype == np.float32:
                return float(array.reshape(()))
        return None

    def scaled_leaves(tensor: str) -> list | None:
        """The Mul nodes (with their constant's input index) every path from ``tensor`` ends in, or None."""
        if tensor in graph_outputs:
            return None
        leaves = []
        for node in users[tensor]:
            if node.op_type in _SCALE_COMMUTING and node.input[0] == tensor and list(node.input).count(tensor) == 1:
                below = scaled_leaves(node.output[0])
                if below is None:
                    return None
                leaves += below
            elif node.op_type == "Mul" and len(node.input) == 2:
                const_index = 1 if node.input[0] == tensor else 0
                value = scalar(node.input[const_index])
                if node.input[1 - const_index] != tensor or value is None or value < 0:
                    return None
                leaves.append((node, const_index, value))
            else:
                return None
        return leaves

    removed_nodes = set()
    renames: dict[str, str] = {}
    for conv in list(graph.node):
        if conv.op_type != "Conv" or not all(name in inits for name in conv.input[1:]):
            continue
        if any(len(users[name]) != 1 for name in conv.input[1:]):  # weights shared with another node
            continue
        leaves = scaled_leaves(conv.output[0])
        positive = [leaf for leaf in leaves or [] if leaf[2] > 0]
        if not positive:  # the scale must be > 0 to commute with max-pooling (a zero weight stays a Mul)
            continue
        leaves = positive + [leaf for leaf in leaves if leaf[2] == 0]
        first_node, _, scale = leaves[0]
        for name in conv.input[1:]:
            array = numpy_helper.to_array(inits[name]) * np.float32(scale)
            inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
        for node, const_index, value in leaves[1:]:
            new_name = f"{node.name or node.output[0]}/scale"
            graph.initializer.append(numpy_helper.from_array(np.array(value / scale, np.float32), new_name))
            inits[new_name] = graph.initializer[-1]
            node.input[const_index] = new_name
        removed_nodes.add(id(first_node))
        renames[first_node.output[0]] = first_node.input[1 - leaves[0][1]]

    if not removed_nodes:
        return 0
    kept = [n for n in graph.node if id(n) not in removed_nodes]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    del graph.node[:]
    graph.node.extend(kept)
    prune_dead_nodes(graph)  # drops scalar initializers no longer used
    return len(removed_nodes)
