"""effedge package --format deepstream: the nvinfer config holds only documented keys with legal values, all
derived from build.json; what nvinfer cannot run as built is refused in one line, leaving no half bundle."""
import configparser
import json

import pytest

from effedge.errors import EffedgeError
from effedge.package import package_deepstream
from effedge.package.deepstream import NVINFER_PROPERTIES, PARSER_CONFIG_HEADER, native_sources
from helpers import run_main

LITE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def build_dir(root, *, precision="fp16", backend="tensorrt", nms="efficientnms", input_format="float",
              normalization=LITE, batch=None, family="efficientdet", num_classes=3, class_names=None,
              variant="d-lite0", iou_threshold=0.5, max_detections=100):
    """A hand-written compile build.json (as effedge compile writes it) and stand-in model files."""
    root.mkdir(parents=True, exist_ok=True)
    onnx_file = f"model.{precision}.onnx"
    engine = backend in ("tensorrt", "tensorrt-rtx")
    deployable = f"model.{precision}.engine" if engine else onnx_file
    uint8 = input_format == "uint8"
    manifest = {
        "variant": variant, "family": family, "num_classes": num_classes, "precision": precision,
        "backend": backend, "nms": nms, "batch": batch or {"static": 1},
        **({"class_names": class_names} if class_names else {}),
        "input": {"name": "images", "format": input_format, "layout": "NHWC" if uint8 else "NCHW",
                  **normalization},
        "compile": {"deployable": deployable, "config": {"score_threshold": 0.05, "iou_threshold": iou_threshold,
                                                         "max_detections": max_detections}},
        "graph": {"simplified": {
            "inputs": [{"name": "images", "dtype": "uint8" if uint8 else "float32",
                        "shape": [1, 320, 320, 3] if uint8 else [1, 3, 320, 320]}],
            "outputs": [{"name": n, "dtype": "float32", "shape": [1, 19206, c]} for n, c in
                        (("class_logits", num_classes), ("box_regression", 4), ("boxes", 4),
                         ("scores", num_classes))]}},
    }
    if engine:
        manifest["engines"] = {deployable: {"backend": backend, "product": "TensorRT", "version": "10.3.0",
                                            "compute_capability": "8.7", "options": {}}}
        (root / deployable).write_bytes(b"engine")
    (root / onnx_file).write_bytes(b"onnx")
    (root / "build.json").write_text(json.dumps(manifest))
    return root


def read_config(summary):
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # nvinfer's keys are case-sensitive (minBoxes)
    parser.read(summary["config"])
    return {group: dict(parser[group]) for group in parser.sections()}


def assert_documented(config):
    for group, entries in config.items():
        assert group in NVINFER_PROPERTIES
        for key, value in entries.items():
            assert key in NVINFER_PROPERTIES[group], key
            assert NVINFER_PROPERTIES[group][key](value), (key, value)


def test_tensorrt_build_bundle_is_complete_and_every_key_is_documented(tmp_path):
    summary = package_deepstream(build_dir(tmp_path / "b"), tmp_path / "out")
    bundle = tmp_path / "out" / "d-lite0"
    config = read_config(summary)
    assert_documented(config)
    prop = config["property"]
    assert prop["model-engine-file"] == "model.fp16.engine" and prop["onnx-file"] == "model.fp16.onnx"
    assert (bundle / "model.fp16.engine").read_bytes() == b"engine"
    assert (bundle / "model.fp16.onnx").read_bytes() == b"onnx"
    assert prop["network-mode"] == "2" and prop["infer-dims"] == "3;320;320" and prop["batch-size"] == "1"
    assert prop["num-detected-classes"] == "3" and prop["network-input-order"] == "0"
    assert prop["maintain-aspect-ratio"] == "1" and prop["symmetric-padding"] == "0"
    # nvinfer drops (not clips) a box whose mapped bottom passes the frame's unless this is set; effedge clips
    assert prop["crop-objects-to-roi-boundary"] == "1"
    # Lite: (x / 255 - 0.5) / 0.5 == (x - 127.5) / 127.5
    assert float(prop["net-scale-factor"]) == pytest.approx(1 / 127.5) and prop["offsets"] == "127.5;127.5;127.5"
    assert config["class-attrs-all"] == {"pre-cluster-threshold": "0.05", "topk": "100"}
    # the parser's sources travel with the bundle, and the config points at the library their CMake builds
    assert sorted(p.name for p in (bundle / "parser").iterdir()) == sorted(
        [p.name for p in native_sources()] + [PARSER_CONFIG_HEADER])
    library = prop["custom-lib-path"].rsplit("/", 1)[-1]
    assert f"add_library({library[3:-3]} SHARED" in (bundle / "parser" / "CMakeLists.txt").read_text()
    assert prop["parse-bbox-func-name"] in (bundle / "parser" / "nvdsinfer_effedge.cpp").read_text()
    assert "cmake" in (bundle / "README.md").read_text()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["d-lite0"]  # no staging folder left


