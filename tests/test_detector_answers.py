"""Detector answers checked against scenes whose answer is known: a graph that finds the white rectangle of an
image (its box in model pixels), so every image of a batch, every chunk and every file size has one right box;
NumPy NMS (per class, the pre-NMS top-k keeps the best); the EfficientNMS tail refused on ONNX Runtime."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from cuda_fake import FakeCudaRuntime
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from effedge.errors import EffedgeError
from effedge.runtime.detector import Detector
from effedge.runtime.nms import batched_nms, select_detections
from effedge.runtime.preprocess import MEAN, STD

SIZE = 256  # model input (square)
WHITE = float(min((1 - m) / s for m, s in zip(MEAN, STD)))  # a white pixel, normalized, its lowest channel


def white_box_detector(path, batch="batch", size=SIZE, input_format="float"):
    """An ONNX 'detector' whose one candidate per image is the box around its white pixels (x1, y1, x2, y2 in model
    pixels, pixel edges), score 1 where there are any, class 0. Input as effedge compiles it: NCHW float normalized,
    NHWC uint8 (``input_format="uint8"``) or NCHW float pixel values 0–255 (``"pixels"``, which its metadata says,
    as an export writes it)."""
    def const(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    ramp_up = np.arange(1, size + 1, dtype=np.float32)  # index + 1: the max gives the far edge
    ramp_down = size - np.arange(size, dtype=np.float32)  # size − index: size − max gives the near edge
    if input_format == "uint8":
        nodes = [helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
                 helper.make_node("ReduceMin", ["pixels"], ["darkest"], axes=[3], keepdims=0)]  # [B, H, W]
        half_white, shape, dtype = 127.5, [batch, size, size, 3], TensorProto.UINT8
    elif input_format == "pixels":
        nodes = [helper.make_node("ReduceMin", ["images"], ["darkest"], axes=[1], keepdims=0)]
        half_white, shape, dtype = 127.5, [batch, 3, size, size], TensorProto.FLOAT
    else:
        nodes = [helper.make_node("ReduceMin", ["images"], ["darkest"], axes=[1], keepdims=0)]
        half_white, shape, dtype = WHITE / 2, [batch, 3, size, size], TensorProto.FLOAT
    nodes += [
        helper.make_node("Greater", ["darkest", "half_white"], ["is_white"]),
        helper.make_node("Cast", ["is_white"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["mask"], ["columns"], axes=[1], keepdims=0),  # [B, W]
        helper.make_node("ReduceMax", ["mask"], ["rows"], axes=[2], keepdims=0),  # [B, H]
    ]
    for axis, line in (("x", "columns"), ("y", "rows")):
        nodes += [
            helper.make_node("Mul", [line, "ramp_up"], [f"{axis}_up"]),
            helper.make_node("ReduceMax", [f"{axis}_up"], [f"{axis}2"], axes=[1], keepdims=1),
            helper.make_node("Mul", [line, "ramp_down"], [f"{axis}_down"]),
            helper.make_node("ReduceMax", [f"{axis}_down"], [f"{axis}_far"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["size", f"{axis}_far"], [f"{axis}1"]),
        ]
    nodes += [
        helper.make_node("Concat", ["x1", "y1", "x2", "y2"], ["box"], axis=1),  # [B, 4]
        helper.make_node("Unsqueeze", ["box", "axis1"], ["boxes"]),  # [B, 1, 4]
        helper.make_node("ReduceMax", ["columns"], ["found"], axes=[1], keepdims=1),  # [B, 1]
        helper.make_node("Unsqueeze", ["found", "axis2"], ["scores"]),  # [B, 1, 1]
    ]
    initializers = [const("half_white", half_white), const("ramp_up", ramp_up), const("ramp_down", ramp_down),
                    const("size", size), numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                    numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    graph = helper.make_graph(
        nodes, "white-box", [helper.make_tensor_value_info("images", dtype, shape)],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, 1, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 1, 1])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime 1.31 reads
    if input_format == "pixels":  # a float input's type cannot say it takes pixels
        helper.set_model_props(model, {"effedge.input.format": "pixels"})
    onnx.save(model, str(path))
    return path


def white_box_numpy(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same detector in NumPy (for the fake TensorRT engine): normalized NCHW -> boxes [B,1,4], scores [B,1,1]."""
    mask = images.min(axis=1) > WHITE / 2
    boxes, scores = np.zeros((len(images), 1, 4), np.float32), np.zeros((len(images), 1, 1), np.float32)
    for i, image_mask in enumerate(mask):
        ys, xs = np.nonzero(image_mask)
        if xs.size:
            boxes[i, 0] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            scores[i, 0, 0] = 1
    return boxes, scores


