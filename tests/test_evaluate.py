"""Synthetic dataset generator and COCO evaluation (pycocotools) of detectors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from effedge.errors import EffedgeError
from effedge.evaluate.coco import evaluate
from effedge.runtime.detector import Detections
from shapes import CATEGORIES, generate

pytest.importorskip("pycocotools", reason="pycocotools is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return out, generate(out, 12, size=(128, 160), max_objects=4, seed=3)


def test_generator_is_deterministic_and_valid(dataset, tmp_path):
    out, annotations = dataset
    coco = json.loads(annotations.read_text())
    assert len(coco["images"]) == 12 and [c["name"] for c in coco["categories"]] == list(CATEGORIES)
    assert len(coco["annotations"]) >= 12
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 128 and w >= 8 and h >= 8
        assert 1 <= a["category_id"] <= len(CATEGORIES)
    again = generate(tmp_path, 12, size=(128, 160), max_objects=4, seed=3)
    assert json.loads(again.read_text()) == coco
    assert np.array_equal(np.asarray(Image.open(tmp_path / "images" / "000003.png")),
                          np.asarray(Image.open(out / "images" / "000003.png")))


def _oracle(annotations, shift=0.0, wrong_class=False):
    """A detector that returns the ground truth (optionally shifted or mislabeled)."""
    coco = json.loads(annotations.read_text())
    by_file = {i["file_name"]: i["id"] for i in coco["images"]}

    def detect(paths):
        found = []
        for path in paths:
            objects = [a for a in coco["annotations"] if a["image_id"] == by_file[path.name]]
            boxes = np.array([[x + shift * w, y, x + w + shift * w, y + h] for x, y, w, h in
                              (a["bbox"] for a in objects)], np.float32).reshape(-1, 4)
            classes = np.array([(a["category_id"] % 4) if wrong_class else a["category_id"] - 1 for a in objects])
            found.append(Detections(boxes, np.full(len(objects), 0.9, np.float32), classes))
        return found

    return detect


def test_map_of_perfect_shifted_and_mislabeled_detections(dataset):
    out, annotations = dataset
    perfect = evaluate(_oracle(annotations), out / "images", annotations)
    assert perfect["mAP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    shifted = evaluate(_oracle(annotations, shift=0.25), out / "images", annotations)
    assert 0.0 < shifted["mAP"] < 0.6 and shifted["AP50"] == pytest.approx(1.0)  # IoU 0.6: counts only at .5–.6
    assert evaluate(_oracle(annotations, wrong_class=True), out / "images", annotations)["mAP"] == 0.0


def test_a_size_range_without_ground_truth_has_no_ap_not_zero(dataset):
    """COCO's AP_small/medium/large are undefined (-1) where nothing of that size is annotated: reported as None
    ("-" in the table), not as 0.0, which would read as "misses every large object"."""
    out, annotations = dataset
    areas = [a["area"] for a in json.loads(annotations.read_text())["annotations"]]
    present = {"AP_small": any(a <= 32 ** 2 for a in areas), "AP_medium": any(32 ** 2 <= a <= 96 ** 2 for a in areas),
               "AP_large": any(a >= 96 ** 2 for a in areas)}
    assert not all(present.values())  # the dataset lacks a size, or the test checks nothing
    perfect = evaluate(_oracle(annotations), out / "images", annotations)
    nothing = evaluate(lambda paths: [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                                 np.zeros(0, np.int64)) for _ in paths], out / "images", annotations)
    for metric, annotated in present.items():
        assert perfect[metric] == (pytest.approx(1.0) if annotated else None), metric
        assert nothing[metric] == (0.0 if annotated else None), metric
    assert nothing["mAP"] == 0.0


def test_bad_evaluation_inputs(dataset, tmp_path):
    out, annotations = dataset
    with pytest.raises(EffedgeError, match="not found"):
        evaluate(_oracle(annotations), out / "images", tmp_path / "none.json")
    with pytest.raises(EffedgeError, match="missing from"):
        evaluate(_oracle(annotations), tmp_path, annotations)
