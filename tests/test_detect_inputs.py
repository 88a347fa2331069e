"""effedge detect/eval on what users point them at — folders (recursive or not), quoted globs, files that are not
images, truncated images — and what comes out: class names and COCO category ids, the class mapping eval uses,
outlines that scale with the photo, the random-weights warning. The model is the white-box graph of
test_detector_answers (one candidate: the box around the white pixels), with its score put in a chosen class slot."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from PIL import Image
from test_detector_answers import scene, white_box_detector

from effedge.errors import EffedgeError
from effedge.evaluate.coco import category_mapping, evaluate
from effedge.runtime.detector import Detections, Detector, draw, line_width
from effedge.runtime.images import find_inputs
from effedge.runtime.labels import coco90, labels_for
from effedge.runtime.preprocess import MEAN, STD

BOX = (40, 30, 120, 90)  # the white rectangle of every test scene, in its 128×160 pixels


def effedge(*args):
    return subprocess.run([sys.executable, "-m", "effedge", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def slot_detector(folder, slot: int, num_classes: int, weights: str = "checkpoint.pth"):
    """The white-box detector with ``num_classes`` scores, its one score in class ``slot``, and a build.json."""
    folder.mkdir(parents=True, exist_ok=True)
    path = white_box_detector(folder / "model.onnx")
    model = onnx.load(str(path))
    scores = next(o for o in model.graph.output if o.name == "scores")
    for node in model.graph.node:
        node.output[:] = ["one_score" if name == "scores" else name for name in node.output]
    pads = np.array([0, 0, slot, 0, 0, num_classes - 1 - slot], np.int64)
    model.graph.initializer.append(numpy_helper.from_array(pads, "class_pads"))
    model.graph.node.append(helper.make_node("Pad", ["one_score", "class_pads"], ["scores"]))
    scores.type.tensor_type.shape.dim[2].dim_value = num_classes
    onnx.save(model, str(path))
    (folder / "build.json").write_text(json.dumps({"family": "efficientdet", "num_classes": num_classes,
                                                   "weights": weights, "input": {"mean": MEAN, "std": STD}}))
    return path


@pytest.fixture(scope="module")
def coco_model(tmp_path_factory):
    """A 90-class (COCO-head) model whose detection is head class 1: COCO category 2, bicycle."""
    return slot_detector(tmp_path_factory.mktemp("coco") / "build", 1, 90)


def save_scene(path, box=BOX):
    Image.fromarray(scene(128, 160, box)).save(path)
    return path


def truncated_png(path):
    save_scene(path.with_suffix(".tmp.png"))
    path.write_bytes(path.with_suffix(".tmp.png").read_bytes()[:200])
    path.with_suffix(".tmp.png").unlink()
    return path


@pytest.fixture
def mixed_folder(tmp_path):
    """Two images, a README.md and a truncated PNG; a subfolder with one more image."""
    folder = tmp_path / "calib"
    folder.mkdir()
    save_scene(folder / "a.png")
    save_scene(folder / "b.png")
    (folder / "README.md").write_text("calibration images\n")
    truncated_png(folder / "broken.png")
    (folder / "more").mkdir()
    save_scene(folder / "more" / "c.png")
    return folder


# --- inputs: folders, globs, non-images, failures -----------------------------------------------------------------


def test_a_folder_with_a_readme_and_a_corrupt_png(coco_model, mixed_folder, tmp_path):
    result = effedge("detect", coco_model, mixed_folder, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert sorted(entry["image"].rsplit("/", 1)[1] for entry in report) == ["a.png", "b.png"]
    lines = result.stderr.splitlines()
    assert len([line for line in lines if "README.md" in line]) == 1
    assert [line for line in lines if "README.md" in line][0].startswith("[effedge] skipped")
    assert any("subfolder" in line and "more" in line for line in lines)  # not recursive by default
    assert any("1 of 3 image(s) could not be read" in line for line in lines)
    assert len([line for line in lines if "broken.png" in line]) == 1


def test_recursive_takes_the_subfolders(coco_model, mixed_folder, tmp_path):
    result = effedge("detect", coco_model, mixed_folder, "--recursive", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert sorted(entry["image"].rsplit("/", 1)[1] for entry in report) == ["a.png", "b.png", "c.png"]


def test_strict_makes_any_unreadable_image_an_error(coco_model, mixed_folder, tmp_path):
    result = effedge("detect", coco_model, mixed_folder, "--strict", "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: 1 image(s) could not be read (--strict)"


def test_nothing_readable_is_an_error(coco_model, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    truncated_png(folder / "x.png")
    (folder / "notes.txt").write_text("x")
    result = effedge("detect", coco_model, folder, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: none of the 1 image(s) could be read"
    assert "Traceback" not in result.stderr


def test_a_quoted_glob_is_expanded_by_effedge(coco_model, mixed_folder, tmp_path):
    """``'calib/*'`` (no shell here: effedge globs) names what the shell would: the files and the folder more/."""
    result = effedge("detect", coco_model, f"{mixed_folder}/*", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert sorted(entry["image"].rsplit("/", 1)[1] for entry in report) == ["a.png", "b.png", "c.png"]
    assert "skipped" in result.stderr and "README.md" in result.stderr
    only_b = effedge("detect", coco_model, f"{mixed_folder}/b*.png", "--out", tmp_path / "out2")
    assert only_b.returncode == 0, only_b.stderr
    assert [e["image"].rsplit("/", 1)[1] for e in json.loads((tmp_path / "out2" / "detections.json").read_text())] \
        == ["b.png"]


def test_find_inputs_refuses_what_names_nothing(tmp_path):
    with pytest.raises(EffedgeError, match="not found"):
        find_inputs([tmp_path / "missing.jpg"])
    with pytest.raises(EffedgeError, match="no file matches"):
        find_inputs([f"{tmp_path}/*.png"])
    (tmp_path / "sub").mkdir()
    save_scene(tmp_path / "sub" / "x.png")
    with pytest.raises(EffedgeError, match="--recursive"):
        find_inputs([tmp_path])
    found = find_inputs([tmp_path, tmp_path / "sub" / "x.png", f"{tmp_path}/**/*.png"], recursive=True)
    assert found.images == [tmp_path / "sub" / "x.png"]  # each file once


def test_recursive_walks_a_symlink_loop_once(tmp_path):
    """Two links back up the tree: without remembering the folders walked, 2^40 paths before the OS says ELOOP."""
    save_scene(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")
    (tmp_path / "sub" / "top").symlink_to(tmp_path)
    calls = []
    real_iterdir = type(tmp_path).iterdir

    def counted_iterdir(self):
        calls.append(self)
        assert len(calls) <= 50, "walked the loop"
        return real_iterdir(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(tmp_path), "iterdir", counted_iterdir)
        found = find_inputs([tmp_path], recursive=True)
    assert found.images == [tmp_path / "a.png"]
    assert len(calls) == 2  # the folder and sub, once each


# --- names out ---------------------------------------------------------------------------------------------------


def test_a_coco_head_names_its_classes_and_gives_coco_ids(coco_model, tmp_path):
    save_scene(tmp_path / "street.png")
    result = effedge("detect", coco_model, tmp_path / "street.png", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads((tmp_path / "out" / "detections.json").read_text())
    [detection] = entry["detections"]
    assert (detection["class"], detection["name"], detection["category_id"]) == (1, "bicycle", 2)
    assert "1 bicycle" in result.stdout


def test_coco90_slots_are_coco_ids_minus_one():
    labels = coco90()
    assert (labels.name(0), labels.category_id(0)) == ("person", 1)
    assert (labels.name(2), labels.category_id(2)) == ("car", 3)
    assert (labels.name(89), labels.category_id(89)) == ("toothbrush", 90)
    unused = [labels.category_id(i) for i in range(90) if labels.name(i) is None]
    assert unused == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert labels_for({"family": "efficientnet", "num_classes": 1000}).name(285) == "Egyptian cat"


def test_labels_file_names_the_classes_and_a_wrong_count_is_refused(tmp_path):
    model = slot_detector(tmp_path / "build", 2, 3)
    save_scene(tmp_path / "x.png")
    (tmp_path / "names.txt").write_text("apple\npear\nplum\n")
    result = effedge("detect", model, tmp_path / "x.png", "--labels", tmp_path / "names.txt", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    [detection] = json.loads((tmp_path / "o" / "detections.json").read_text())[0]["detections"]
    assert (detection["class"], detection["name"]) == (2, "plum") and "category_id" not in detection
    (tmp_path / "two.txt").write_text("apple\npear\n")
    wrong = effedge("detect", model, tmp_path / "x.png", "--labels", tmp_path / "two.txt", "--out", tmp_path / "o")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        f"error: --labels {tmp_path / 'two.txt'} has 2 line(s) but the model has 3 classes; write one name per class, "
        "line i = class i"]


# --- eval: classes onto the annotation file's categories ----------------------------------------------------------


def annotated(tmp_path, categories, category_id):
    (tmp_path / "images").mkdir(exist_ok=True)
    save_scene(tmp_path / "images" / "a.png")
    x1, y1, x2, y2 = BOX
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 128, "width": 160}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}],
            "categories": categories}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return tmp_path / "instances.json"


@pytest.mark.parametrize("categories, category_id, mapping", [
    ([{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}], 2, "category_id"),  # COCO's own ids
    ([{"id": 1, "name": "bicycle"}, {"id": 2, "name": "car"}], 1, "name"),  # a renumbered subset
])
def test_eval_maps_a_coco_head_by_category_id_or_by_name(coco_model, tmp_path, categories, category_id, mapping):
    annotations = annotated(tmp_path, categories, category_id)
    result = effedge("eval", coco_model, "--images", tmp_path / "images", "--annotations", annotations, "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["category_mapping"] == mapping and row["mAP"] == pytest.approx(1.0), row
    assert f"classes -> categories: by {mapping}" in result.stderr


def test_eval_without_names_maps_class_plus_one_and_leaves_out_unreadable_images(tmp_path):
    model = slot_detector(tmp_path / "build", 2, 5)  # 5 classes: no family names
    annotations = annotated(tmp_path, [{"id": 3, "name": "thing"}], 3)
    truncated_png(tmp_path / "images" / "b.png")
    coco = json.loads(annotations.read_text())
    coco["images"].append({"id": 2, "file_name": "b.png", "height": 128, "width": 160})
    annotations.write_text(json.dumps(coco))
    with Detector(model, score_threshold=0.001) as detector:
        row = evaluate(detector, tmp_path / "images", annotations, labels=detector.labels)
    assert row["category_mapping"] == "class+1" and row["mAP"] == pytest.approx(1.0), row
    assert row["images"] == 1 and [f["image"].rsplit("/", 1)[1] for f in row["failed"]] == ["b.png"]
    strict = effedge("eval", model, "--images", f"{tmp_path}/images/*.png", "--annotations", annotations, "--strict")
    assert strict.returncode == 2 and "could not be read (--strict)" in strict.stderr


def test_a_misspelt_labels_file_says_why_eval_fell_back_to_class_plus_one(tmp_path):
    """--labels with 'plumb' for 'plum': eval cannot match by name, and says which name it lacks."""
    model = slot_detector(tmp_path / "build", 2, 3)
    annotations = annotated(tmp_path, [{"id": 7, "name": "apple"}, {"id": 8, "name": "pear"},
                                       {"id": 9, "name": "plum"}], 9)
    (tmp_path / "names.txt").write_text("apple\npear\nplumb\n")
    result = effedge("eval", model, "--images", tmp_path / "images", "--annotations", annotations,
                     "--labels", tmp_path / "names.txt", "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["category_mapping"] == "class+1" and row["unnamed_categories"] == ["plum"], row
    assert "warning: not matched by name: the model has no class named plum" in result.stderr
    (tmp_path / "names.txt").write_text("apple\npear\nplum\n")
    fixed = effedge("eval", model, "--images", tmp_path / "images", "--annotations", annotations,
                    "--labels", tmp_path / "names.txt", "--json")
    [row] = json.loads(fixed.stdout)
    assert row["category_mapping"] == "name" and row["mAP"] == pytest.approx(1.0) and "warning" not in fixed.stderr


def test_eval_refuses_a_glob_that_matches_an_annotated_name_twice(coco_model, tmp_path):
    """'data/*/*.png' over train/a.png and val/a.png: evaluating train's a.png against val's boxes is wrong."""
    (tmp_path / "val").mkdir()
    annotations = annotated(tmp_path / "val", [{"id": 2, "name": "bicycle"}], 2)
    (tmp_path / "train" / "images").mkdir(parents=True)
    save_scene(tmp_path / "train" / "images" / "a.png", box=(0, 0, 20, 20))  # another photo of the same name
    result = effedge("eval", coco_model, "--images", f"{tmp_path}/*/images/*.png", "--annotations", annotations)
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip().splitlines()[-1:] == [
        f"error: 2 of the images given are the annotated a.png ({tmp_path / 'train' / 'images' / 'a.png'}, "
        f"{tmp_path / 'val' / 'images' / 'a.png'}); give the annotated images' folder as --images"]
    folder = effedge("eval", coco_model, "--images", tmp_path / "val" / "images", "--annotations", annotations,
                     "--json")
    assert folder.returncode == 0 and json.loads(folder.stdout)[0]["mAP"] == pytest.approx(1.0), folder.stderr


def test_category_mapping_falls_back_to_class_plus_one():
    _, how = category_mapping(coco90(), [{"id": 1, "name": "circle"}])  # names COCO does not know
    assert how == "class+1"


@pytest.mark.parametrize("categories", [
    [{"id": 12, "name": "stop sign"}],  # renumbered onto a COCO id the head has no class for
    [{"id": 100, "name": "stop sign"}, {"id": 101, "name": "car"}],  # ids past the head's 90
])
def test_a_renumbered_file_is_matched_by_name_not_by_id(categories):
    """Ids that no COCO class agrees with are not COCO's: by id, stop signs (slot 12, COCO id 13) would all miss."""
    to_category, how = category_mapping(coco90(), categories)
    assert how == "name"
    assert to_category(12) == categories[0]["id"]


