"""The C++ core (effedge/native: letterbox, normalization, raw-head and EfficientNMS decoding), built with the
system compiler and called through ctypes, must give what effedge's Python runtime gives.

What is real and what is constructed in the graph tests:
* real: the shipped demo detector (``--weights demo``, D0 at 256 px, 4 classes) exported by effedge, run by a plain
  ``onnxruntime.InferenceSession`` on shapes images of several aspect ratios and on a photo; the C++ core makes the
  input tensor (letterbox + normalization) and decodes the graph's raw ``boxes`` / ``scores``; the expected answer
  is effedge.runtime.Detector's on the same pixels;
* constructed: the EfficientNMS layout. ONNX Runtime cannot run the EfficientNMS_TRT plugin, so its four tensors
  are written from the real graph's raw outputs: NumPy's per-class NMS at the export's thresholds (score 0.05, IoU
  0.5, 100 rows), then rows past ``num_detections`` filled with high-scoring junk that a decoder must not read.
  The Detector decodes those tensors as the outputs of a graph, the C++ core as a host program would; what is
  checked is the decoding (count, threshold, order, letterbox undo, clipping, classes), not the plugin's NMS.
The DeepStream parsers (effedge/native/nvdsinfer_effedge.cpp) get the same real and constructed tensors through
tests/native/parse_layers.cpp, which calls them as nvinfer does; that needs DeepStream's, TensorRT's and CUDA's
headers (the variables of tests/test_native_headers.py) and is skipped without them.
"""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from effedge.runtime.detector import Detector
from effedge.runtime.nms import select_detections
from effedge.runtime.preprocess import letterbox, mean_pixel, normalize, to_model_input

REPO = Path(__file__).resolve().parent.parent
NATIVE = REPO / "effedge" / "native"
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ on PATH to build effedge/native")


class Detection(ctypes.Structure):
    _fields_ = [("x1", ctypes.c_float), ("y1", ctypes.c_float), ("x2", ctypes.c_float), ("y2", ctypes.c_float),
                ("score", ctypes.c_float), ("class_id", ctypes.c_int32)]


class Config(ctypes.Structure):
    _fields_ = [("score_threshold", ctypes.c_float), ("iou_threshold", ctypes.c_float),
                ("max_detections", ctypes.c_int), ("pre_nms_top", ctypes.c_int)]


class Mapping(ctypes.Structure):
    _fields_ = [("factor", ctypes.c_double), ("width", ctypes.c_int), ("height", ctypes.c_int)]


class Letterbox(ctypes.Structure):
    _fields_ = [("scale", ctypes.c_double), ("resized_width", ctypes.c_int), ("resized_height", ctypes.c_int)]


def pointer(array: np.ndarray) -> ctypes.c_void_p:
    return array.ctypes.data_as(ctypes.c_void_p)


def triple(kind, values):
    return (kind * 3)(*values)


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    library = tmp_path_factory.mktemp("native") / "libeffedge_decode.so"
    # -ffp-contract=off as effedge/native/CMakeLists.txt: the resampling must round as NumPy does
    subprocess.run(["g++", "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-shared",
                    "-fPIC", str(NATIVE / "effedge_decode.cpp"), "-o", str(library)], check=True)
    lib = ctypes.CDLL(str(library))
    lib.effedge_default_config.restype = Config
    lib.effedge_mapping_to_source.restype = Mapping
    lib.effedge_mapping_to_source.argtypes = [ctypes.POINTER(Letterbox), ctypes.c_int, ctypes.c_int]
    return lib


def cpp_input(core, pixels: np.ndarray, size: tuple[int, int], mean, std) -> tuple[np.ndarray, np.ndarray, Mapping]:
    """(canvas, NCHW float input, box mapping) as a C++ host makes them with the core."""
    height, width = size
    fill = (ctypes.c_uint8 * 3)()
    core.effedge_mean_pixel(triple(ctypes.c_double, mean), fill)
    canvas = np.zeros((height, width, 3), np.uint8)
    assert core.effedge_letterbox_image(pointer(pixels), pixels.shape[1], pixels.shape[0], pixels.strides[0],
                                        width, height, fill, pointer(canvas)) == 0
    tensor = np.zeros((1, 3, height, width), np.float32)
    assert core.effedge_normalize_chw(pointer(canvas), width, height, triple(ctypes.c_double, mean),
                                      triple(ctypes.c_double, std), pointer(tensor)) == 0
    box = Letterbox()
    assert core.effedge_letterbox_params(pixels.shape[1], pixels.shape[0], width, height, ctypes.byref(box)) == 0
    return canvas, tensor, core.effedge_mapping_to_source(ctypes.byref(box), pixels.shape[1], pixels.shape[0])


