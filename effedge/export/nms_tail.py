"""The ONNX tails that put NMS into an exported graph (the NumPy reference is :mod:`effedge.runtime.nms`).

Tails (appended to an exported graph with outputs ``boxes [B, N, 4]`` (x1, y1, x2, y2), ``class_logits`` and
``scores`` ``[B, N, C]``; the graph's other outputs and the nodes only they used are dropped):

* ``efficientnms`` — one ``EfficientNMS_TRT`` plugin node (TensorRT's plugin; not runnable in ONNX Runtime).
  Outputs ``num_detections [B, 1] int32``, ``detection_boxes [B, K, 4]``, ``detection_scores [B, K]``,
  ``detection_classes [B, K] int32``. It takes the raw logits with ``score_activation=1``, so the sigmoid is
  applied to the K survivors only.
* ``onnx`` — standard ``NonMaxSuppression`` (TensorRT ≥ 8.5 maps it to INMSLayer; runs in ONNX Runtime).
  Outputs ``selected_indices [M, 3] int64`` (batch, class, anchor), ``detection_boxes [M, 4]`` and
  ``detection_scores [M]``; K is the limit *per class and image*, as the operator defines it. Before NMS each
  image keeps its ``PRE_NMS_TOP`` best anchors (by their highest class score), as EfficientNMS does: NMS over
  every anchor of every class cost as much as the network (D0 on a CPU), over these a small fraction. The
  anchor column still indexes the original anchors.
"""
from __future__ import annotations

import numpy as np

NMS_TAILS = ("none", "onnx", "efficientnms")
# TensorRT's ONNX parser imports a node it has no importer for as the plugin named by its op type (version and
# namespace from the plugin_version / plugin_namespace attributes); the domain only keeps onnx.checker from
# looking for a standard schema, and is the one ONNX Runtime's TensorRT provider uses for TRT plugins.
TRT_PLUGIN_DOMAIN = "trt.plugins"
PRE_NMS_TOP = 1000  # anchors per image the onnx tail hands to NonMaxSuppression
TAIL_OUTPUTS = {"efficientnms": {"num_detections", "detection_boxes", "detection_scores", "detection_classes"},
                "onnx": {"selected_indices", "detection_boxes", "detection_scores"}}


def default_tail(backend: str, is_detector: bool = True) -> str:
    """The tail a backend runs, which ``--nms auto`` deploys: EfficientNMS_TRT on TensorRT, ONNX
    NonMaxSuppression on ONNX Runtime, none on TensorRT-RTX (no plugins, no NMS layer: the Detector runs NMS)
    and for classifiers."""
    if not is_detector or backend == "tensorrt-rtx":
        return "none"
    return "efficientnms" if backend == "tensorrt" else "onnx"


def tail_of(output_names) -> str:
    """The NMS tail a graph or engine ends in, from its output names."""
    names = set(output_names)
    return next((tail for tail, outputs in TAIL_OUTPUTS.items() if outputs <= names), "none")