def test_nms_and_raw_layouts_pick_their_parser(tmp_path):
    nms = read_config(package_deepstream(build_dir(tmp_path / "a"), tmp_path / "out", name="nms"))["property"]
    assert nms["parse-bbox-func-name"] == "NvDsInferParseEffedgeNms" and nms["cluster-mode"] == "4"
    assert nms["output-blob-names"] == "num_detections;detection_boxes;detection_scores;detection_classes"
    raw = read_config(package_deepstream(build_dir(tmp_path / "b", nms="none"), tmp_path / "out",
                                         name="raw"))["property"]
    # the raw parser runs the decode core's NMS itself: nvinfer must not cluster again
    assert raw["parse-bbox-func-name"] == "NvDsInferParseEffedgeRaw" and raw["cluster-mode"] == "4"
    assert raw["output-blob-names"] == "boxes;scores"


def test_the_raw_parser_gets_the_builds_iou_and_max_detections(tmp_path):
    """nvinfer's parser interface carries no IoU: the bundle's generated header gives the raw-heads parser the
    build's --iou-threshold and --max-detections (build.json's compile config), which it is compiled with."""
    summary = package_deepstream(build_dir(tmp_path / "b", nms="none", iou_threshold=0.6, max_detections=37),
                                 tmp_path / "out")
    header = (tmp_path / "out" / "d-lite0" / "parser" / PARSER_CONFIG_HEADER).read_text()
    defines = dict(line.split()[1:] for line in header.splitlines() if line.startswith("#define"))
    assert defines == {"EFFEDGE_IOU_THRESHOLD": "0.6f", "EFFEDGE_MAX_DETECTIONS": "37"}
    assert read_config(summary)["class-attrs-all"]["topk"] == "37"
    # the adapter includes it by this name, and uses both values
    adapter = (tmp_path / "out" / "d-lite0" / "parser" / "nvdsinfer_effedge.cpp").read_text()
    assert f'__has_include("{PARSER_CONFIG_HEADER}")' in adapter
    assert "config.iou_threshold = EFFEDGE_IOU_THRESHOLD" in adapter
    assert "config.max_detections = EFFEDGE_MAX_DETECTIONS" in adapter
    assert PARSER_CONFIG_HEADER in (tmp_path / "out" / "d-lite0" / "README.md").read_text()


