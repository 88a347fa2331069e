"""Normalization is part of the model: a Lite export (mean = std = 0.5) records it in build.json and in the
graph's metadata, folds it into a uint8 or pixels graph, and the Detector, the Classifier and the calibration
reader prepare images with it; a graph that says nothing gets ImageNet's, and says so."""
import json
import shutil

import numpy as np
import onnx
import pytest
from helpers import input_sensitive_weights, photo, photo_folder
from PIL import Image

from effedge.export.onnx_export import ExportOptions, export
from effedge.quantize.images import ImageSet
from effedge.quantize.precision import calibrate, model_input
from effedge.runtime import Classifier, Detector
from effedge.runtime.onnxruntime import OnnxRuntimeRunner
from effedge.runtime.preprocess import DEFAULT_SOURCE, MEAN, STD, center_crop, letterbox, normalize

SIZE = 64
HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """lite0 at 64 px, float, uint8 and pixels inputs, the same random weights."""
    root = tmp_path_factory.mktemp("lite0")
    weights = input_sensitive_weights("lite0", SIZE)
    for input_format in ("float", "uint8", "pixels"):
        export("lite0", root / input_format, weights=weights,
               options=ExportOptions(image_size=SIZE, input_format=input_format))
    return root


def run(path, images):
    with OnnxRuntimeRunner(path) as runner:
        return runner.infer({"images": images})["logits"]


def test_a_lite_export_records_half_normalization_in_build_json_and_graph_metadata(lite0):
    for kind, layout in (("float", "NCHW"), ("uint8", "NHWC"), ("pixels", "NCHW")):
        manifest = json.loads((lite0 / kind / "build.json").read_text())
        assert manifest["input"] == {"name": "images", "format": kind, "layout": layout, "mean": list(HALF),
                                     "std": list(HALF), "letterbox_fill": [128, 128, 128], "crop_pct": 0.875}
        props = {p.key: p.value for p in onnx.load(str(lite0 / kind / "model.sim.onnx")).metadata_props}
        assert json.loads(props["effedge.input.mean"]) == list(HALF)
        assert json.loads(props["effedge.input.std"]) == list(HALF)
        assert props["effedge.input.layout"] == layout and props["effedge.input.format"] == kind
        assert props["effedge.input.resize"] == "center-crop"


def test_the_uint8_graph_folds_the_lite_normalization(lite0):
    pixels = np.random.default_rng(4).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    from_uint8 = run(lite0 / "uint8" / "model.sim.onnx", pixels)
    from_float = run(lite0 / "float" / "model.sim.onnx", normalize(pixels, HALF, HALF))
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-4)
    imagenet = run(lite0 / "float" / "model.sim.onnx", normalize(pixels, MEAN, STD))
    assert np.abs(imagenet - from_uint8).max() > 100 * np.abs(from_float - from_uint8).max()  # the constant matters


def nchw_values(pixels):
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)


def test_the_pixels_graph_folds_the_lite_normalization_of_float_pixel_values(lite0):
    pixels = np.random.default_rng(4).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    from_pixels = run(lite0 / "pixels" / "model.sim.onnx", nchw_values(pixels))
    from_float = run(lite0 / "float" / "model.sim.onnx", normalize(pixels, HALF, HALF))
    np.testing.assert_allclose(from_pixels, from_float, atol=1e-4)
    imagenet = run(lite0 / "float" / "model.sim.onnx", normalize(pixels, MEAN, STD))
    assert np.abs(imagenet - from_pixels).max() > 100 * np.abs(from_float - from_pixels).max()  # the constants matter
    # fed normalized values (or values / 255) it answers otherwise: the runtime must give it the pixels
    for wrong in (normalize(pixels, HALF, HALF), nchw_values(pixels) / 255):
        assert np.abs(run(lite0 / "pixels" / "model.sim.onnx", wrong) - from_float).max() > \
            100 * np.abs(from_float - from_pixels).max()