def test_a_labels_file_saved_with_a_bom_names_its_first_class(tmp_path):
    (tmp_path / "names.txt").write_bytes("apple\npear\n".encode("utf-8-sig"))  # Windows Notepad's UTF-8
    labels = labels_for({"num_classes": 2}, labels_file=tmp_path / "names.txt")
    assert labels.names == ("apple", "pear")


# --- drawing: visible on a large photo ----------------------------------------------------------------------------


def test_outlines_scale_with_the_image(tmp_path):
    """On a 4000×3000 photo the outline is about min(H, W)/300 = 10 px thick (it was 2 px: invisible)."""
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((3000, 4000, 3), np.uint8)).save(photo, compress_level=1)
    box = (1000.0, 800.0, 3000.0, 2200.0)
    draw(photo, Detections(np.array([box], np.float32), np.array([0.9], np.float32), np.array([0])),
         tmp_path / "drawn.jpg", coco90())
    drawn = np.asarray(Image.open(tmp_path / "drawn.jpg")).astype(int).max(axis=-1)
    row = drawn[1500, 900:1200] > 40  # across the left edge, halfway down the box
    thickness = int(row.sum())
    assert line_width((3000, 4000)) == 10
    assert 8 <= thickness <= 12, thickness
    label = drawn[700:800, 1000:1400] > 40  # the label sits above the box, in a filled tag
    assert label.mean() > 0.3


# --- random weights ----------------------------------------------------------------------------------------------


def test_random_weights_warn_once(tmp_path):
    model = slot_detector(tmp_path / "build", 0, 90, weights="random")
    for name in "abc":
        save_scene(tmp_path / f"{name}.png")
    result = effedge("detect", model, *(tmp_path / f"{n}.png" for n in "abc"), "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("random weights: these detections mean nothing") == 1
    bench = effedge("bench", model, "--warmup", "0", "--duration", "0", "--iterations", "1", "--json")
    assert bench.returncode == 0, bench.stderr
    assert bench.stderr.count("random weights: the network's latency is a trained model's") == 1
    assert "these detections mean nothing" not in bench.stderr  # bench prints no detections: it says what is off
    trained = slot_detector(tmp_path / "trained", 0, 90)
    assert "random weights" not in effedge("detect", trained, tmp_path / "a.png", "--out", tmp_path / "o2").stderr