def scene(height, width, box, background=0) -> np.ndarray:
    """An image with one white rectangle ``box`` (x1, y1, x2, y2, pixel edges)."""
    pixels = np.full((height, width, 3), background, np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    return pixels


def model_pixel(image_shape) -> float:
    """One model pixel in the original image's pixels (the letterbox's inverse scale)."""
    return max(image_shape[0], image_shape[1]) / SIZE


@pytest.fixture(scope="module")
def white_box(tmp_path_factory):
    return white_box_detector(tmp_path_factory.mktemp("white-box") / "white_box.onnx")


# --- boxes in the original file's pixels, whatever its size and format ----------------------------------------


@pytest.mark.parametrize("fmt, shape, box", [
    ("JPEG", (3000, 4000), (1000, 700, 2600, 1900)),  # decoded at 1/2 DCT scale
    ("PNG", (3072, 4096), (512, 1024, 3500, 2800)),  # decoded whole, then reduced 3×
])
def test_large_files_give_boxes_in_their_own_pixels(white_box, tmp_path, fmt, shape, box):
    pixels = scene(*shape, box)
    path = tmp_path / f"large.{fmt.lower()}"
    Image.fromarray(pixels).save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {"compress_level": 1}))
    with Detector(white_box) as detector:
        from_file, from_array = detector([path, pixels])
    tolerance = 2 * model_pixel(shape)  # the letterbox resolution, plus a pixel of resampling
    np.testing.assert_allclose(from_file.boxes[0], box, atol=tolerance)
    np.testing.assert_allclose(from_array.boxes[0], box, atol=tolerance)
    np.testing.assert_allclose(from_file.boxes[0], from_array.boxes[0], atol=tolerance)


def test_a_rotated_large_jpeg_gives_boxes_upright(white_box, tmp_path):
    """EXIF orientation 6 (rotate 90° clockwise to view): the file stores 3000×4000 sideways, the photo is
    4000×3000 upright, and the boxes are in the upright photo's pixels."""
    upright_box = (2800, 400, 3600, 1400)
    upright = scene(3000, 4000, upright_box)
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # what the camera wrote; rotating it clockwise restores it
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=92, exif=exif)
    with Detector(white_box) as detector:
        [found] = detector([path])
    np.testing.assert_allclose(found.boxes[0], upright_box, atol=2 * model_pixel(upright.shape))