def test_the_classifier_feeds_a_pixels_graph_its_pixels(lite0, tmp_path):
    image = photo((90, 70), seed=1)
    with Classifier(lite0 / "float" / "model.sim.onnx") as classifier:
        expected = classifier.probabilities([image])
    alone = tmp_path / "model.sim.onnx"  # the graph's metadata alone says it takes pixels
    shutil.copy(lite0 / "pixels" / "model.sim.onnx", alone)
    for model in (lite0 / "pixels" / "model.sim.onnx", alone):
        with Classifier(model) as classifier:
            assert classifier.format == "pixels" and classifier.warnings == []
            np.testing.assert_allclose(classifier.probabilities([image]), expected, rtol=1e-4, atol=1e-6)


def expected_classifier_input(image, mean=HALF, std=HALF):
    return normalize(center_crop(image, SIZE, SIZE)[None], mean, std)


def test_the_classifier_feeds_the_lite_normalization(lite0, tmp_path):
    image = photo((90, 70), seed=1)
    reference = run(lite0 / "float" / "model.sim.onnx", expected_classifier_input(image))
    with Classifier(lite0 / "float" / "model.sim.onnx") as classifier:
        assert classifier.preprocessing.mean == HALF and classifier.preprocessing.source == "build.json"
        probabilities = classifier.probabilities([image])
    shifted = np.exp(reference - reference.max())
    np.testing.assert_allclose(probabilities, shifted / shifted.sum(), rtol=1e-5, atol=1e-7)
    # the ONNX file alone (no build.json): its metadata says the same
    alone = tmp_path / "model.sim.onnx"
    shutil.copy(lite0 / "float" / "model.sim.onnx", alone)
    with Classifier(alone) as classifier:
        assert classifier.preprocessing.source == "graph metadata" and classifier.warnings == []
        np.testing.assert_allclose(classifier.probabilities([image]), probabilities, rtol=1e-6)


def capture_feed(detector, image):
    fed = {}
    infer = detector.runner.infer

    def recording(feed):
        fed.update(feed)
        return infer(feed)

    detector.runner.infer = recording
    detector([image])
    return fed["images"]


def test_the_detector_feeds_the_recorded_normalization_and_fills_with_its_mean_colour(tmp_path):
    from test_runtime import constant_detector, raw_outputs

    image = photo((96, 48), seed=2)
    model = constant_detector(tmp_path / "model.onnx", raw_outputs())
    (tmp_path / "build.json").write_text(json.dumps({"family": "efficientdet", "input": {"mean": HALF, "std": HALF}}))
    canvas, _ = letterbox(image, 64, 64, fill=(128, 128, 128))
    with Detector(model) as detector:
        assert detector.preprocessing.source == "build.json"
        fed = capture_feed(detector, image)
    np.testing.assert_allclose(fed, normalize(canvas[None], HALF, HALF), atol=1e-6)
    assert np.abs(fed[0, :, 40:, :]).max() < 0.01  # a 96×48 photo fills the top 32 rows; the letterbox fill is (about) zero after normalization
    # metadata alone
    (tmp_path / "build.json").unlink()
    graph = onnx.load(str(model))
    onnx.helper.set_model_props(graph, {"effedge.input.mean": "[0.5, 0.5, 0.5]", "effedge.input.std": "[0.5, 0.5, 0.5]"})
    onnx.save(graph, str(model))
    with Detector(model) as detector:
        assert detector.preprocessing.source == "graph metadata"
        np.testing.assert_allclose(capture_feed(detector, image), normalize(canvas[None], HALF, HALF), atol=1e-6)
    # neither: ImageNet, and a warning that says so
    bare = onnx.load(str(model))
    del bare.metadata_props[:]
    onnx.save(bare, str(model))
    with Detector(model) as detector:
        assert detector.preprocessing.mean == MEAN and any(DEFAULT_SOURCE in note for note in detector.warnings)
        imagenet_canvas, _ = letterbox(image, 64, 64)
        np.testing.assert_allclose(capture_feed(detector, image), normalize(imagenet_canvas[None]), atol=1e-6)


