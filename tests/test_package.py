"""effedge package (Triton): configs parse with Triton's own schema, every tensor's name, type and dims match
build.json, and the model folder says what input a client must send."""
import json

import pytest

from effedge.errors import EffedgeError
from effedge.package import package_triton

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "letterbox_fill": [124, 116, 104]}


def build_dir(root, deployable, backend=None, nms="none", batch=None, input_format="float", family="efficientdet",
              max_detections=100, size=(128, 96)):
    """A build.json as effedge compile writes it (the fields package reads) and a stand-in model file."""
    root.mkdir(parents=True, exist_ok=True)
    batch = batch or {"static": 1}
    n = batch.get("static", "batch")
    height, width = size
    uint8 = input_format == "uint8"
    shape = [n, height, width, 3] if uint8 else [n, 3, height, width]
    if family == "efficientdet":
        outputs = [{"name": name, "shape": [n, 1008, c], "dtype": "float32"}
                   for name, c in (("class_logits", 90), ("box_regression", 4), ("boxes", 4), ("scores", 90))]
    else:
        outputs = [{"name": "logits", "shape": [n, 1000], "dtype": "float32"}]
    config = {"score_threshold": 0.05, "iou_threshold": 0.5}
    if max_detections is not None:
        config["max_detections"] = max_detections
    manifest = {"variant": "d0", "family": family, "precision": "fp16", "nms": nms, "batch": batch,
                "input": {"name": "images", "format": input_format, "layout": "NHWC" if uint8 else "NCHW",
                          **IMAGENET, **({"crop_pct": 0.875} if family == "efficientnet" else {})},
                "compile": {"deployable": deployable, "config": config},
                "graph": {"simplified": {"inputs": [{"name": "images", "shape": shape,
                                                     "dtype": "uint8" if uint8 else "float32"}],
                                         "outputs": outputs}}}
    if deployable.endswith(".engine"):
        manifest["engines"] = {deployable: {"backend": backend, "compute_capability": "8.7", "options": {}}}
    (root / "build.json").write_text(json.dumps(manifest))
    (root / deployable).write_bytes(b"model")
    return root


def parse(path):
    return text_format.Parse((path / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def tensors(entries):
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in entries]


def raw_outputs(batch):
    return [("class_logits", "TYPE_FP32", [*batch, 1008, 90]), ("box_regression", "TYPE_FP32", [*batch, 1008, 4]),
            ("boxes", "TYPE_FP32", [*batch, 1008, 4]), ("scores", "TYPE_FP32", [*batch, 1008, 90])]


def test_onnxruntime_build_static_batch(tmp_path):
    summary = package_triton(build_dir(tmp_path / "b", "model.fp32.onnx"), tmp_path / "repo")
    config = parse(tmp_path / "repo" / "d0")
    assert summary["platform"] == config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert tensors(config.input) == [("images", "TYPE_FP32", [1, 3, 128, 96])]
    assert tensors(config.output) == raw_outputs([1])
    assert (tmp_path / "repo" / "d0" / "1" / "model.onnx").read_bytes() == b"model"


def test_static_batch_4_keeps_full_dims(tmp_path):
    package_triton(build_dir(tmp_path / "b", "model.fp16.engine", "tensorrt", batch={"static": 4}), tmp_path / "repo")
    config = parse(tmp_path / "repo" / "d0")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert tensors(config.input) == [("images", "TYPE_FP32", [4, 3, 128, 96])]
    assert tensors(config.output) == raw_outputs([4])


def test_tensorrt_engine_dynamic_batch_nms(tmp_path):
    package_triton(build_dir(tmp_path / "b", "model.fp16.engine", "tensorrt", "efficientnms",
                             {"min": 1, "opt": 2, "max": 4}, max_detections=37), tmp_path / "repo", name="det")
    config = parse(tmp_path / "repo" / "det")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4
    assert tensors(config.input) == [("images", "TYPE_FP32", [3, 128, 96])]
    # EfficientNMS_TRT's outputs, K = the build's --max-detections, the batch left to max_batch_size
    assert tensors(config.output) == [("num_detections", "TYPE_INT32", [1]), ("detection_boxes", "TYPE_FP32", [37, 4]),
                                      ("detection_scores", "TYPE_FP32", [37]), ("detection_classes", "TYPE_INT32", [37])]
    assert config.cc_model_filenames["8.7"] == "model.plan"
    assert list(config.dynamic_batching.preferred_batch_size) == [2]


def test_dynamic_profile_onnxruntime_raw(tmp_path):
    package_triton(build_dir(tmp_path / "b", "model.fp32.onnx", batch={"min": 1, "opt": 4, "max": 8}),
                   tmp_path / "repo")
    config = parse(tmp_path / "repo" / "d0")
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4]
    assert tensors(config.input) == [("images", "TYPE_FP32", [3, 128, 96])]
    assert tensors(config.output) == raw_outputs([])


