"""Classification as a first-class path: timm's evaluation crop, the Classifier (softmax top-k, labels, batches),
effedge classify / eval on a classifier whose answers are known, and class agreement in the fidelity report."""
import json
import math

import numpy as np
import onnx
import pytest
from helpers import effedge_cli, photo
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from effedge.errors import EffedgeError
from effedge.quantize.fidelity import FidelityMeter
from effedge.runtime import Classifier
from effedge.runtime.preprocess import MEAN, STD, center_crop

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


def colour_classifier(folder, batch=1, size=32, names=tuple(COLOURS), gain=10.0, classes=3):
    """A classifier whose answer is known: logits = gain × the image's mean normalized R, G, B (then zeros up to
    ``classes``), so a red image is class 0, green 1, blue 2; build.json names the classes where ``names``."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array((np.eye(3, classes) * gain).astype(np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["means"]),
             helper.make_node("MatMul", ["means", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "colours", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                 [batch, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "build.json").write_text(json.dumps({"family": "efficientnet", "num_classes": classes,
                                                   **({"class_names": list(names)} if names else {}),
                                                   "weights": "colours.pth", "input": {"mean": MEAN, "std": STD}}))
    return folder / "model.onnx"


def swatch(colour, size=(48, 40)):
    return np.full((size[1], size[0], 3), colour, np.uint8)


def torchvision_eval_crop(image, size, crop_pct):
    """timm's evaluation transform for a square size, as torchvision does it on a PIL image: Resize(⌊size /
    crop_pct⌋) of the shorter side (the longer one truncated, aspect kept), then CenterCrop(size)."""
    height, width = image.shape[:2]
    short = math.floor(size / crop_pct)
    new_h, new_w = (int(short * height / width), short) if width <= height else (short, int(short * width / height))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)).astype(np.float64)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return resized[top:top + size, left:left + size]


def test_the_classifier_crop_is_timms_evaluation_transform(timm_module):
    config = timm_module.models.get_pretrained_cfg("tf_efficientnet_lite0.in1k")
    assert (config.crop_pct, config.crop_mode, config.mean) == (0.875, "center", (0.5, 0.5, 0.5))
    for size in ((50, 40), (30, 45)):  # landscape, portrait; upscaled (PIL's bilinear has no antialias there)
        image = photo(size, seed=3)
        assert np.abs(center_crop(image, 64, 64) - torchvision_eval_crop(image, 64, 0.875)).max() <= 2.0
    # geometry on a large photo: ⌊64/0.875⌋ = 73 px shorter side, centre 64 of it; a column ramp shows which
    ramp = np.repeat(np.repeat(np.arange(200, dtype=np.uint8)[None, :, None], 100, 0), 3, 2)  # 200 × 100
    cropped = center_crop(ramp, 64, 64).astype(float)
    scale = 73 / 100  # 200 -> 146 wide, left edge at (146 − 64) / 2 = 41
    assert abs(cropped[0, 0, 0] - (41 + 0.5) / scale) <= 1.5 and abs(cropped[0, -1, 0] - (104 + 0.5) / scale) <= 1.5


def test_classify_gives_the_top_classes_with_softmax_probabilities(tmp_path):
    model = colour_classifier(tmp_path / "build")
    with Classifier(model, top_k=2) as classifier:
        assert classifier.warnings == [] and classifier.preprocessing.resize == "center-crop"
        red, blue = classifier.classify([swatch(COLOURS["red"]), swatch(COLOURS["blue"])])
    assert [p.label for p in red] == ["red", "blue"] and blue[0].label == "blue" and blue[0].class_index == 2
    means = (np.array(COLOURS["red"]) / 255 - MEAN) / STD
    logits = 10 * means
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert red[0].probability == pytest.approx(probabilities[0], rel=1e-3)
    assert red[1].probability == pytest.approx(probabilities[2], rel=1e-3)


def test_a_static_batch_classifier_answers_each_image(tmp_path):
    model = colour_classifier(tmp_path / "build", batch=2)
    with Classifier(model, top_k=1) as classifier:
        answers = classifier.classify([swatch(COLOURS[c]) for c in ("green", "red", "blue")])  # 2 + 1 padded
        assert [a[0].label for a in answers] == ["green", "red", "blue"]
        with pytest.raises(EffedgeError, match="takes a list"):
            classifier.classify(swatch(COLOURS["red"]))


def test_labels_come_from_a_file_or_imagenet_and_a_detector_is_refused(tmp_path):
    model = colour_classifier(tmp_path / "build")
    (tmp_path / "names.txt").write_text("rouge\nvert\nbleu\n")
    with Classifier(model, labels=tmp_path / "names.txt") as classifier:
        assert classifier.classify([swatch(COLOURS["green"])])[0][0].label == "vert"
    imagenet = colour_classifier(tmp_path / "imagenet", names=None, classes=1000)
    with Classifier(imagenet, top_k=1) as classifier:  # class 2 of ImageNet-1k
        assert classifier.labels.source == "ImageNet-1k"
        assert classifier.classify([swatch(COLOURS["blue"])])[0][0][:2] == (2, "great white shark")
    from test_runtime import constant_detector, raw_outputs

    with pytest.raises(EffedgeError, match="not a classifier.*effedge detect"):
        Classifier(constant_detector(tmp_path / "det.onnx", raw_outputs()))


def test_effedge_classify_prints_json_and_refuses_a_detector_in_one_line(tmp_path):
    model = colour_classifier(tmp_path / "build")
    Image.fromarray(swatch(COLOURS["blue"])).save(tmp_path / "blue.png")
    Image.fromarray(swatch(COLOURS["red"])).save(tmp_path / "red.png")
    result = effedge_cli("classify", str(model), str(tmp_path / "*.png"), "--top-k", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(e["image"].rsplit("/", 1)[1], e["classes"][0]["label"]) for e in report] == [("blue.png", "blue"),
                                                                                         ("red.png", "red")]
    missing = effedge_cli("classify", str(model), str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    from test_runtime import constant_detector, raw_outputs

    detector = constant_detector(tmp_path / "det.onnx", raw_outputs())
    refused = effedge_cli("classify", str(detector), str(tmp_path / "red.png"))
    assert refused.returncode == 2 and "not a classifier" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    detected = effedge_cli("detect", str(model), str(tmp_path / "red.png"), "--out", str(tmp_path / "out"))
    assert detected.returncode == 2 and "is a classifier" in detected.stderr and "effedge classify" in detected.stderr
    assert len(detected.stderr.strip().splitlines()) == 1, detected.stderr


def labelled_folder(root, layout):
    """root/<folder>/<n>.png swatches: ``layout`` maps folder name -> the colours of its images."""
    for folder, colours in layout.items():
        (root / folder).mkdir(parents=True)
        for index, colour in enumerate(colours):
            Image.fromarray(swatch(COLOURS[colour])).save(root / folder / f"{index}.png")
    return root


def test_eval_reports_top1_and_top5_from_class_folders_or_a_csv(tmp_path):
    model = colour_classifier(tmp_path / "build")
    # "red" holds a green image (a wrong answer), "2" is blue by index: top-1 3 of 4
    images = labelled_folder(tmp_path / "val", {"red": ["red", "green"], "green": ["green"], "2": ["blue"]})
    result = effedge_cli("eval", str(model), "--images", str(images), "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["images"] == 4 and row["top1"] == pytest.approx(0.75) and row["top5"] == 1.0
    # the same answers as the Classifier's own
    with Classifier(model, top_k=1) as classifier:
        own = [classifier.classify([images / f])[0][0].class_index for f in ("red/0.png", "red/1.png", "green/0.png",
                                                                             "2/0.png")]
    assert sum(a == b for a, b in zip(own, [0, 0, 1, 2])) / 4 == row["top1"]
    (tmp_path / "labels.csv").write_text("file,label\nred/0.png,red\nred/1.png,1\ngreen/0.png,blue\n")
    csv_row, = json.loads(effedge_cli("eval", str(model), "--images", str(images), "--labels-csv",
                                      str(tmp_path / "labels.csv"), "--json").stdout)
    assert csv_row["images"] == 3 and csv_row["top1"] == pytest.approx(2 / 3)
    wrong = labelled_folder(tmp_path / "bad", {"purple": ["red"]})
    refused = effedge_cli("eval", str(model), "--images", str(wrong))
    assert refused.returncode == 2 and "'purple' is no class of the model" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 2  # "evaluating …" progress, then the one error line


def test_fidelity_reports_class_agreement_and_kl_divergence():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 10)).astype(np.float32) * 3
    same = FidelityMeter()
    same.update({"logits": logits}, {"logits": logits.copy()})
    assert same.report()["class_agreement"] == {"top1": 1.0, "images": 6, "kl_divergence": 0.0}
    # two classes, fp32 (0, 0) -> (½, ½), test (ln 3, 0) -> (¾, ¼): KL = ½ ln(4/3); top-1 ties go to class 0 both
    # times; a second image whose top-1 flips
    reference = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    test = np.array([[math.log(3), 0.0], [0.0, 1.0]], np.float32)
    meter = FidelityMeter()
    meter.update({"logits": reference}, {"logits": test})
    agreement = meter.report()["class_agreement"]
    p, q = np.array([math.e, 1]) / (math.e + 1), np.array([1, math.e]) / (math.e + 1)
    assert agreement["top1"] == 0.5
    assert agreement["kl_divergence"] == pytest.approx((0.5 * math.log(4 / 3) + float(p @ np.log(p / q))) / 2)


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "lite0", "lite1", "lite2"])
def test_each_variant_crops_as_timm_evaluates_it(timm_module, variant):
    """The crop grows with the resolution (TF pads the evaluation crop by 32 px): timm's crop_pct per checkpoint."""
    from effedge.arch.scaling import resolve

    spec, config = resolve(variant), timm_module.models.get_pretrained_cfg(f"tf_efficientnet_{variant}")
    assert config.input_size[1:] == (spec.resolution, spec.resolution)
    # the resize (⌊size / crop_pct⌋ px shorter side) of timm's, to the pixel its 3-digit crop_pct rounds off
    assert abs(math.floor(spec.resolution / spec.crop_pct) - math.floor(spec.resolution / config.crop_pct)) <= 1