def test_detect_on_a_phone_size_jpeg_writes_its_pixels(white_box, tmp_path):
    """``effedge detect`` on a 4000×3000 JPEG: detections.json in the photo's pixels, the drawing on the photo."""
    box = (1000, 700, 2600, 1900)
    path = tmp_path / "phone.jpg"
    Image.fromarray(scene(3000, 4000, box)).save(path, quality=92)
    result = subprocess.run([sys.executable, "-m", "effedge", "detect", str(white_box), str(path), "--out",
                             str(tmp_path / "out"), "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [entry] = json.loads((tmp_path / "out" / "detections.json").read_text())
    [detection] = entry["detections"]
    np.testing.assert_allclose(detection["box"], box, atol=2 * 4000 / SIZE)
    drawn = np.asarray(Image.open(tmp_path / "out" / "phone.jpg")).astype(int)
    photo = np.asarray(Image.open(path)).astype(int)
    assert drawn.shape == photo.shape == (3000, 4000, 3)
    x1, y1, x2, y2 = (int(v) for v in detection["box"])
    changed = lambda rows, columns: np.abs(drawn[rows, columns] - photo[rows, columns]).max(axis=-1)  # noqa: E731
    assert (changed(slice(y1, y1 + 2), slice(x1 + 20, x2 - 20)) > 20).mean() > 0.9  # the outline, where the box is
    assert (changed(slice(y1 + 40, y2 - 40), slice(x1 + 40, x2 - 40)) > 20).mean() < 0.01  # nothing drawn inside


# --- every image of a batch gets its own detections; chunks the engine takes ------------------------------------


def shifted_scenes(count, shape=(96, 128)):
    """``count`` images, each with its rectangle somewhere else; returns (images, boxes)."""
    boxes = [(4 + 9 * i, 3 + 5 * i, 30 + 9 * i, 20 + 6 * i) for i in range(count)]
    return [scene(*shape, b) for b in boxes], boxes


def assert_own_boxes(results, boxes, shape=(96, 128)):
    assert len(results) == len(boxes)
    for found, box in zip(results, boxes):
        assert len(found) == 1
        np.testing.assert_allclose(found.boxes[0], box, atol=2 * model_pixel(shape))


def test_every_image_of_a_dynamic_batch_gets_its_own_boxes(white_box):
    images, boxes = shifted_scenes(11)
    with Detector(white_box) as detector:
        fed = []
        infer = detector.runner.infer
        detector.runner.infer = lambda feed: fed.append(len(feed["images"])) or infer(feed)
        results = detector(images)
    assert fed == [8, 3]  # ONNX Runtime sets no limit: chunks of 8 bound the memory a long list needs
    assert_own_boxes(results, boxes)


def test_a_static_batch_is_fed_whole_chunks_each_image_its_own_boxes(tmp_path):
    model = white_box_detector(tmp_path / "b3.onnx", batch=3)
    images, boxes = shifted_scenes(7)  # chunks of 3, 3 and 1 padded to 3
    with Detector(model) as detector:
        fed = []
        infer = detector.runner.infer
        detector.runner.infer = lambda feed: fed.append(len(feed["images"])) or infer(feed)
        results = detector(images)
    assert fed == [3, 3, 3]
    assert_own_boxes(results, boxes)


def test_uint8_models_take_the_canvas_as_nhwc_pixels(tmp_path):
    model = white_box_detector(tmp_path / "u8.onnx", input_format="uint8")
    images, boxes = shifted_scenes(3)
    with Detector(model) as detector:
        assert detector.format == "uint8"
        assert_own_boxes(detector(images), boxes)


def test_pixels_models_take_the_canvas_as_nchw_pixel_values(tmp_path):
    """A pixels graph's input is NCHW float like a normalized one's; its metadata, or build.json, says it takes
    pixel values 0-255 and the Detector feeds them (normalized values would leave every pixel below half white)."""
    model = white_box_detector(tmp_path / "px.onnx", input_format="pixels")
    images, boxes = shifted_scenes(3)
    with Detector(model) as detector:
        assert detector.format == "pixels"
        assert_own_boxes(detector(images), boxes)
    bare = onnx.load(str(model))
    del bare.metadata_props[:]
    onnx.save(bare, str(model))
    recorded = {"family": "efficientdet", "input": {"format": "pixels", "mean": MEAN, "std": STD}}
    (tmp_path / "build.json").write_text(json.dumps(recorded))
    with Detector(model) as detector:
        assert detector.format == "pixels"
        assert_own_boxes(detector(images), boxes)
    # a record the graph's input contradicts is refused, not fed wrongly
    recorded["input"]["format"] = "uint8"
    (tmp_path / "build.json").write_text(json.dumps(recorded))
    with pytest.raises(EffedgeError, match="records the input format 'uint8', but the graph's input is float"):
        Detector(model)


def test_nms_tails_give_each_image_its_own_rows(tmp_path):
    """Batch 2 through both tails: image 1's detections are its own rows, not image 0's."""
    from test_runtime import constant_detector

    efficient = constant_detector(tmp_path / "e.onnx", {
        "num_detections": np.array([[1], [2]], np.int32),
        "detection_boxes": np.array([[[0, 0, 8, 8], [0, 0, 0, 0]], [[8, 8, 24, 24], [30, 30, 40, 40]]], np.float32),
        "detection_scores": np.array([[0.9, 0.0], [0.8, 0.7]], np.float32),
        "detection_classes": np.array([[1, 0], [2, 3]], np.int32)}, batch=2)
    onnx_nms = constant_detector(tmp_path / "o.onnx", {
        "selected_indices": np.array([[0, 1, 4], [1, 2, 7], [1, 3, 9]], np.int64),
        "detection_boxes": np.array([[0, 0, 8, 8], [8, 8, 24, 24], [30, 30, 40, 40]], np.float32),
        "detection_scores": np.array([0.9, 0.8, 0.7], np.float32)}, batch=2)
    blank = np.zeros((64, 64, 3), np.uint8)
    for model in (efficient, onnx_nms):
        with Detector(model) as detector:
            first, second = detector([blank, blank])
        assert first.classes.tolist() == [1] and second.classes.tolist() == [2, 3], model.name
        np.testing.assert_allclose(second.boxes, [[8, 8, 24, 24], [30, 30, 40, 40]])


@pytest.fixture
def cudart(monkeypatch):
    return FakeCudaRuntime().install(monkeypatch)


def white_box_engine(trt, cudart, profile):
    """A fake TensorRT engine: images (-1, 3, SIZE, SIZE) over the optimization profile ``profile`` (min, opt, max
    batch) -> boxes, scores of :func:`white_box_numpy`, computed on the stream from device memory."""
    from trt_fixtures import declare_engine_io

    shapes = {"images": (3, SIZE, SIZE), "boxes": (1, 4), "scores": (1, 1)}
    io = {"images": (trt.TensorIOMode.INPUT, (-1, *shapes["images"])),
          "boxes": (trt.TensorIOMode.OUTPUT, (-1, *shapes["boxes"])),
          "scores": (trt.TensorIOMode.OUTPUT, (-1, *shapes["scores"]))}
    declare_engine_io(trt, io)
    trt.set_handler("ICudaEngine.get_tensor_profile_shape",
                    lambda engine, name, index: [(b, *shapes["images"]) for b in profile])
    batch = {}

    def set_input_shape(context, name, shape):
        if not profile[0] <= shape[0] <= profile[2]:
            return False  # what TensorRT does outside the profile
        batch["n"] = shape[0]
        return True

    trt.set_handler("IExecutionContext.set_input_shape", set_input_shape)
    trt.set_handler("IExecutionContext.get_tensor_shape", lambda context, name: (batch["n"], *shapes[name]))

    def execute(context, stream):
        address = {c.args[0]: c.args[1] for c in trt.calls_to("IExecutionContext.set_tensor_address")}
        n = batch["n"]

        def run():
            images = cudart.view(address["images"], n * 3 * SIZE * SIZE * 4).view(np.float32)
            boxes, scores = white_box_numpy(images.reshape(n, *shapes["images"]))
            cudart.view(address["boxes"], boxes.nbytes).view(np.float32)[:] = boxes.reshape(-1)
            cudart.view(address["scores"], scores.nbytes).view(np.float32)[:] = scores.reshape(-1)

        cudart.enqueue(stream, run)
        return True

    trt.set_handler("IExecutionContext.execute_async_v3", execute)


def test_a_dynamic_engine_gets_chunks_within_its_profile(trt_fake, cudart, tmp_path):
    white_box_engine(trt_fake, cudart, profile=(2, 2, 4))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    images, boxes = shifted_scenes(9)  # 4 + 4 + 1, the last padded up to the profile's minimum of 2
    with Detector(engine) as detector:
        results = detector(images)
    fed = [tuple(c.args[1])[0] for c in trt_fake.calls_to("IExecutionContext.set_input_shape")]
    assert fed == [4, 2]  # shapes are set when they change: 4, (4), 2
    assert [c[0] for c in trt_fake.calls if c[0] == "IExecutionContext.execute_async_v3"] == [
        "IExecutionContext.execute_async_v3"] * 3
    assert_own_boxes(results, boxes)


# --- NMS: per class, the pre-NMS top-k keeps the best, the Detector's NumPy path --------------------------------


OVERLAPPING = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [11, 11, 51, 51]], np.float32)  # IoU > 0.8 pairwise
TWO_CLASSES = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]], np.float32)  # boxes 0, 1: class 0; box 2: class 1