def append_nms_tail(model, tail: str, *, score_threshold: float, iou_threshold: float, max_detections: int):
    """Return ``model`` (ONNX ModelProto) with the NMS ``tail`` consuming its ``boxes`` and ``class_logits``."""
    if tail == "none":
        return model
    from onnx import TensorProto, helper, numpy_helper

    from effedge.export.graph import prune_dead_nodes

    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    for needed in ("boxes", "class_logits" if tail == "efficientnms" else "scores"):
        if needed not in outputs:
            raise ValueError(f"graph has no '{needed}' output to attach NMS to")
    batch = outputs["boxes"].type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "batch")
    del graph.output[:]

    if tail == "efficientnms":
        graph.node.append(helper.make_node(
            "EfficientNMS_TRT", ["boxes", "class_logits"],
            ["num_detections", "detection_boxes", "detection_scores", "detection_classes"],
            name="nms/EfficientNMS_TRT", domain=TRT_PLUGIN_DOMAIN, plugin_version="1", background_class=-1, box_coding=0,
            score_activation=1, class_agnostic=0, iou_threshold=float(iou_threshold),
            score_threshold=float(score_threshold), max_output_boxes=int(max_detections)))
        graph.output.extend([
            helper.make_tensor_value_info("num_detections", TensorProto.INT32, [batch_dim, 1]),
            helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [batch_dim, max_detections, 4]),
            helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [batch_dim, max_detections]),
            helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [batch_dim, max_detections]),
        ])
        if not any(o.domain == TRT_PLUGIN_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(TRT_PLUGIN_DOMAIN, 1))
        prune_dead_nodes(graph)
        return model

    if tail != "onnx":
        raise ValueError(f"unknown NMS tail {tail!r}; use one of {', '.join(NMS_TAILS)}")
    anchors = outputs["boxes"].type.tensor_type.shape.dim[1]
    if not anchors.HasField("dim_value"):
        raise ValueError("the onnx NMS tail needs a static number of anchors")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    constants = {
        "nms/top": np.array([min(PRE_NMS_TOP, anchors.dim_value)], np.int64),
        "nms/last_axis": np.array([-1], np.int64),
        "nms/max_per_class": np.array([max_detections], np.int64),
        "nms/iou_threshold": np.array([iou_threshold], np.float32),
        "nms/score_threshold": np.array([score_threshold], np.float32),
        "nms/batch_class": np.array([0, 1], np.int64),
        "nms/batch_slot": np.array([0, 2], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    # ReduceMax takes its axes as an input from opset 18 on, as an attribute before
    best = (helper.make_node("ReduceMax", ["scores", "nms/last_axis"], ["nms/best"], keepdims=0, name="nms/Best")
            if opset >= 18 else
            helper.make_node("ReduceMax", ["scores"], ["nms/best"], axes=[-1], keepdims=0, name="nms/Best"))
    graph.node.extend([
        # per image the PRE_NMS_TOP anchors with the highest class score, best first: [B, k]
        best,
        helper.make_node("TopK", ["nms/best", "nms/top"], ["nms/top_scores", "nms/top_anchors"], axis=1,
                         largest=1, sorted=1, name="nms/TopK"),
        helper.make_node("Unsqueeze", ["nms/top_anchors", "nms/last_axis"], ["nms/top_anchors_1"],
                         name="nms/TopAnchors"),
        helper.make_node("GatherND", ["boxes", "nms/top_anchors_1"], ["nms/top_boxes"], batch_dims=1,
                         name="nms/TopBoxes"),
        helper.make_node("GatherND", ["scores", "nms/top_anchors_1"], ["nms/top_class_scores"], batch_dims=1,
                         name="nms/TopScores"),
        helper.make_node("Transpose", ["nms/top_class_scores"], ["nms/scores_bck"], perm=[0, 2, 1],
                         name="nms/Transpose"),
        # rows (batch, class, slot among the kept anchors)
        helper.make_node("NonMaxSuppression", ["nms/top_boxes", "nms/scores_bck", "nms/max_per_class",
                                               "nms/iou_threshold", "nms/score_threshold"], ["nms/selected"],
                         center_point_box=0, name="nms/NonMaxSuppression"),
        helper.make_node("Gather", ["nms/selected", "nms/batch_slot"], ["nms/batch_slot_rows"], axis=1,
                         name="nms/BatchSlot"),
        helper.make_node("GatherND", ["nms/top_boxes", "nms/batch_slot_rows"], ["detection_boxes"],
                         name="nms/Boxes"),
        helper.make_node("GatherND", ["nms/scores_bck", "nms/selected"], ["detection_scores"], name="nms/Scores"),
        # the slot back to the original anchor: selected_indices keeps (batch, class, anchor)
        helper.make_node("GatherND", ["nms/top_anchors", "nms/batch_slot_rows"], ["nms/anchor"],
                         name="nms/Anchor"),
        helper.make_node("Unsqueeze", ["nms/anchor", "nms/last_axis"], ["nms/anchor_1"], name="nms/AnchorColumn"),
        helper.make_node("Gather", ["nms/selected", "nms/batch_class"], ["nms/batch_class_rows"], axis=1,
                         name="nms/BatchClass"),
        helper.make_node("Concat", ["nms/batch_class_rows", "nms/anchor_1"], ["selected_indices"], axis=1,
                         name="nms/SelectedIndices"),
    ])
    graph.output.extend([
        helper.make_tensor_value_info("selected_indices", TensorProto.INT64, ["detections", 3]),
        helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, ["detections", 4]),
        helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, ["detections"]),
    ])
    prune_dead_nodes(graph)
    return model
