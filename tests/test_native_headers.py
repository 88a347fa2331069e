"""Syntax-check the C++ that needs NVIDIA headers (DeepStream parser, examples/cpp) against headers given by env.

The headers are not in this repository (nor in CI); point the variables at include directories to run the checks:
EFFEDGE_DEEPSTREAM_INCLUDE (DeepStream's includes/), EFFEDGE_TENSORRT_INCLUDE (TensorRT's include/, which must
hold NvOnnxParser.h for the DeepStream check), EFFEDGE_CUDA_INCLUDE (one or more directories, os.pathsep-separated,
with cuda_runtime_api.h and crt/). NVIDIA's own headers are included as system headers so that only effedge's code
is held to -Wall -Werror.
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


def test_cpp_example_compiles() -> None:
    flags = _include_dirs("EFFEDGE_TENSORRT_INCLUDE", "EFFEDGE_CUDA_INCLUDE")
    opencv = subprocess.run(["pkg-config", "--cflags", "opencv4"], capture_output=True, text=True, check=False) \
        if shutil.which("pkg-config") else None
    if opencv is None or opencv.returncode != 0:
        pytest.skip("OpenCV 4 headers not found (`pkg-config --cflags opencv4` failed); examples/cpp not checked")
    _syntax_check(REPO / "examples" / "cpp" / "main.cpp", flags + opencv.stdout.split())