def test_the_detector_s_nms_suppresses_within_a_class_only():
    boxes, scores, classes = select_detections(OVERLAPPING, TWO_CLASSES, score_threshold=0.3, iou_threshold=0.5,
                                               max_detections=10)
    assert classes.tolist() == [0, 1] and scores.tolist() == pytest.approx([0.9, 0.7])
    np.testing.assert_array_equal(boxes, OVERLAPPING[[0, 2]])


def test_the_reference_nms_suppresses_within_a_class_only():
    """batched_nms, the reference the ONNX NonMaxSuppression tail is tested against: rows (class, anchor)."""
    assert batched_nms(OVERLAPPING, TWO_CLASSES, score_threshold=0.3, iou_threshold=0.5).tolist() == [[0, 0], [1, 2]]


def test_pre_nms_top_keeps_the_best_candidates():
    rng = np.random.default_rng(0)
    count = 50
    corners = rng.uniform(0, 1000, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + 5], axis=1)  # small, far apart: NMS suppresses nothing
    scores = np.linspace(0.4, 0.99, count, dtype=np.float32)[rng.permutation(count)][:, None]
    _, kept_scores, _ = select_detections(boxes, scores, score_threshold=0.3, iou_threshold=0.5, max_detections=100,
                                          pre_nms_top=10)
    assert kept_scores.tolist() == pytest.approx(np.sort(scores[:, 0])[::-1][:10].tolist())