def test_the_calibration_reader_prepares_images_as_the_model_wants(lite0, tmp_path):
    folder = photo_folder(tmp_path / "calib", 3, (80, 60), ".png")
    images = ImageSet.from_folder(folder, holdout=1)
    graph = onnx.load(str(lite0 / "float" / "model.sim.onnx"))
    manifest = json.loads((lite0 / "float" / "build.json").read_text())
    for inputs in (model_input(graph, manifest), model_input(graph)):  # build.json, or the graph's metadata
        assert inputs.preprocessing.resize == "center-crop"
        batch = np.concatenate(list(images.batches(images.calibration, inputs.size, inputs.format,
                                                   preprocessing=inputs.preprocessing)))
        expected = np.concatenate([expected_classifier_input(np.asarray(Image.open(path).convert("RGB")))
                                   for path in images.calibration])
        np.testing.assert_allclose(batch, expected, atol=1e-6)
    # int8 calibration reads the input as prepared: |x| ≤ 1 with 0.5/0.5 (ImageNet's would reach 2.6)
    amax, used = calibrate(graph, ["images"], images, model_input(graph, manifest), method="max", percentile=99.99,
                           progress=lambda items, total, description: items)
    assert used == 2 and 0.9 < amax["images"] <= 1.0
    bare = onnx.load(str(lite0 / "float" / "model.sim.onnx"))
    del bare.metadata_props[:]
    assert model_input(bare).preprocessing.source == DEFAULT_SOURCE


def test_quantize_reports_class_agreement_for_a_classifier(lite0, tmp_path, monkeypatch, capsys):
    """fp16 lite0: top-1 agreement and KL against fp32 next to SQNR, printed; the fp32 model against itself
    agrees exactly; the quantized graph keeps the metadata of the input it expects."""
    from helpers import run_main

    from effedge.quantize.precision import measure_fidelity

    build = tmp_path / "build"
    shutil.copytree(lite0 / "float", build)
    folder = photo_folder(tmp_path / "calib", 10, (72, 56), ".png")
    code, out, err = run_main(monkeypatch, capsys, ["quantize", str(build / "model.sim.onnx"), "--precision", "fp16",
                                                    "--calib", str(folder), "--holdout", "8"])
    assert code == 0, err
    report = json.loads((build / "build.json").read_text())["precisions"]["fp16"]
    agreement = report["fidelity"]["class_agreement"]
    assert agreement["images"] == 8 and 0.0 <= agreement["top1"] <= 1.0 and 0.0 < agreement["kl_divergence"] < 0.01
    assert report["input"]["mean"] == list(HALF) and report["input"]["resize"] == "center-crop"
    assert f"classes agree with fp32: top-1 {agreement['top1']:.3f} of 8 view(s)" in out
    props = {p.key: p.value for p in onnx.load(str(build / "model.fp16.onnx")).metadata_props}
    assert json.loads(props["effedge.input.mean"]) == list(HALF)
    # fp32 against itself: every top-1 agrees, no divergence
    images = ImageSet.from_folder(folder, holdout=8)
    inputs = model_input(onnx.load(str(build / "model.sim.onnx")))
    references = [(batch, real, {"logits": run(build / "model.sim.onnx", batch)}) for batch, real in
                  images.padded_batches(images.holdout_views(), inputs.size, inputs.format, 1, inputs.preprocessing)]
    itself = measure_fidelity(onnx.load(str(build / "model.sim.onnx")), references, inputs, 0.3)
    assert itself["class_agreement"] == {"top1": 1.0, "images": 8, "kl_divergence": 0.0}


