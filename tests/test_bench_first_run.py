"""bench reports the first run (loading, and the first inference after it) apart from the steady state, for
every backend: here ONNX Runtime on a tiny graph, timed by a controlled clock (no real timing is asserted).
TensorRT-RTX's first run (context creation with the JIT, runtime cache) is in tests/test_tensorrt_rtx_backend.py."""
import types

import pytest

from effedge.bench import harness as bench


def _identity_onnx(path):
    import onnx
    from onnx import helper

    value = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("images", "out")]
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g", value[:1], value[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_first_inference_is_reported_apart_from_the_statistics(tmp_path, monkeypatch):
    import effedge.bench.targets as targets
    from effedge.runtime.onnxruntime import OnnxRuntimeRunner

    now = [0.0]  # the clock bench_targets reads: loading takes 0.5 s, the first inference 100 ms, then 1 ms each
    monkeypatch.setattr(targets, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    activate, infer = OnnxRuntimeRunner.activate, OnnxRuntimeRunner._infer
    inferences = []

    def slow_activate(self):
        now[0] += 0.5
        activate(self)

    def timed_infer(self, feed):
        inferences.append(feed)
        now[0] += 0.100 if len(inferences) == 1 else 0.001
        return infer(self, feed)

    monkeypatch.setattr(OnnxRuntimeRunner, "activate", slow_activate)
    monkeypatch.setattr(OnnxRuntimeRunner, "_infer", timed_infer)
    settings = bench.BenchSettings(warmup_s=0, min_iterations=3, min_duration_s=0, energy=False)
    result = targets.bench_one(_identity_onnx(tmp_path / "m.onnx"), {}, "onnxruntime", settings)
    assert len(inferences) == 1 + 3 and result["iterations"] == 3
    assert result["first_run"] == {"load_seconds": pytest.approx(0.5), "first_iteration_ms": pytest.approx(100)}
    assert result["latency_ms"]["max"] == pytest.approx(1)  # the slow first inference is not in the statistics


def test_the_first_run_line():
    from effedge.bench.targets import first_run_text

    assert first_run_text({"load_seconds": 0.5, "first_iteration_ms": 100.0}) == \
        "load 0.50 s, first inference 100.0 ms"
    rtx = {"load_seconds": 2.5, "deserialize_seconds": 0.1, "context_seconds": 2.25, "runtime_cache": "none",
           "first_iteration_ms": 12.34}
    assert first_run_text(rtx) == ("load 2.50 s (execution context and JIT 2.25 s, runtime cache none), first "
                                   "inference 12.3 ms")