def test_a_classifier_export_records_its_variants_crop_and_the_classifier_takes_it(tmp_path):
    from effedge.export.onnx_export import ExportOptions, export

    export("b3", tmp_path / "b3", options=ExportOptions(image_size=64))
    crop = 300 / 332  # B3 is evaluated at 300 px
    assert json.loads((tmp_path / "b3" / "build.json").read_text())["input"]["crop_pct"] == pytest.approx(crop)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "b3" / "model.sim.onnx")).metadata_props}
    assert float(props["effedge.input.crop_pct"]) == pytest.approx(crop)
    alone = tmp_path / "alone.onnx"  # without build.json: from the graph's metadata
    alone.write_bytes((tmp_path / "b3" / "model.sim.onnx").read_bytes())
    for model in (tmp_path / "b3" / "model.sim.onnx", alone):
        with Classifier(model) as classifier:
            assert classifier.preprocessing.crop_pct == pytest.approx(crop)


def test_a_large_photo_is_shrunk_with_antialiasing_as_timm_does():
    """A phone-sized photo is shrunk many times over: point-sampling it (2 × 2 taps) keeps the sensor noise that
    PIL's resize (timm's transform) averages away, and the model sees another image."""
    rng = np.random.default_rng(11)
    smooth = np.asarray(Image.fromarray(photo((40, 30), seed=5)).resize((1600, 1200), Image.BICUBIC), np.int16)
    noisy = np.clip(smooth + rng.integers(-40, 41, smooth.shape), 0, 255).astype(np.uint8)
    difference = np.abs(center_crop(noisy, 64, 64) - torchvision_eval_crop(noisy, 64, 0.875))
    assert difference.mean() <= 2.0, difference.mean()