def as_arrays(out, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    detections = out[:count]
    return (np.array([[d.x1, d.y1, d.x2, d.y2] for d in detections], np.float32).reshape(-1, 4),
            np.array([d.score for d in detections], np.float32), np.array([d.class_id for d in detections]))


def assert_same_detections(got, expected) -> None:
    boxes, scores, classes = got
    assert classes.tolist() == expected.classes.tolist()
    np.testing.assert_allclose(scores, expected.scores, atol=1e-4)
    np.testing.assert_allclose(boxes, expected.boxes, atol=0.5)


def test_the_header_compiles_as_c():
    if shutil.which("gcc") is None:
        pytest.skip("no gcc on PATH")
    subprocess.run(["gcc", "-fsyntax-only", "-x", "c", "-std=c99", "-Wall", "-Werror", str(NATIVE / "effedge_decode.h")],
                   check=True)


# --- the input side: bit for bit -------------------------------------------------------------------------------


@pytest.mark.parametrize("source, net", [
    ((300, 451), (256, 256)),  # enlarged width-first
    ((872, 1000), (256, 256)),  # shrunk by 3 along both axes: block means, then bilinear
    ((37, 1000), (320, 192)),  # shrunk by 5 along one axis only, non-square input
    ((100, 60), (256, 256)),  # enlarged 2.56x
    ((255, 257), (256, 256)),  # scale 256/257: sizes that round
    ((256, 256), (256, 256)),  # identity
])
def test_letterbox_and_normalization_match_effedge(core, source, net):
    rng = np.random.default_rng(sum(source))
    wide = rng.integers(0, 256, (source[0], source[1] + 7, 3), dtype=np.uint8)
    pixels = wide[:, 3:3 + source[1]]  # rows 3 * (width + 7) bytes apart: the stride is honoured
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    canvas, tensor, mapping = cpp_input(core, pixels, net, mean, std)
    expected, scale = letterbox(np.ascontiguousarray(pixels), *net, mean_pixel(mean))
    assert np.array_equal(canvas, expected)
    assert np.array_equal(tensor, normalize(expected[None], mean, std))
    assert mapping.factor == pytest.approx(1 / scale, rel=1e-12)
    assert (mapping.width, mapping.height) == (source[1], source[0])


def test_pixels_input_matches_effedge(core):
    """A --input-format pixels graph takes NCHW float32 pixel values, not normalized ones."""
    canvas = np.random.default_rng(5).integers(0, 256, (31, 47, 3), dtype=np.uint8)
    tensor = np.full((1, 3, 31, 47), -1, np.float32)
    assert core.effedge_pixels_chw(pointer(canvas), 47, 31, pointer(tensor)) == 0
    assert np.array_equal(tensor, to_model_input(canvas[None], "pixels"))


def test_the_fill_rounds_half_to_even(core):
    fill = (ctypes.c_uint8 * 3)()
    means = (0.5, 0.3, 2.5 / 255)  # 127.5 -> 128, 76.49999… -> 76, 2.5 -> 2, as Python's round
    core.effedge_mean_pixel(triple(ctypes.c_double, means), fill)
    assert list(fill) == list(mean_pixel(means)) == [128, 76, 2]


# --- the real graph ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo detector exported by effedge (model.sim.onnx: raw boxes + scores heads) and its manifest."""
    from effedge.demo import demo_model
    from effedge.export.onnx_export import ExportOptions, export

    model = demo_model()
    out = tmp_path_factory.mktemp("demo")
    manifest = export(model.variant, out, weights=str(model.weights), num_classes=model.num_classes,
                      pad=model.pad, options=ExportOptions(image_size=model.image_size),
                      class_names=model.class_names)
    return out / "model.sim.onnx", manifest


def shapes_image(height: int, width: int, seed: int) -> np.ndarray:
    from effedge.demo.shapes import make_image

    grow = max(height, width) / 256  # objects as large, after the letterbox, as the detector was trained on
    pixels, _ = make_image(np.random.default_rng(seed), height, width, 5, int(24 * grow), int(96 * grow))
    return pixels


def photo() -> np.ndarray:
    from effedge.runtime.images import load_rgb

    return load_rgb(REPO / "calib" / "coffee.png")  # 600x400: no shapes; whatever it finds must agree


IMAGES = {"square": lambda: shapes_image(256, 256, 11), "wide": lambda: shapes_image(300, 517, 12),
          "tall": lambda: shapes_image(611, 301, 13), "small": lambda: shapes_image(150, 190, 14), "photo": photo}


@pytest.fixture(scope="module")
def runs(core, demo):
    """Per image: its pixels, the Detector's detections, the raw outputs of a plain ORT session on the C++ core's
    input tensor, and the core's mapping back to the image."""
    path, manifest = demo
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = tuple(manifest["resolution"])
    mean, std = manifest["input"]["mean"], manifest["input"]["std"]
    results = {}
    with Detector(path) as detector:
        for name, make in IMAGES.items():
            pixels = make()
            _, tensor, mapping = cpp_input(core, pixels, size, mean, std)
            boxes, scores = session.run(["boxes", "scores"], {"images": tensor})
            results[name] = (pixels, detector([pixels])[0], np.ascontiguousarray(boxes[0]),
                             np.ascontiguousarray(scores[0]), mapping)
    return results


@pytest.mark.parametrize("image", IMAGES)
def test_raw_heads_decode_as_the_detector(core, runs, image):
    pixels, expected, boxes, scores, mapping = runs[image]
    if image != "photo":
        assert len(expected) >= 1, "the demo detector finds shapes"
    config = core.effedge_default_config()
    out = (Detection * config.max_detections)()
    count = core.effedge_decode_raw(ctypes.byref(config), pointer(boxes), pointer(scores), *scores.shape,
                                    ctypes.byref(mapping), out, config.max_detections)
    assert count == len(expected)
    assert_same_detections(as_arrays(out, count), expected)


def efficientnms_tensors(boxes: np.ndarray, scores: np.ndarray, manifest: dict, seed: int) -> dict:
    """EfficientNMS_TRT's four outputs (batch 1) written from raw outputs at the export's NMS options."""
    options = manifest["export_options"]
    rows = options["max_detections"]
    kept_boxes, kept_scores, kept_classes = select_detections(
        boxes, scores, score_threshold=options["score_threshold"], iou_threshold=options["iou_threshold"],
        max_detections=rows)
    count = len(kept_scores)
    rng = np.random.default_rng(seed)  # junk past num_detections: boxes, scores above any threshold, classes
    detection_boxes = rng.uniform(0, 300, (1, rows, 4)).astype(np.float32)
    detection_scores = rng.uniform(0.9, 1.0, (1, rows)).astype(np.float32)
    detection_classes = rng.integers(0, scores.shape[1], (1, rows)).astype(np.int32)
    detection_boxes[0, :count], detection_scores[0, :count], detection_classes[0, :count] = (
        kept_boxes, kept_scores, kept_classes)
    return {"num_detections": np.array([[count]], np.int32), "detection_boxes": detection_boxes,
            "detection_scores": detection_scores, "detection_classes": detection_classes}


def constant_graph(path: Path, tensors: dict, size: tuple[int, int]) -> Path:
    """A graph of the detector's input whose outputs are ``tensors``: what the Detector reads off an engine."""
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, f"{name}_value"))
             for name, value in tensors.items()]
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    graph = helper.make_graph(
        nodes, "efficientnms-layout", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *size])],
        [helper.make_tensor_value_info(name, types[value.dtype], list(value.shape)) for name, value in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def efficientnms_case(demo, runs, image: str, folder: Path) -> tuple[dict, object]:
    """(the EfficientNMS tensors constructed from this image's raw outputs, the Detector's detections of them)."""
    _, manifest = demo
    pixels, _, boxes, scores, _ = runs[image]
    tensors = efficientnms_tensors(boxes, scores, manifest, seed=len(image))
    with Detector(constant_graph(folder / "nms.onnx", tensors, tuple(manifest["resolution"]))) as detector:
        assert detector.kind == "efficientnms"
        expected = detector([pixels])[0]
    if image != "photo":
        assert len(expected) >= 1
    return tensors, expected


@pytest.mark.parametrize("image", IMAGES)
def test_efficientnms_layout_decodes_as_the_detector(core, demo, runs, image, tmp_path):
    tensors, expected = efficientnms_case(demo, runs, image, tmp_path)
    mapping = runs[image][4]
    config = core.effedge_default_config()
    rows = tensors["detection_scores"].shape[1]
    out = (Detection * rows)()
    count = core.effedge_decode_efficientnms(
        ctypes.byref(config), ctypes.c_int32(int(tensors["num_detections"][0, 0])),
        pointer(tensors["detection_boxes"]), pointer(tensors["detection_scores"]),
        pointer(tensors["detection_classes"]), rows, ctypes.byref(mapping), out, rows)
    assert count == len(expected)
    assert_same_detections(as_arrays(out, count), expected)


# --- the DeepStream parsers on the same outputs (needs DeepStream's, TensorRT's and CUDA's headers) --------------


def deepstream_flags() -> list[str]:
    """Include flags for NVIDIA's headers, or skip without them."""
    flags = []
    for variable in ("EFFEDGE_DEEPSTREAM_INCLUDE", "EFFEDGE_TENSORRT_INCLUDE", "EFFEDGE_CUDA_INCLUDE"):
        if not os.environ.get(variable):
            pytest.skip(f"set {variable} (see tests/test_native_headers.py) to run the DeepStream parsers")
        flags += [f"-isystem{directory}" for directory in os.environ[variable].split(os.pathsep)]
    return flags


def build_parse_layers(program: Path, *extra: str) -> Path:
    """tests/native/parse_layers.cpp (nvinfer's side of the call) built with effedge's DeepStream parsers."""
    subprocess.run(["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", f"-I{NATIVE}",
                    *extra, *deepstream_flags(), str(REPO / "tests" / "native" / "parse_layers.cpp"),
                    str(NATIVE / "nvdsinfer_effedge.cpp"), str(NATIVE / "effedge_decode.cpp"), "-o", str(program)],
                   check=True)
    return program


@pytest.fixture(scope="module")
def deepstream_parser(tmp_path_factory):
    """The parsers as built without a bundle's effedge_parser_config.h: the core's defaults."""
    deepstream_flags()
    return build_parse_layers(tmp_path_factory.mktemp("deepstream") / "parse_layers")


@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("layout", ["raw", "efficientnms"])
def test_deepstream_parsers_decode_as_the_detector(deepstream_parser, demo, runs, layout, image, tmp_path):
    """The parsers return boxes in network pixels and nvinfer (maintain-aspect-ratio=1, symmetric-padding=0) maps
    them to the frame: × 1 / letterbox scale, clipped to the frame (crop-objects-to-roi-boundary=1; without it
    nvinfer drops a box whose bottom passes the frame's). Mapped so, they must be the Detector's."""
    _, manifest = demo
    pixels, expected, boxes, scores, mapping = runs[image]
    if layout == "efficientnms":
        tensors, expected = efficientnms_case(demo, runs, image, tmp_path)
    else:
        tensors = {"boxes": boxes[None], "scores": scores[None]}
    for name, value in tensors.items():  # nvinfer's layer dims leave the batch axis out
        (tmp_path / f"{name}.bin").write_bytes(np.ascontiguousarray(value[0]).tobytes())
        (tmp_path / f"{name}.shape").write_text(" ".join(map(str, value.shape[1:])))
    height, width = manifest["resolution"]
    result = subprocess.run([str(deepstream_parser), "nms" if layout == "efficientnms" else "raw", str(width),
                             str(height), str(manifest["num_classes"]), "0.3", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    rows = np.array([line.split() for line in result.stdout.splitlines()], np.float64).reshape(-1, 6)
    network_boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], 1)
    image_size = [pixels.shape[1], pixels.shape[0]] * 2
    frame_boxes = np.clip(network_boxes * mapping.factor, 0, image_size)
    assert len(rows) == len(expected)
    assert_same_detections((frame_boxes, rows[:, 1], rows[:, 0].astype(int)), expected)


@pytest.mark.parametrize("num_detections", [150, 400])
def test_deepstream_nms_parser_keeps_every_row_of_the_tail(deepstream_parser, num_detections, tmp_path):
    """The tail was built with --max-detections 150: all 150 rows reach nvinfer (its topk is the build's), not the
    runtime's default 100; a num_detections past the rows (a corrupt count) reads no further than they go."""
    rows = 150
    corners = np.arange(rows, dtype=np.float32)[:, None] * np.float32(2)
    tensors = {"num_detections": np.array([num_detections], np.int32),
               "detection_boxes": np.concatenate([corners, corners, corners + 1, corners + 1], 1),
               "detection_scores": np.linspace(0.99, 0.5, rows, dtype=np.float32),
               "detection_classes": (np.arange(rows) % 3).astype(np.int32)}
    for name, value in tensors.items():
        (tmp_path / f"{name}.bin").write_bytes(np.ascontiguousarray(value).tobytes())
        (tmp_path / f"{name}.shape").write_text(" ".join(map(str, value.shape)))
    result = subprocess.run([str(deepstream_parser), "nms", "512", "512", "3", "0.3", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    rows_out = np.array([line.split() for line in result.stdout.splitlines()], np.float64).reshape(-1, 6)
    assert len(rows_out) == rows
    np.testing.assert_allclose(rows_out[:, 1], tensors["detection_scores"], rtol=1e-6)
    assert rows_out[:, 0].astype(int).tolist() == tensors["detection_classes"].tolist()


def test_deepstream_nms_parser_refuses_rows_of_different_lengths(deepstream_parser, tmp_path):
    """A foreign engine whose detection_boxes has fewer rows than detection_scores: refused, not read past."""
    tensors = {"num_detections": np.array([50], np.int32), "detection_boxes": np.zeros((10, 4), np.float32),
               "detection_scores": np.full(50, 0.9, np.float32), "detection_classes": np.zeros(50, np.int32)}
    for name, value in tensors.items():
        (tmp_path / f"{name}.bin").write_bytes(value.tobytes())
        (tmp_path / f"{name}.shape").write_text(" ".join(map(str, value.shape)))
    result = subprocess.run([str(deepstream_parser), "nms", "512", "512", "3", "0.3", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "do not have shapes" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("iou, count, kept", [(0.3, 100, 3), (0.7, 100, 4), (0.7, 2, 2)])
def test_deepstream_raw_parser_applies_the_bundles_iou_and_max_detections(iou, count, kept, tmp_path):
    """Built with the effedge_parser_config.h that effedge package writes from build.json, the raw parser's NMS
    uses the build's IoU and box count: two boxes overlapping at IoU 0.5 are one at 0.3, two at 0.7."""
    from effedge.package.deepstream import PARSER_CONFIG_HEADER, parser_config_header

    (tmp_path / "include").mkdir()
    (tmp_path / "include" / PARSER_CONFIG_HEADER).write_text(parser_config_header(
        {"variant": "d0", "compile": {"config": {"iou_threshold": iou, "max_detections": count}}}))
    program = build_parse_layers(tmp_path / "parse_layers", f"-I{tmp_path / 'include'}")
    boxes = np.array([[0, 0, 100, 100], [0, 0, 100, 50], [200, 200, 300, 300], [400, 400, 420, 420]], np.float32)
    scores = np.array([[0.9], [0.8], [0.7], [0.6]], np.float32)
    for name, value in {"boxes": boxes, "scores": scores}.items():
        (tmp_path / f"{name}.bin").write_bytes(value.tobytes())
        (tmp_path / f"{name}.shape").write_text(" ".join(map(str, value.shape)))
    result = subprocess.run([str(program), "raw", "512", "512", "1", "0.3", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    scores_out = [float(line.split()[1]) for line in result.stdout.splitlines()]
    expected = [0.9, 0.7, 0.6] if iou < 0.5 else [0.9, 0.8, 0.7, 0.6]
    np.testing.assert_allclose(scores_out, expected[:kept], rtol=1e-6)


# --- synthetic raw heads: many candidates, the pre-NMS cut, ties -------------------------------------------------


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
    count = core.effedge_decode_raw(ctypes.byref(Config(0.3, 0.5, 100, 5000)), pointer(boxes), pointer(scores),
                                    anchors, classes, ctypes.byref(Mapping(factor, width, height)), out, 100)
    assert count == len(kept_scores) > 10
    got_boxes, got_scores, got_classes = as_arrays(out, count)
    assert got_classes.tolist() == kept_classes.tolist()
    np.testing.assert_allclose(got_scores, kept_scores, atol=1e-5)
    np.testing.assert_allclose(got_boxes, expected, atol=0.5)
