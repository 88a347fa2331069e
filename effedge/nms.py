"""Non-maximum suppression: a NumPy reference, and the ONNX tails that put NMS into the graph.

Tails (appended to an exported graph with outputs ``boxes [B, N, 4]`` (x1, y1, x2, y2), ``class_logits`` and
``scores`` ``[B, N, C]``; the graph's other outputs and the nodes only they used are dropped):

* ``efficientnms`` — one ``EfficientNMS_TRT`` plugin node (TensorRT's plugin; not runnable in ONNX Runtime).
  Outputs ``num_detections [B, 1] int32``, ``detection_boxes [B, K, 4]``, ``detection_scores [B, K]``,
  ``detection_classes [B, K] int32``. It takes the raw logits with ``score_activation=1``, so the sigmoid is
  applied to the K survivors only.
* ``onnx`` — standard ``NonMaxSuppression`` (TensorRT ≥ 8.5 maps it to INMSLayer; runs in ONNX Runtime).
  Outputs ``selected_indices [M, 3] int64`` (batch, class, anchor), ``detection_boxes [M, 4]`` and
  ``detection_scores [M]``; K is the limit *per class and image*, as the operator defines it.
"""
from __future__ import annotations

import numpy as np

NMS_TAILS = ("none", "onnx", "efficientnms")
# TensorRT's ONNX parser imports a node it has no importer for as the plugin named by its op type (version and
# namespace from the plugin_version / plugin_namespace attributes); the domain only keeps onnx.checker from
# looking for a standard schema, and is the one ONNX Runtime's TensorRT provider uses for TRT plugins.
TRT_PLUGIN_DOMAIN = "trt.plugins"


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=1)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best first. A box is suppressed when IoU > threshold."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[iou_one_to_many(boxes[best], boxes[order]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, iou_threshold: float,
                max_per_class: int | None = None) -> np.ndarray:
    """Per-class NMS of one image: ``boxes [N, 4]``, ``scores [N, C]`` -> rows (class, anchor), by class then
    descending score (the order ONNX ``NonMaxSuppression`` reports)."""
    selected = []
    for cls in range(scores.shape[1]):
        candidates = np.flatnonzero(scores[:, cls] > score_threshold)
        if candidates.size == 0:
            continue
        kept = candidates[nms(boxes[candidates], scores[candidates, cls], iou_threshold, max_per_class)]
        selected.extend((cls, int(i)) for i in kept)
    return np.asarray(selected, dtype=np.int64).reshape(-1, 2)


def append_nms_tail(model, tail: str, *, score_threshold: float, iou_threshold: float, max_detections: int):
    """Return ``model`` (ONNX ModelProto) with the NMS ``tail`` consuming its ``boxes`` and ``class_logits``."""
    if tail == "none":
        return model
    from onnx import TensorProto, helper, numpy_helper

    from effedge.onnx_graph import prune_dead_nodes

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
    constants = {
        "nms/max_per_class": np.array([max_detections], np.int64),
        "nms/iou_threshold": np.array([iou_threshold], np.float32),
        "nms/score_threshold": np.array([score_threshold], np.float32),
        "nms/batch_anchor_columns": np.array([0, 2], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    graph.node.extend([
        helper.make_node("Transpose", ["scores"], ["nms/scores_bcn"], perm=[0, 2, 1], name="nms/Transpose"),
        helper.make_node("NonMaxSuppression", ["boxes", "nms/scores_bcn", "nms/max_per_class", "nms/iou_threshold",
                                               "nms/score_threshold"], ["selected_indices"], center_point_box=0,
                         name="nms/NonMaxSuppression"),
        helper.make_node("Gather", ["selected_indices", "nms/batch_anchor_columns"], ["nms/batch_anchor"], axis=1,
                         name="nms/BatchAnchor"),
        helper.make_node("GatherND", ["boxes", "nms/batch_anchor"], ["detection_boxes"], name="nms/Boxes"),
        helper.make_node("GatherND", ["nms/scores_bcn", "selected_indices"], ["detection_scores"],
                         name="nms/Scores"),
    ])
    graph.output.extend([
        helper.make_tensor_value_info("selected_indices", TensorProto.INT64, ["detections", 3]),
        helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, ["detections", 4]),
        helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, ["detections"]),
    ])
    prune_dead_nodes(graph)
    return model


def select_detections(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float, iou_threshold: float,
                      max_detections: int, pre_nms_top: int = 5000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image from decoded ``boxes [N, 4]`` and ``scores [N, C]``: per-class NMS over the
    ``pre_nms_top`` best (anchor, class) candidates above the threshold. Returns (boxes, scores, classes),
    best first, at most ``max_detections``."""
    anchors, classes = np.nonzero(scores > score_threshold)
    candidate_scores = scores[anchors, classes]
    if candidate_scores.size > pre_nms_top:
        top = np.argpartition(-candidate_scores, pre_nms_top)[:pre_nms_top]
        anchors, classes, candidate_scores = anchors[top], classes[top], candidate_scores[top]
    kept = []
    for cls in np.unique(classes):
        members = np.flatnonzero(classes == cls)
        kept.extend(members[nms(boxes[anchors[members]], candidate_scores[members], iou_threshold)])
    kept = np.asarray(kept, dtype=np.int64)
    kept = kept[np.argsort(-candidate_scores[kept], kind="stable")][:max_detections]
    return boxes[anchors[kept]], candidate_scores[kept], classes[kept]
