"""Syntax-check the C++ that needs NVIDIA headers (DeepStream parser, examples/cpp) against headers given by env.

The headers are not in this repository (nor in CI); point the variables at include directories to run the checks
(each may list several directories, os.pathsep-separated): EFFEDGE_DEEPSTREAM_INCLUDE (DeepStream's includes/),
EFFEDGE_TENSORRT_INCLUDE (TensorRT's include/, plus NvOnnxParser.h's directory for the DeepStream check where the
include/ lacks it, as TensorRT 8.6's), EFFEDGE_CUDA_INCLUDE (cuda_runtime_api.h and crt/),
EFFEDGE_TENSORRT_RTX_INCLUDE (TensorRT-RTX's include/), EFFEDGE_OPENCV_INCLUDE (opencv2/; else
`pkg-config --cflags opencv4`). NVIDIA's own headers are included as system headers so that only effedge's code
is held to -Wall -Wextra -Werror. examples/cpp/README.md records the header sets these checks passed against.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NATIVE = REPO / "effedge" / "native"


def _include_dirs(*variables: str) -> list[str]:
    """-isystem flags for the variables, or skip naming the first one that is unset."""
    flags: list[str] = []
    for variable in variables:
        value = os.environ.get(variable)
        if not value:
            pytest.skip(f"set {variable} to an include directory to run this header check")
        for directory in value.split(os.pathsep):
            flags += ["-isystem", directory]
    return flags


def _syntax_check(source: Path, flags: list[str]) -> None:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    command = [compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", f"-I{NATIVE}", *flags,
               str(source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"


def test_deepstream_parser_compiles() -> None:
    flags = _include_dirs("EFFEDGE_DEEPSTREAM_INCLUDE", "EFFEDGE_TENSORRT_INCLUDE", "EFFEDGE_CUDA_INCLUDE")
    _syntax_check(NATIVE / "nvdsinfer_effedge.cpp", flags)


def _opencv_flags() -> list[str]:
    """The example's optional OpenCV image decoding: EFFEDGE_OPENCV_INCLUDE, else pkg-config, else skip."""
    if os.environ.get("EFFEDGE_OPENCV_INCLUDE"):
        return _include_dirs("EFFEDGE_OPENCV_INCLUDE")
    opencv = subprocess.run(["pkg-config", "--cflags", "opencv4"], capture_output=True, text=True, check=False) \
        if shutil.which("pkg-config") else None
    if opencv is None or opencv.returncode != 0:
        pytest.skip("OpenCV 4 headers not found (set EFFEDGE_OPENCV_INCLUDE, or `pkg-config --cflags opencv4`); "
                    "the example's OpenCV path not checked")
    return opencv.stdout.split()


EXAMPLE = REPO / "examples" / "cpp" / "main.cpp"


def test_cpp_example_compiles() -> None:
    """TensorRT build, images read as PPM (no OpenCV)."""
    _syntax_check(EXAMPLE, _include_dirs("EFFEDGE_TENSORRT_INCLUDE", "EFFEDGE_CUDA_INCLUDE"))


def test_cpp_example_compiles_with_opencv() -> None:
    flags = _include_dirs("EFFEDGE_TENSORRT_INCLUDE", "EFFEDGE_CUDA_INCLUDE")
    _syntax_check(EXAMPLE, flags + ["-DEFFEDGE_WITH_OPENCV", *_opencv_flags()])


def test_cpp_example_compiles_for_tensorrt_rtx() -> None:
    """-DEFFEDGE_WITH_TENSORRT_RTX=ON's build (no plugin library) against TensorRT-RTX's own headers."""
    flags = _include_dirs("EFFEDGE_TENSORRT_RTX_INCLUDE", "EFFEDGE_CUDA_INCLUDE")
    _syntax_check(EXAMPLE, flags + ["-DEFFEDGE_TENSORRT_RTX"])


def test_cpp_example_rtx_code_compiles_with_tensorrt_headers() -> None:
    """The TensorRT-RTX branch of the example uses only nvinfer1 API that full TensorRT declares too: checkable
    where TensorRT-RTX's headers are not at hand (its pip wheel ships libraries only)."""
    flags = _include_dirs("EFFEDGE_TENSORRT_INCLUDE", "EFFEDGE_CUDA_INCLUDE")
    _syntax_check(EXAMPLE, flags + ["-DEFFEDGE_TENSORRT_RTX"])


def test_deepstream_parser_library_builds(tmp_path) -> None:
    """effedge/native's CMake builds libnvds_effedge_parser.so (the core compiled in), exporting the two parse
    functions nvinfer's parse-bbox-func-name names."""
    import ctypes

    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    _include_dirs("EFFEDGE_DEEPSTREAM_INCLUDE", "EFFEDGE_TENSORRT_INCLUDE", "EFFEDGE_CUDA_INCLUDE")
    cmake_list = {name: ";".join(os.environ[variable].split(os.pathsep)) for name, variable in (
        ("DEEPSTREAM_INCLUDE", "EFFEDGE_DEEPSTREAM_INCLUDE"), ("TENSORRT_INCLUDE", "EFFEDGE_TENSORRT_INCLUDE"),
        ("CUDA_INCLUDE", "EFFEDGE_CUDA_INCLUDE"))}
    configure = subprocess.run(["cmake", "-S", str(NATIVE), "-B", str(tmp_path), "-DCMAKE_BUILD_TYPE=Release",
                                *(f"-D{name}={value}" for name, value in cmake_list.items())],
                               capture_output=True, text=True, check=False)
    assert configure.returncode == 0, configure.stderr
    build = subprocess.run(["cmake", "--build", str(tmp_path)], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    parser = ctypes.CDLL(str(tmp_path / "libnvds_effedge_parser.so"))
    assert hasattr(parser, "NvDsInferParseEffedgeNms") and hasattr(parser, "NvDsInferParseEffedgeRaw")