def test_static_batch_efficientnms_keeps_the_batch_in_every_output(tmp_path):
    package_triton(build_dir(tmp_path / "b", "model.fp16.engine", "tensorrt", "efficientnms", {"static": 2}),
                   tmp_path / "repo")
    config = parse(tmp_path / "repo" / "d0")
    assert config.max_batch_size == 0
    assert tensors(config.output) == [("num_detections", "TYPE_INT32", [2, 1]),
                                      ("detection_boxes", "TYPE_FP32", [2, 100, 4]),
                                      ("detection_scores", "TYPE_FP32", [2, 100]),
                                      ("detection_classes", "TYPE_INT32", [2, 100])]


def parameters(config):
    return {key: value.string_value for key, value in config.parameters.items()}


def test_uint8_build_takes_nhwc_uint8_and_says_so(tmp_path):
    package_triton(build_dir(tmp_path / "b", "model.fp16.engine", "tensorrt", input_format="uint8"),
                   tmp_path / "repo")
    model = tmp_path / "repo" / "d0"
    config = parse(model)
    assert tensors(config.input) == [("images", "TYPE_UINT8", [1, 128, 96, 3])]
    assert parameters(config) == {
        "effedge.input_format": "uint8", "effedge.layout": "NHWC", "effedge.color": "RGB", "effedge.height": "128",
        "effedge.width": "96", "effedge.mean": "0.485,0.456,0.406", "effedge.std": "0.229,0.224,0.225",
        "effedge.resize": "letterbox-top-left", "effedge.letterbox_fill": "124,116,104"}
    readme = (model / "README.md").read_text()
    assert "TYPE_UINT8 [1, 128, 96, 3]" in readme and "NHWC" in readme and "uint8 pixel values 0-255" in readme


def test_pixels_and_float_builds_say_who_normalizes(tmp_path):
    package_triton(build_dir(tmp_path / "p", "model.fp16.engine", "tensorrt", input_format="pixels"),
                   tmp_path / "repo", name="pixels")
    package_triton(build_dir(tmp_path / "f", "model.fp16.engine", "tensorrt", "efficientnms"), tmp_path / "repo",
                   name="float")
    pixels, normalized = parse(tmp_path / "repo" / "pixels"), parse(tmp_path / "repo" / "float")
    assert tensors(pixels.input) == tensors(normalized.input) == [("images", "TYPE_FP32", [1, 3, 128, 96])]
    assert parameters(pixels)["effedge.input_format"] == "pixels"
    assert parameters(normalized)["effedge.input_format"] == "float"
    assert parameters(normalized)["effedge.layout"] == "NCHW"
    text = (tmp_path / "repo" / "pixels" / "README.md").read_text()
    assert "float32 pixel values 0-255, not normalized" in text
    text = (tmp_path / "repo" / "float" / "README.md").read_text()
    assert "(pixel / 255 - mean) / std, mean 0.485,0.456,0.406, std 0.229,0.224,0.225" in text
    assert "letterbox to 96x128" in text and "top-left" in text and "RGB (124,116,104)" in text
    assert "`detection_boxes`: TYPE_FP32 [1, 100, 4]" in text and "num_detections" in text


def test_classifier_says_centre_crop(tmp_path):
    package_triton(build_dir(tmp_path / "b", "model.fp32.onnx", family="efficientnet", size=(224, 224)),
                   tmp_path / "repo")
    config = parse(tmp_path / "repo" / "d0")
    assert tensors(config.output) == [("logits", "TYPE_FP32", [1, 1000])]
    assert parameters(config)["effedge.resize"] == "center-crop" and parameters(config)["effedge.crop_pct"] == "0.875"
    assert "effedge.letterbox_fill" not in parameters(config)
    assert "floor(224 / 0.875)" in (tmp_path / "repo" / "d0" / "README.md").read_text()


@pytest.mark.parametrize("kwargs, message", [
    ({"nms": "efficientnms", "max_detections": None}, "no max_detections"),
    ({"batch": {"min": 2, "opt": 2, "max": 4}}, "--dynamic-batch 1:2:4"),
    ({"backend": "tensorrt-rtx"}, "TensorRT-RTX"),
])
def test_what_triton_cannot_serve_as_built_is_refused(tmp_path, kwargs, message):
    with pytest.raises(EffedgeError, match=message):
        package_triton(build_dir(tmp_path / "b", "model.fp16.engine", **{"backend": "tensorrt", **kwargs}),
                       tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_missing_build_is_refused(tmp_path):
    with pytest.raises(EffedgeError, match="not an effedge build directory"):
        package_triton(tmp_path / "nothing", tmp_path / "repo")
