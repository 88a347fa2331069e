"""The C++ decoding core (effedge/native) built with the system compiler and called through ctypes must give
the detections NumPy's select_detections + the Detector's mapping give."""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from effedge.runtime.nms import select_detections

NATIVE = Path(__file__).resolve().parent.parent / "effedge" / "native"
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on PATH to build effedge/native")


class Detection(ctypes.Structure):
    _fields_ = [("x1", ctypes.c_float), ("y1", ctypes.c_float), ("x2", ctypes.c_float), ("y2", ctypes.c_float),
                ("score", ctypes.c_float), ("class_id", ctypes.c_int32)]


class Config(ctypes.Structure):
    _fields_ = [("score_threshold", ctypes.c_float), ("iou_threshold", ctypes.c_float),
                ("max_detections", ctypes.c_int), ("pre_nms_top", ctypes.c_int)]


class Mapping(ctypes.Structure):
    _fields_ = [("factor", ctypes.c_double), ("width", ctypes.c_int), ("height", ctypes.c_int)]


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    library = tmp_path_factory.mktemp("native") / "libeffedge_decode.so"
    subprocess.run(["g++", "-std=c++17", "-O2", "-shared", "-fPIC", str(NATIVE / "effedge_decode.cpp"),
                    "-o", str(library)], check=True)
    return ctypes.CDLL(str(library))


def test_the_header_compiles_as_c():
    if shutil.which("gcc") is None:
        pytest.skip("no gcc on PATH")
    subprocess.run(["gcc", "-fsyntax-only", "-x", "c", "-std=c99", "-Wall", "-Werror", str(NATIVE / "effedge_decode.h")],
                   check=True)


@pytest.mark.parametrize("size", [(480, 640), (640, 360), (300, 300)])
def test_raw_decoding_matches_numpy(core, size):
    rng = np.random.default_rng(sum(size))
    anchors, classes = 2000, 5
    corners = rng.uniform(0, 200, (anchors, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(5, 60, (anchors, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 0.4, (anchors, classes)).astype(np.float32) ** 1.5 * 2.2
    scores = np.ascontiguousarray(scores.astype(np.float32))
    kept_boxes, kept_scores, kept_classes = select_detections(boxes, scores, score_threshold=0.3,
                                                              iou_threshold=0.5, max_detections=100)
    height, width = size
    factor = 1 / min(256 / height, 256 / width)
    expected = np.clip(kept_boxes * factor, 0, [width, height, width, height])
    out = (Detection * 100)()
    count = core.effedge_decode_raw(ctypes.byref(Config(0.3, 0.5, 100, 5000)),
                                    boxes.ctypes.data_as(ctypes.c_void_p), scores.ctypes.data_as(ctypes.c_void_p),
                                    anchors, classes, ctypes.byref(Mapping(factor, width, height)), out, 100)
    assert count == len(kept_scores) > 10
    got = np.array([[d.x1, d.y1, d.x2, d.y2] for d in out[:count]])
    assert [d.class_id for d in out[:count]] == kept_classes.tolist()
    np.testing.assert_allclose([d.score for d in out[:count]], kept_scores, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=0.5)