def test_the_detector_keeps_the_best_of_many_candidates(tmp_path):
    """More candidates than the pre-NMS top-k (5000), through the Detector: the best 100 come out."""
    from test_runtime import constant_detector

    count = 6000
    columns = np.arange(count, dtype=np.float32) % 100
    rows = np.arange(count, dtype=np.float32) // 100
    boxes = np.stack([columns * 10, rows * 10, columns * 10 + 4, rows * 10 + 4], axis=1)  # disjoint, in a grid
    scores = np.random.default_rng(1).permutation(np.linspace(0.31, 0.99, count, dtype=np.float32))[:, None]
    model = constant_detector(tmp_path / "many.onnx", {"boxes": boxes[None], "scores": scores[None]}, size=1024)
    with Detector(model, score_threshold=0.3) as detector:
        [found] = detector([np.zeros((1024, 1024, 3), np.uint8)])
    best = np.argsort(-scores[:, 0], kind="stable")[:100]
    assert found.scores.tolist() == pytest.approx(scores[best, 0].tolist())
    np.testing.assert_allclose(found.boxes, boxes[best])


# --- the NMS tail that the backend runs ---------------------------------------------------------------------------


def test_an_efficientnms_graph_on_onnx_runtime_is_refused_in_one_line(tmp_path):
    from effedge.export.nms_tail import append_nms_tail

    model = onnx.load(str(white_box_detector(tmp_path / "plain.onnx")))
    model.graph.node.append(helper.make_node("Identity", ["scores"], ["class_logits"]))
    model.graph.output.append(helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["batch", 1, 1]))
    tailed = append_nms_tail(model, "efficientnms", score_threshold=0.3, iou_threshold=0.5, max_detections=10)
    path = tmp_path / "model.fp32.onnx"
    onnx.save(tailed, str(path))
    (tmp_path / "build.json").write_text(json.dumps({"variant": "d0"}))
    with pytest.raises(EffedgeError) as caught:
        Detector(path)
    message = str(caught.value)
    assert "\n" not in message and "registered" not in message
    assert "EfficientNMS_TRT" in message and "full TensorRT" in message and "ONNX Runtime runs" in message
    assert "effedge export --variant d0 --nms onnx" in message
    Image.fromarray(scene(32, 32, (4, 4, 20, 20))).save(tmp_path / "x.jpg")
    result = subprocess.run([sys.executable, "-m", "effedge", "detect", str(path), str(tmp_path / "x.jpg"), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # beside a build's tail-free graph (same weights), the fix is that file, and it runs
    onnx.save(onnx.load(str(tmp_path / "plain.onnx")), str(tmp_path / "model.sim.onnx"))
    with pytest.raises(EffedgeError, match="run .*model.sim.onnx instead"):
        Detector(path)
    with Detector(tmp_path / "model.sim.onnx") as detector:
        assert len(detector([scene(32, 32, (4, 4, 20, 20))])[0]) == 1
    assert result.stderr.strip().splitlines()[-1].endswith("(or --nms none)")
    assert not (tmp_path / "out").exists()
