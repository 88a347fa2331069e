"""Detector: preprocessing as compiled, postprocessing per graph kind, coordinates mapped back, bad input."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effedge.errors import EffedgeError
from effedge.runtime.detector import Detector


def constant_detector(path, outputs: dict, batch=1, size=64):
    """An ONNX graph whose outputs are the given constants (per image of the batch): what a compiled
    detector would return, with the image input in place."""
    nodes, values = [], []
    for name, array in outputs.items():
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name + "_v")))
        values.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype),
                                                    list(array.shape)))
    graph = helper.make_graph(nodes, "constant-detector", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                         [batch, 3, size, size])], values)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx 1.23 writes IR 14 by default, newer than ONNX Runtime 1.31 reads
    onnx.save(model, str(path))
    return path


def raw_outputs(batch=1):
    boxes = np.array([[8, 8, 24, 24], [9, 9, 25, 25], [40, 30, 60, 50]], np.float32)  # model pixels
    scores = np.zeros((3, 2), np.float32)
    scores[0, 0], scores[1, 0], scores[2, 1] = 0.9, 0.8, 0.6  # box 1 overlaps box 0 (same class)
    return {"boxes": np.repeat(boxes[None], batch, 0), "scores": np.repeat(scores[None], batch, 0)}


def test_raw_outputs_get_nms_and_original_coordinates(tmp_path):
    model = constant_detector(tmp_path / "m.onnx", raw_outputs())
    image = np.zeros((32, 128, 3), np.uint8)  # letterboxed into 64×64 at scale 0.5
    with Detector(model, score_threshold=0.5) as detector:
        [found] = detector([image])
    assert found.classes.tolist() == [0, 1] and found.scores.tolist() == pytest.approx([0.9, 0.6])
    np.testing.assert_allclose(found.boxes[0], [16, 16, 48, 32])  # ÷ 0.5, y clipped to the 32-pixel height
    np.testing.assert_allclose(found.boxes[1], [80, 32, 120, 32])  # clipped to the 128×32 image
    with Detector(model, score_threshold=0.7) as detector:
        assert len(detector([image])[0]) == 1


def test_nms_tails_are_read_as_is(tmp_path):
    efficient = constant_detector(tmp_path / "e.onnx", {
        "num_detections": np.array([[2]], np.int32),
        "detection_boxes": np.array([[[0, 0, 32, 32], [32, 32, 64, 64], [0, 0, 0, 0]]], np.float32),
        "detection_scores": np.array([[0.95, 0.4, 0.0]], np.float32),
        "detection_classes": np.array([[3, 7, 0]], np.int32)})
    with Detector(efficient, score_threshold=0.3) as detector:
        [found] = detector([np.zeros((128, 128, 3), np.uint8)])
    assert found.classes.tolist() == [3, 7] and found.boxes[1].tolist() == [64, 64, 128, 128]
    onnx_nms = constant_detector(tmp_path / "o.onnx", {
        "selected_indices": np.array([[0, 5, 10], [0, 2, 11]], np.int64),
        "detection_boxes": np.array([[0, 0, 16, 16], [16, 16, 32, 32]], np.float32),
        "detection_scores": np.array([0.5, 0.9], np.float32)})
    with Detector(onnx_nms) as detector:
        [found] = detector([np.zeros((64, 64, 3), np.uint8)])
    assert found.classes.tolist() == [2, 5] and found.scores.tolist() == pytest.approx([0.9, 0.5])


def test_bad_input(tmp_path):
    model = constant_detector(tmp_path / "m.onnx", raw_outputs())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    with Detector(model) as detector:
        with pytest.raises(EffedgeError, match="cannot decode"):
            detector([broken])
        with pytest.raises(EffedgeError, match="HWC uint8 RGB arrays, got float32"):
            detector([np.zeros((8, 8, 3), np.float32)])
        with pytest.raises(EffedgeError, match="takes a list"):
            detector(np.zeros((8, 8, 3), np.uint8))
    odd = constant_detector(tmp_path / "odd.onnx", {"features": np.zeros((1, 10, 4), np.float32)})
    with pytest.raises(EffedgeError, match="expected an effedge detector"):
        Detector(odd)
    classifier = constant_detector(tmp_path / "classifier.onnx", {"logits": np.zeros((1, 10), np.float32)})
    with pytest.raises(EffedgeError, match="is a classifier .*effedge classify"):
        Detector(classifier)
    with pytest.raises(EffedgeError, match="not found"):
        Detector(tmp_path / "missing.engine")


def test_detect_cli_refuses_a_missing_image_in_one_line(tmp_path):
    model = constant_detector(tmp_path / "m.onnx", raw_outputs())
    bad = subprocess.run([sys.executable, "-m", "effedge", "detect", str(model), str(tmp_path / "nope.jpg"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "out").exists()