@pytest.mark.parametrize("iou, count", [(None, 100), (0.0, 100), (0.5, 0), (1.5, 100), (0.5, "100")])
def test_a_missing_or_invalid_iou_or_count_is_refused(tmp_path, iou, count):
    build = build_dir(tmp_path / "b", nms="none", iou_threshold=iou, max_detections=count)
    with pytest.raises(EffedgeError, match="IoU threshold / max detections|max detections"):
        package_deepstream(build, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_onnxruntime_build_ships_the_onnx_only(tmp_path):
    summary = package_deepstream(build_dir(tmp_path / "b", backend="onnxruntime", nms="none", precision="fp32",
                                           batch={"min": 1, "opt": 2, "max": 4}), tmp_path / "out")
    prop = read_config(summary)["property"]
    assert "model-engine-file" not in prop and summary["engine"] is None
    assert prop["onnx-file"] == "model.fp32.onnx" and prop["network-mode"] == "0" and prop["batch-size"] == "4"


def test_int8_engine_needs_no_calibration_file(tmp_path):
    prop = read_config(package_deepstream(build_dir(tmp_path / "b", precision="int8"), tmp_path / "out"))["property"]
    assert prop["network-mode"] == "1" and "int8-calib-file" not in prop


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "tensorrt-rtx", "nms": "none"}, "not TensorRT-RTX"),
    ({"normalization": IMAGENET}, "per-channel std.*export with --input-format pixels"),
    ({"input_format": "uint8"}, "float32 tensor.*export with --input-format pixels"),
    ({"input_format": "uint8", "normalization": IMAGENET}, "float32 tensor.*export with --input-format pixels"),
    ({"input_format": "bgr"}, "unknown input format"),
    ({"backend": "onnxruntime", "nms": "onnx"}, "data-dependent"),
    ({"family": "efficientnet", "nms": "none"}, "EfficientDet detectors"),
    ({"backend": "onnxruntime", "nms": "none", "precision": "int8"}, "FP16 flag only"),
])
def test_what_nvinfer_cannot_run_is_refused_without_a_bundle(tmp_path, kwargs, message):
    with pytest.raises(EffedgeError, match=message):
        package_deepstream(build_dir(tmp_path / "b", **kwargs), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("variant, normalization", [("d0", IMAGENET), ("d-lite0", LITE)])
def test_a_pixels_build_is_fed_the_pixels_as_they_are(tmp_path, variant, normalization):
    """D0's per-channel std is beyond one net-scale-factor, but a --input-format pixels graph normalizes
    itself: nvinfer hands it the RGB values 0-255 untouched (scale 1, offsets 0), NCHW float."""
    build = build_dir(tmp_path / "b", variant=variant, input_format="pixels", normalization=normalization)
    config = read_config(package_deepstream(build, tmp_path / "out"))
    assert_documented(config)
    prop = config["property"]
    assert float(prop["net-scale-factor"]) == 1.0 and prop["offsets"] == "0;0;0"
    assert prop["network-input-order"] == "0" and prop["model-color-format"] == "0"
    assert prop["infer-dims"] == "3;320;320" and prop["maintain-aspect-ratio"] == "1"
    assert (tmp_path / "out" / variant / f"config_infer_primary_{variant}.txt").is_file()


def test_labels_from_build_json_else_the_family_else_numbered(tmp_path):
    package_deepstream(build_dir(tmp_path / "a", class_names=["circle", "square", "triangle"]), tmp_path / "o", "a")
    assert (tmp_path / "o" / "a" / "labels.txt").read_text() == "circle\nsquare\ntriangle\n"
    package_deepstream(build_dir(tmp_path / "b"), tmp_path / "o", "b")
    assert (tmp_path / "o" / "b" / "labels.txt").read_text() == "class0\nclass1\nclass2\n"
    package_deepstream(build_dir(tmp_path / "c", num_classes=90), tmp_path / "o", "c")
    coco = (tmp_path / "o" / "c" / "labels.txt").read_text().splitlines()
    assert len(coco) == 90 and coco[0] == "person" and coco[11] == "class11"  # COCO's unannotated slot 12


def test_failure_midway_leaves_no_half_bundle(tmp_path, monkeypatch):
    build = build_dir(tmp_path / "b")
    real_copy = __import__("shutil").copyfile

    def failing_copy(source, target):
        seen.append((tmp_path / "out" / "d-lite0").exists())  # the bundle's name appears only when whole
        if str(source).endswith("CMakeLists.txt"):
            raise OSError("disk full")
        return real_copy(source, target)

    seen = []

    monkeypatch.setattr("effedge.package.deepstream.shutil.copyfile", failing_copy)
    with pytest.raises(OSError):
        package_deepstream(build, tmp_path / "out")
    assert len(seen) >= 3 and not any(seen) and list((tmp_path / "out").iterdir()) == []


def test_existing_bundle_is_not_overwritten(tmp_path):
    package_deepstream(build_dir(tmp_path / "b"), tmp_path / "out")
    with pytest.raises(EffedgeError, match="exists"):
        package_deepstream(tmp_path / "b", tmp_path / "out")


def test_cli_json_and_one_line_errors(tmp_path, monkeypatch, capsys):
    build = build_dir(tmp_path / "b", nms="none")
    code, out, err = run_main(monkeypatch, capsys, ["package", str(build), "--format", "deepstream", "--out",
                                                    str(tmp_path / "out"), "--name", "det", "--json"])
    summary = json.loads(out)
    assert code == 0 and summary["format"] == "deepstream" and summary["parse_function"] == "NvDsInferParseEffedgeRaw"
    assert summary["config"].endswith("config_infer_primary_det.txt") and summary["build_parser"][0].startswith("cmake")
    bad = build_dir(tmp_path / "imagenet", normalization=IMAGENET)
    code, out, err = run_main(monkeypatch, capsys, ["package", str(bad), "--format", "deepstream", "--out",
                                                    str(tmp_path / "out")])
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_bundled_parser_builds_the_library_the_config_names(tmp_path):
    """With NVIDIA's headers given (as tests/test_native_headers.py takes them), the bundle's own CMake build makes
    the library at custom-lib-path, exporting the parse-bbox-func-name of either layout."""
    import os
    import shutil
    import subprocess

    headers = [os.environ.get(v) for v in ("EFFEDGE_DEEPSTREAM_INCLUDE", "EFFEDGE_TENSORRT_INCLUDE",
                                           "EFFEDGE_CUDA_INCLUDE")]
    if not all(headers) or not shutil.which("cmake") or not shutil.which("nm"):
        pytest.skip("set EFFEDGE_DEEPSTREAM_INCLUDE, EFFEDGE_TENSORRT_INCLUDE and EFFEDGE_CUDA_INCLUDE (and have "
                    "cmake and nm) to build the bundled parser")
    summary = package_deepstream(build_dir(tmp_path / "b"), tmp_path / "out")
    bundle, prop = tmp_path / "out" / "d-lite0", read_config(summary)["property"]
    cuda = ";".join([*headers[2].split(os.pathsep), *headers[1].split(os.pathsep)])  # each may list several
    for command in (["cmake", "-S", "parser", "-B", "parser/build", f"-DDEEPSTREAM_INCLUDE={headers[0]}",
                     f"-DCUDA_INCLUDE={cuda}"], ["cmake", "--build", "parser/build"]):
        result = subprocess.run(command, cwd=bundle, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(bundle / prop["custom-lib-path"])],
                             capture_output=True, text=True, check=True).stdout
    assert "NvDsInferParseEffedgeNms" in symbols and "NvDsInferParseEffedgeRaw" in symbols
