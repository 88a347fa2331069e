"""TensorRT-RTX runner: the TensorRT runner on ``tensorrt_rtx``, plus what TensorRT-RTX adds.

TensorRT-RTX engines are built ahead of time for compute capabilities; the kernels for the GPU at hand are
compiled just in time when the execution context is created. An ``IRuntimeCache`` keeps them: the runner
loads ``<engine>.runtime.cache`` beside the engine when present and writes it back (atomically) when it is
done, so later starts skip most of the compilation. ``startup`` records the context creation time (the JIT)
and what happened to the cache. Before deserializing, ``Runtime.get_engine_validity`` says whether the plan can
run here at all. Tests run it against the real API surface of the installed TensorRT-RTX
(tests/test_tensorrt_rtx_backend.py).
"""
from __future__ import annotations

from pathlib import Path

from effedge.io import atomic_write
from effedge.runtime.tensorrt import TensorRTRunner
from effedge.engine.capabilities import import_trt
from effedge.errors import EffedgeError

RUNTIME_CACHE_SUFFIX = ".runtime.cache"

# What to do about each EngineInvalidityDiagnostics flag (by member name).
_DIAGNOSTIC_FIXES = {
    "VERSION_MISMATCH": "rebuild it with this TensorRT-RTX",
    "UNSUPPORTED_CC": "rebuild it for this GPU (effedge build MODEL.onnx --backend tensorrt-rtx --compute-capability "
                      "X.Y, with this GPU's compute capability, e.g. 8.6)",
    "OLD_CUDA_DRIVER": "update the NVIDIA driver",
    "OLD_CUDA_RUNTIME": "update the CUDA runtime",
    "INSUFFICIENT_GPU_MEMORY": "free GPU memory",
    "MALFORMED_ENGINE": "the file is damaged: rebuild it",
    "CUDA_ERROR": "CUDA failed while checking (see the log above)",
}


def runtime_cache_path(engine_path: Path) -> Path:
    """``model.fp16.engine`` -> ``model.fp16.engine.runtime.cache`` (beside the engine)."""
    return engine_path.with_name(engine_path.name + RUNTIME_CACHE_SUFFIX)


class TensorRTRTXRunner(TensorRTRunner):
    """Runs a TensorRT-RTX engine; ``startup["runtime_cache"]`` is "loaded", "rejected" (made for another GPU,
    driver or version, or damaged: compiled again and replaced) or "none"."""

    name = "tensorrt-rtx"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.runtime_config = self.runtime_cache = None

    def _import_module(self):
        return import_trt("tensorrt-rtx")

    def _check_plan(self, data: bytes) -> None:
        validity, diagnostics = self.runtime.get_engine_validity(data)
        if validity == self.trt.EngineValidity.INVALID:
            flags = [name for name, member in self.trt.EngineInvalidityDiagnostics.__members__.items()
                     if int(diagnostics) & int(member)]
            why = (f"{self.caps.name} reports {', '.join(flags)}; "
                   + "; ".join(_DIAGNOSTIC_FIXES.get(flag, flag) for flag in flags)
                   if flags else f"{self.caps.name} gives no reason (see its log above)")
            raise EffedgeError(f"{self.engine_path.name} cannot run on this machine: {why}")
        if validity == self.trt.EngineValidity.SUBOPTIMAL:
            self.notes.append(f"{self.caps.name} says {self.engine_path.name} runs here but not at its best; "
                              "rebuild it for this GPU (effedge build --backend tensorrt-rtx)")

    def _create_context(self):
        config = self.engine.create_runtime_config()
        cache = config.create_runtime_cache()
        path = runtime_cache_path(self.engine_path)
        state = "none"
        if path.is_file():
            if cache.deserialize(path.read_bytes()):
                state = "loaded"
            else:
                state = "rejected"
                self.notes.append(f"the runtime cache {path.name} was made for another GPU, driver or TensorRT-RTX "
                                  "(or is damaged): the kernels are compiled again and the cache replaced")
        if config.set_runtime_cache(cache):
            self.runtime_config, self.runtime_cache = config, cache
        else:
            state = "unavailable"
            self.notes.append(f"{self.caps.name} did not accept a runtime cache: the kernels are compiled at every "
                              "start")
        self.startup["runtime_cache"] = state
        return self.engine.create_execution_context(runtime_config=config)

    def deactivate(self) -> None:
        if self.context is not None and self.runtime_cache is not None:
            self._save_runtime_cache()
        super().deactivate()
        self.runtime_config = self.runtime_cache = None

    def _save_runtime_cache(self) -> None:
        """Keep the compiled kernels for the next start (an empty serialization holds none: nothing to keep)."""
        blob = bytes(self.runtime_cache.serialize())
        if not blob:
            return
        path = runtime_cache_path(self.engine_path)
        try:
            atomic_write(path, blob)
        except OSError as exc:  # e.g. a read-only model folder: the run itself succeeded
            self.notes.append(f"could not save the runtime cache {path}: {exc.strerror or exc}; the next start "
                              "compiles the kernels again")
