"""The trained reference model (`--weights demo`, effedge/data/demo/shapes_d0_256.fp16.pth: D0 at 256 px, 4 shape
classes, trained with tools/train_reference.py) finds the objects the generator placed, through export, int8, the ONNX NMS tail,
the Detector and ``effedge detect`` on a phone-size photo."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from effedge.export.onnx_export import ExportOptions, export
from effedge.quantize.precision import PrecisionOptions, convert
from effedge.runtime.detector import Detector
from PIL import Image
from shapes import CATEGORIES, generate, make_image
from training import iou_matrix


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixture")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("EFFEDGE_CACHE_DIR", str(root / "cache"))
    # model.sim.onnx: no NMS tail (NumPy NMS in the Detector); model.fp32.onnx: the ONNX NonMaxSuppression tail.
    # Exported as a user would (`--weights demo`: D0, 256 px, 4 classes and their names in build.json).
    exported = subprocess.run([sys.executable, "-m", "effedge", "export", "--weights", "demo", "--nms", "onnx",
                               "--out", str(root / "build")], capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr
    calib = generate(root / "calib", 40, size=(256, 256), seed=78).parent / "images"
    # percentile: the calibration that kept int8 within 0.1 mAP of fp32 on this model (entropy lost 11 points)
    convert(root / "build" / "model.sim.onnx", options=PrecisionOptions(precision="int8", calib_dir=calib,
                                                                         holdout=4, calib_images=36,
                                                                         method="percentile"))
    test_set = generate(root / "test", 4, size=(256, 256), seed=77)  # seeds 1, 2 trained and validated it
    yield {"fp32": root / "build" / "model.sim.onnx", "int8": root / "build" / "model.int8.onnx",
           "onnx-nms": root / "build" / "model.fp32.onnx"}, test_set
    patcher.undo()


def tally(truth: list[dict], boxes: np.ndarray, classes: np.ndarray, scale: float = 1.0) -> tuple[int, int, int]:
    """(found, missed, false positives): each COCO ``truth`` object (its bbox times ``scale``) matched to a detection
    of its class at IoU ≥ 0.5, each detection used once."""
    expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in truth)], np.float32) * scale
    expected_classes = np.array([a["category_id"] - 1 for a in truth])
    ious = iou_matrix(expected, boxes) if len(boxes) else np.zeros((len(truth), 0))
    matched = set()
    for i in range(len(truth)):
        candidates = [j for j in np.argsort(-ious[i]) if ious[i, j] >= 0.5 and classes[j] == expected_classes[i]
                      and j not in matched]
        if candidates:
            matched.add(candidates[0])
    return len(matched), len(truth) - len(matched), len(boxes) - len(matched)


def generated_images(annotations: Path):
    coco = json.loads(annotations.read_text())
    return coco, [annotations.parent / "images" / record["file_name"] for record in coco["images"]]


@pytest.mark.parametrize("precision", ["fp32", "int8", "onnx-nms"])
def test_detector_finds_the_generated_objects(models, precision):
    paths, annotations = models
    coco, images = generated_images(annotations)
    with Detector(paths[precision], score_threshold=0.5) as detector:
        results = detector(images)
    found = missed = false_positives = 0
    for record, detections in zip(coco["images"], results):
        truth = [a for a in coco["annotations"] if a["image_id"] == record["id"]]
        counts = tally(truth, detections.boxes, detections.classes)
        found, missed, false_positives = found + counts[0], missed + counts[1], false_positives + counts[2]
    assert found >= 0.9 * (found + missed), (found, missed)
    assert false_positives <= 0.2 * (found + false_positives), (found, false_positives)


def test_the_onnx_nms_tail_gives_the_numpy_nms_detections(models):
    """The same network with its NMS in the graph (NonMaxSuppression) and in NumPy: the same detections."""
    paths, annotations = models
    _, images = generated_images(annotations)
    with Detector(paths["onnx-nms"], score_threshold=0.5) as tailed, Detector(paths["fp32"], score_threshold=0.5) as raw:
        pairs = list(zip(tailed(images), raw(images)))
    assert sum(len(r) for _, r in pairs) >= len(images)
    for in_graph, in_numpy in pairs:
        assert in_graph.classes.tolist() == in_numpy.classes.tolist()
        np.testing.assert_allclose(in_graph.scores, in_numpy.scores, atol=1e-5)
        np.testing.assert_allclose(in_graph.boxes, in_numpy.boxes, atol=1e-3)


def test_detect_on_a_4000x3000_photo_gives_boxes_in_its_pixels(models, tmp_path):
    """A generated 256×192 scene enlarged 15.625× to a 4000×3000 JPEG (the letterbox brings it back to 256×192):
    ``effedge detect`` finds every object (IoU ≥ 0.5, its class) in the photo's pixels."""
    paths, _ = models
    scene, objects = make_image(np.random.default_rng(5), 192, 256, max_objects=5, min_size=32)
    scale = 4000 / 256
    photo = tmp_path / "photo.jpg"
    Image.fromarray(scene).resize((4000, 3000), Image.BILINEAR).save(photo, quality=90)
    result = subprocess.run([sys.executable, "-m", "effedge", "detect", str(paths["onnx-nms"]), str(photo),
                             "--score-threshold", "0.5", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [entry] = json.loads((tmp_path / "out" / "detections.json").read_text())
    boxes = np.array([d["box"] for d in entry["detections"]], np.float32).reshape(-1, 4)
    classes = np.array([d["class"] for d in entry["detections"]])
    truth = [{"bbox": box, "category_id": category + 1} for category, box in objects]
    found, missed, _ = tally(truth, boxes, classes, scale)  # false positives: the test above judges those
    assert (found, missed) == (len(objects), 0), (boxes, [(c, np.array(b) * scale) for c, b in objects])


def test_detect_names_the_demo_shapes(models, tmp_path):
    """``effedge detect`` on the `--weights demo` build and a folder of generated images: every object found with its
    shape's name (tools/shapes.py CATEGORIES), no category_id (not a COCO head)."""
    paths, annotations = models
    coco, _ = generated_images(annotations)
    result = subprocess.run([sys.executable, "-m", "effedge", "detect", str(paths["onnx-nms"]),
                             str(annotations.parent / "images"), "--score-threshold", "0.5", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(report) == len(coco["images"])
    found = missed = 0
    for record, entry in zip(coco["images"], report):
        assert entry["image"].endswith(record["file_name"])
        assert all(d["name"] == CATEGORIES[d["class"]] and "category_id" not in d for d in entry["detections"])
        truth = [a for a in coco["annotations"] if a["image_id"] == record["id"]]
        counts = tally(truth, np.array([d["box"] for d in entry["detections"]], np.float32).reshape(-1, 4),
                       np.array([d["class"] for d in entry["detections"]]))
        found, missed = found + counts[0], missed + counts[1]
    assert found >= 0.9 * (found + missed), (found, missed)
    named = {name for name in CATEGORIES if f" {name}" in result.stdout}
    assert len(named) >= 3, result.stdout  # the summary lines name the shapes


def test_eval_on_phone_size_photos_matches_the_small_images(models, tmp_path):
    """The test set enlarged 12× (256 -> 3072 px JPEGs, annotations scaled): the same mAP as at 256 px."""
    from effedge.evaluate.coco import EVAL_SCORE_THRESHOLD, evaluate

    paths, annotations = models
    coco, images = generated_images(annotations)
    scale = 12
    (tmp_path / "images").mkdir()
    for record, image in zip(coco["images"], images):
        record["file_name"] = image.stem + ".jpg"
        record["width"], record["height"] = record["width"] * scale, record["height"] * scale
        with Image.open(image) as small:
            small.resize((record["width"], record["height"]), Image.BILINEAR).save(
                tmp_path / "images" / record["file_name"], quality=92)
    for annotation in coco["annotations"]:
        annotation["bbox"] = [v * scale for v in annotation["bbox"]]
        annotation["area"] *= scale * scale
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    with Detector(paths["fp32"], score_threshold=EVAL_SCORE_THRESHOLD) as detector:
        small = evaluate(detector, annotations.parent / "images", annotations)
        large = evaluate(detector, tmp_path / "images", tmp_path / "instances.json")
    assert small["AP50"] >= 0.9, small
    assert large["AP50"] >= 0.9 and abs(large["mAP"] - small["mAP"]) <= 0.05, (small, large)


def test_eval_compare_ranks_the_trained_model_above_an_untrained_one(models, tmp_path):
    """``eval --compare`` on the trained fixture: real figures, in the order the models were given."""
    paths, annotations = models
    export("d0", tmp_path / "untrained", num_classes=4, options=ExportOptions(image_size=128))
    result = subprocess.run([sys.executable, "-m", "effedge", "eval", str(paths["fp32"]), "--compare",
                             str(tmp_path / "untrained" / "model.sim.onnx"), "--compare", str(paths["int8"]),
                             "--images", str(annotations.parent / "images"), "--annotations", str(annotations),
                             "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    trained, untrained, int8 = json.loads(result.stdout)
    assert [row["images"] for row in (trained, untrained, int8)] == [4, 4, 4]
    # the demo build names its classes as the annotation file does; the untrained export has no names
    assert [row["category_mapping"] for row in (trained, untrained, int8)] == ["name", "class+1", "name"]
    assert trained["mAP"] > 0.6, trained  # the fixture finds its shapes (0.84 on the 60-image validation set)
    assert untrained["mAP"] < 0.05, untrained  # random weights find nothing
    assert abs(int8["mAP"] - trained["mAP"]) < 0.15, (trained, int8)


def test_int8_detection_agreement_is_reported_for_the_trained_model(models):
    """The trained model's detections are decisions (few, far from any score cut), unlike random weights': the
    int8 report in build.json gives an F1 against fp32, on 4 held-out photos × 2 views, and it is high."""
    paths, _ = models
    report = json.loads((paths["fp32"].parent / "build.json").read_text())["precisions"]["int8"]
    assert report["holdout"] == {"photos": 4, "views": 8, "views_per_photo": 2, "minimum_views": 8}
    agreement = report["fidelity"]["detection_agreement"]
    assert agreement["fp32"] >= 8 and agreement["fp32_fragile"] <= agreement["fp32"] / 2
    assert agreement["f1"] > 0.8, agreement
