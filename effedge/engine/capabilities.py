"""What each supported TensorRT release can do, in one table, so builders and runners ask a capability
("does this version have precision flags?") instead of comparing major numbers.

Sources: the Python bindings' own API of TensorRT 8.6.1, 10.3.0, 10.13.3.9, 11.4.0.106 and TensorRT-RTX
1.7.1.116 (the tests check effedge's calls against each), and NVIDIA's release notes for the ONNX opsets
(docs/tensorrt.md).
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from effedge.errors import BackendUnavailable, EffedgeError

#: effedge backend name -> (Python module, product name)
PRODUCTS = {"tensorrt": ("tensorrt", "TensorRT"), "tensorrt-rtx": ("tensorrt_rtx", "TensorRT-RTX")}
SUPPORTED = "TensorRT 8.5, 8.6, 10.x, 11.x or TensorRT-RTX 1.x"


@dataclass(frozen=True)
class Capabilities:
    backend: str  # "tensorrt" | "tensorrt-rtx"
    product: str  # "TensorRT" | "TensorRT-RTX"
    version: str
    series: str  # the row of the table: "8.5", "8.6", "10.x", "11.x", "RTX 1.x"
    max_onnx_opset: Optional[int]  # None: not limited by effedge (the parser names what it lacks)
    explicit_batch_flag: bool  # networks need NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    strongly_typed_flag: bool  # STRONGLY_TYPED is an opt-in network flag
    always_strongly_typed: bool  # every network follows the graph's types
    precision_flags: bool  # BuilderFlag.FP16 / INT8 exist (weakly typed networks)
    calibrators: bool  # implicit INT8 calibrators exist
    plugins: bool  # a plugin library (EfficientNMS_TRT; init_libnvinfer_plugins before parsing/deserializing)
    nms_layer: bool  # ONNX NonMaxSuppression builds and runs (INMSLayer)
    timing_cache: bool  # the timing cache changes what the builder does
    dla: bool
    compute_capability_targets: bool  # IBuilderConfig.set_compute_capability: build ahead of time, no GPU
    runtime_cache: bool  # kernels compiled just in time, kept in an IRuntimeCache
    # From 8.6: IBuilderConfig.builder_optimization_level, hardware_compatibility_level, BuilderFlag.VERSION_COMPATIBLE
    # and Runtime.engine_host_code_allowed (a version-compatible plan deserializes only with it set).
    optimization_level: bool
    hardware_compatibility: bool
    version_compatibility: bool
    output_allocator: bool  # IOutputAllocator: outputs of data-dependent shape (the INMSLayer's)
    int8_convolution: bool  # INT8 Q/DQ convolutions run as INT8 kernels (TensorRT-RTX 1.7: converted to fp32)

    @property
    def name(self) -> str:
        return f"{self.product} {self.version}"


def _parse_version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    if not match:
        raise EffedgeError(f"cannot read the TensorRT version {text!r}; install {SUPPORTED}")
    return int(match.group(1)), int(match.group(2))


def capabilities(backend: str, version: str) -> Capabilities:
    """The table row for ``backend`` at ``version``; unknown or too-old versions are refused in one line."""
    if backend not in PRODUCTS:
        raise EffedgeError(f"unknown TensorRT backend {backend!r}; use one of {', '.join(PRODUCTS)}")
    product = PRODUCTS[backend][1]
    major, minor = _parse_version(version)
    common = dict(backend=backend, product=product, version=version)
    if backend == "tensorrt-rtx":
        if major != 1:
            raise EffedgeError(f"TensorRT-RTX {version} is not supported (effedge knows 1.x); install "
                               "tensorrt-rtx==1.7.1.116")
        return Capabilities(**common, series="RTX 1.x", max_onnx_opset=None, explicit_batch_flag=False,
                            strongly_typed_flag=False, always_strongly_typed=True, precision_flags=False,
                            calibrators=False, plugins=False, nms_layer=False, timing_cache=False, dla=False,
                            compute_capability_targets=True, runtime_cache=True, optimization_level=True,
                            hardware_compatibility=True, version_compatibility=True, output_allocator=True,
                            int8_convolution=False)
    full = dict(plugins=True, nms_layer=True, timing_cache=True, dla=True, compute_capability_targets=False,
                runtime_cache=False, output_allocator=True, int8_convolution=True)
    from_86 = dict(optimization_level=True, hardware_compatibility=True, version_compatibility=True)
    trt8 = dict(max_onnx_opset=17, explicit_batch_flag=True, strongly_typed_flag=False, always_strongly_typed=False,
                precision_flags=True, calibrators=True)
    if (major, minor) == (8, 5):  # JetPack 5.1: the builder options of 8.6 do not exist yet
        return Capabilities(**common, **full, **trt8, series="8.5", optimization_level=False,
                            hardware_compatibility=False, version_compatibility=False)
    if major == 8 and minor >= 6:
        return Capabilities(**common, **full, **trt8, **from_86, series="8.6")
    if major == 10:
        return Capabilities(**common, **full, **from_86, series="10.x", max_onnx_opset=20, explicit_batch_flag=False,
                            strongly_typed_flag=True, always_strongly_typed=False, precision_flags=True,
                            calibrators=True)
    if major == 11:
        return Capabilities(**common, **full, **from_86, series="11.x", max_onnx_opset=22, explicit_batch_flag=False,
                            strongly_typed_flag=False, always_strongly_typed=True, precision_flags=False,
                            calibrators=False)
    too = "too old" if (major, minor) < (8, 5) else "not supported"
    raise EffedgeError(f"TensorRT {version} is {too}; effedge builds with {SUPPORTED} (JetPack 5.1 has 8.5, "
                       "JetPack 6.0 8.6, JetPack 6.1+ 10.x)")


def import_trt(backend: str = "tensorrt") -> ModuleType:
    """The Python module of ``backend`` ("tensorrt" or "tensorrt-rtx"), or one line saying how to install it."""
    module_name, product = PRODUCTS[backend]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        how = ("pip install 'effedge[rtx]' (TensorRT-RTX builds engines for RTX GPUs, also on a CPU-only machine)"
               if backend == "tensorrt-rtx" else
               "on Jetson it comes with JetPack, on desktop from NVIDIA's index (pip install tensorrt)")
        # No backend advice here: which alternative exists depends on the command (compile's choose_backend adds it).
        raise BackendUnavailable(f"{product} is not installed (Python module '{module_name}'): {how}") from exc


def capabilities_of(trt: ModuleType) -> Capabilities:
    """The capabilities of an imported TensorRT or TensorRT-RTX module."""
    backend = "tensorrt-rtx" if trt.__name__.split(".")[0].startswith("tensorrt_rtx") else "tensorrt"
    return capabilities(backend, trt.__version__)


def compute_capability_targets(trt: ModuleType) -> dict[str, object]:
    """{"8.6": trt.ComputeCapability.SM86, …}: the targets this TensorRT-RTX can build for."""
    targets = {}
    for name, member in trt.ComputeCapability.__members__.items():
        match = re.fullmatch(r"SM(\d+)(\d)", name)
        if match:
            targets[f"{match.group(1)}.{match.group(2)}"] = member
    return targets