def test_a_known_checkpoint_trained_on_imagenet_statistics_exports_them(tmp_path, monkeypatch):
    """timm's PyTorch-trained efficientnet_lite0 was trained on ImageNet's mean/std, not the Lite family's 0.5
    (its pretrained_cfg): the known name sets the model's normalization, and the export records and folds it."""
    import torch

    from effedge.models import checkpoint

    weights_file = tmp_path / "efficientnet_lite0_ra.pth"
    torch.save(input_sensitive_weights("lite0", SIZE), weights_file)
    monkeypatch.setattr(checkpoint, "checkpoint_path", lambda weights: weights_file)  # offline: no download
    export("lite0", tmp_path / "uint8", weights="efficientnet_lite0", pad="symmetric",
           options=ExportOptions(image_size=SIZE, input_format="uint8"))
    manifest = json.loads((tmp_path / "uint8" / "build.json").read_text())
    assert (manifest["input"]["mean"], manifest["input"]["std"]) == (list(MEAN), list(STD))
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "uint8" / "model.sim.onnx")).metadata_props}
    assert json.loads(props["effedge.input.mean"]) == list(MEAN)
    # the uint8 graph folds ImageNet's statistics: it answers as the float network fed ImageNet-normalized input
    from effedge import build_model

    network = build_model("lite0", weights=torch.load(weights_file), image_size=SIZE, pad="symmetric")
    pixels = np.random.default_rng(5).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = network(torch.from_numpy(normalize(pixels, MEAN, STD))).numpy()
    np.testing.assert_allclose(run(tmp_path / "uint8" / "model.sim.onnx", pixels), expected, rtol=1e-4, atol=1e-3)


def test_calibration_gives_a_pixels_graph_pixel_values(lite0, tmp_path):
    """A pixels graph's input is float like a normalized one's: model_input reads "pixels" from build.json or
    the graph's metadata, and calibration batches hold 0-255 values (its input range is ~255)."""
    folder = photo_folder(tmp_path / "calib", 6, (80, 60), ".png")
    images = ImageSet.from_folder(folder, holdout=2)
    graph = onnx.load(str(lite0 / "pixels" / "model.sim.onnx"))
    manifest = json.loads((lite0 / "pixels" / "build.json").read_text())
    for inputs in (model_input(graph, manifest), model_input(graph)):
        assert inputs.format == "pixels" and inputs.size == (SIZE, SIZE)
        batch = np.concatenate(list(images.batches(images.calibration, inputs.size, inputs.format,
                                                   preprocessing=inputs.preprocessing)))
        crops = [center_crop(np.asarray(Image.open(path).convert("RGB")), SIZE, SIZE) for path in images.calibration]
        np.testing.assert_array_equal(batch, nchw_values(np.stack(crops)))
    amax, used = calibrate(graph, ["images"], images, model_input(graph, manifest), method="max", percentile=99.99,
                           progress=lambda items, total, description: items)
    assert used == 4 and 200 < amax["images"] <= 255


@pytest.mark.slow
def test_int8_of_a_pixels_graph_measures_as_the_float_graphs(lite0, tmp_path, monkeypatch):
    """int8 through the same photos: the pixels graph's fidelity is the float graph's (its first quantized
    convolution sees the normalized values either way), and its int8 graph still says it takes pixels."""
    from effedge.quantize.precision import PrecisionOptions, convert

    folder = photo_folder(tmp_path / "calib", 6, (80, 60), ".png")
    monkeypatch.setenv("EFFEDGE_CACHE_DIR", str(tmp_path / "cache"))
    sqnr = {}
    for kind in ("float", "pixels"):
        shutil.copytree(lite0 / kind, tmp_path / kind)
        report = convert(tmp_path / kind / "model.sim.onnx",
                         options=PrecisionOptions(precision="int8", calib_dir=folder, holdout=2, holdout_views=2))
        assert report["input"]["format"] == kind
        sqnr[kind] = report["fidelity"]["outputs"]["logits"]["sqnr_db"]
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "pixels" / "model.int8.onnx")).metadata_props}
    assert props["effedge.input.format"] == "pixels"
    assert sqnr["float"] > 5 and abs(sqnr["pixels"] - sqnr["float"]) < 1, sqnr
