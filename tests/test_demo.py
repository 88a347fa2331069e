"""The offline demo: `--weights demo` (the shipped shapes detector) and `effedge demo-images`. The trained
fixture's own tests (test_trained_fixture.py) export it with `effedge export --weights demo` and check its
detections and names; here: what is refused, the images, and the whole compile → detect → eval path (slow)."""
import json
import subprocess
import sys

import pytest

from effedge.demo import DEMO_WEIGHTS, demo_model


def effedge(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "effedge", *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


def test_the_demo_is_d0_at_256_with_the_shapes_names():
    demo = demo_model()
    assert DEMO_WEIGHTS.is_file() and DEMO_WEIGHTS.stat().st_size > 1_000_000
    assert (demo.variant, demo.image_size, demo.num_classes) == ("d0", 256, 4)
    from shapes import CATEGORIES

    assert demo.class_names == CATEGORIES


@pytest.mark.parametrize("command", ["export", "compile"])
@pytest.mark.parametrize("option, value", [("--variant", "d1"), ("--imgsz", "512"), ("--num-classes", "90")])
def test_a_conflicting_model_option_is_refused_in_one_line(tmp_path, command, option, value):
    result = effedge(command, "--weights", "demo", option, value, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --weights demo is D0 at 256 px with 4 classes; drop {option if option != '--variant' else '--variant/--phi'} {value}"]
    assert not (tmp_path / "out").exists()


def test_demo_images_writes_shapes_and_their_annotations(tmp_path):
    result = effedge("demo-images", tmp_path / "demo", "--count", "3")
    assert result.returncode == 0, result.stderr
    coco = json.loads((tmp_path / "demo" / "instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle", "cross"]
    assert sorted(p.name for p in (tmp_path / "demo" / "images").iterdir()) == [r["file_name"] for r in coco["images"]]
    assert len(coco["annotations"]) >= 3


@pytest.mark.slow
def test_compile_demo_then_detect_and_eval_on_demo_images(tmp_path):
    """A fresh machine's path (README): demo images, `compile --weights demo`, detect, eval — true results."""
    assert effedge("demo-images", "demo", "--count", "8", cwd=tmp_path).returncode == 0
    compiled = effedge("compile", "--weights", "demo", "--out", "runs/demo", "--json", cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    manifest = json.loads(compiled.stdout)
    assert (manifest["variant"], manifest["resolution"], manifest["class_names"]) == (
        "d0", [256, 256], ["circle", "square", "triangle", "cross"])
    model = f"runs/demo/{manifest['compile']['deployable']}"
    detected = effedge("detect", model, "demo/images", cwd=tmp_path)
    assert detected.returncode == 0, detected.stderr
    report = json.loads((tmp_path / "runs" / "detect" / "detections.json").read_text())
    assert len(report) == 8 and sum(len(e["detections"]) for e in report) >= 8
    assert {d["name"] for e in report for d in e["detections"]} <= {"circle", "square", "triangle", "cross"}
    assert "random weights" not in detected.stderr
    evaluated = effedge("eval", model, "--images", "demo/images", "--annotations", "demo/instances.json", "--json",
                        cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    [row] = json.loads(evaluated.stdout)
    assert row["category_mapping"] == "name" and row["mAP"] > 0.6, row
