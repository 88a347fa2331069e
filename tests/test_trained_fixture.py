"""The trained reference model (tests/fixtures/shapes_d0_256.fp16.pth: D0 at 256 px, 4 shape classes, trained
with tools/train_reference.py) finds the objects the generator placed, through export, int8 and the Detector."""
import json
from pathlib import Path

import numpy as np
import pytest

from effedge.export.onnx_export import ExportOptions, export
from effedge.quantize.precision import PrecisionOptions, convert
from effedge.runtime.detector import Detector
from shapes import generate
from training import iou_matrix

FIXTURE = Path(__file__).parent / "fixtures" / "shapes_d0_256.fp16.pth"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixture")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("EFFEDGE_CACHE_DIR", str(root / "cache"))
    export("d0", root / "build", weights=str(FIXTURE), num_classes=4, options=ExportOptions(image_size=256))
    calib = generate(root / "calib", 40, size=(256, 256), seed=78).parent / "images"
    # percentile: the calibration that kept int8 within 0.1 mAP of fp32 on this model (entropy lost 11 points)
    convert(root / "build" / "model.sim.onnx", options=PrecisionOptions(precision="int8", calib_dir=calib,
                                                                         holdout=4, calib_images=36,
                                                                         method="percentile"))
    test_set = generate(root / "test", 4, size=(256, 256), seed=77)  # seeds 1, 2 trained and validated it
    yield {"fp32": root / "build" / "model.sim.onnx", "int8": root / "build" / "model.int8.onnx"}, test_set
    patcher.undo()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_detector_finds_the_generated_objects(models, precision):
    paths, annotations = models
    coco = json.loads(annotations.read_text())
    images = [annotations.parent / "images" / record["file_name"] for record in coco["images"]]
    with Detector(paths[precision], score_threshold=0.5) as detector:
        results = detector(images)
    found = missed = false_positives = 0
    for record, detections in zip(coco["images"], results):
        truth = [a for a in coco["annotations"] if a["image_id"] == record["id"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in truth)], np.float32)
        classes = np.array([a["category_id"] - 1 for a in truth])
        ious = iou_matrix(boxes, detections.boxes) if len(detections) else np.zeros((len(truth), 0))
        matched = set()
        for i in range(len(truth)):
            candidates = [j for j in np.argsort(-ious[i]) if ious[i, j] >= 0.5 and detections.classes[j] == classes[i]
                          and j not in matched]
            if candidates:
                matched.add(candidates[0])
                found += 1
            else:
                missed += 1
        false_positives += len(detections) - len(matched)
    assert found >= 0.9 * (found + missed), (found, missed)
    assert false_positives <= 0.2 * (found + false_positives), (found, false_positives)


def test_eval_compare_ranks_the_trained_model_above_an_untrained_one(models, tmp_path):
    """``eval --compare`` on the trained fixture: real figures, in the order the models were given."""
    import subprocess
    import sys

    paths, annotations = models
    export("d0", tmp_path / "untrained", num_classes=4, options=ExportOptions(image_size=128))
    result = subprocess.run([sys.executable, "-m", "effedge", "eval", str(paths["fp32"]), "--compare",
                             str(tmp_path / "untrained" / "model.sim.onnx"), "--compare", str(paths["int8"]),
                             "--images", str(annotations.parent / "images"), "--annotations", str(annotations),
                             "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    trained, untrained, int8 = json.loads(result.stdout)
    assert [row["images"] for row in (trained, untrained, int8)] == [4, 4, 4]
    assert trained["mAP"] > 0.6, trained  # the fixture finds its shapes (0.84 on the 60-image validation set)
    assert untrained["mAP"] < 0.05, untrained  # random weights find nothing
    assert abs(int8["mAP"] - trained["mAP"]) < 0.15, (trained, int8)
