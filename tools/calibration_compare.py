#!/usr/bin/env python
"""effedge's activation ranges against ONNX Runtime's calibrators, on the same tensors.

    python tools/calibration_compare.py MODEL.sim.onnx --calib DIR [--images 36] [--every 4] [--json OUT]

The tensors are the activations effedge quantizes in MODEL (ModelOpt's Q/DQ placement). Each calibration image
is run through the fp32 model once; every full tensor goes to effedge's RangeCollector and to ONNX Runtime's
HistogramCollector (onnxruntime.quantization.calibrate). effedge's real calibration pass (calibrate(), which
histograms a strided sample of each tensor) is run too. ORT's entropy is the MXNet-style search on a signed
histogram; its default 128 bins leave a single candidate (the max) until the histogram grows, so it runs with
4096 bins (2048 a side, as TensorRT's 2048 on |x|) and 255 quantized bins (the int8 levels of a signed range). Prints, per method, the
relative difference of effedge's thresholds from ORT's (median, 90th percentile, largest).
"""
import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from effedge import qdq  # noqa: E402
from effedge.artifacts import sha256_file  # noqa: E402
from effedge.quantize.images import ImageSet  # noqa: E402
from effedge.quantize.calibrators import SAMPLE_SIZE, RangeCollector  # noqa: E402
from effedge.quantize.precision import calibrate, model_input, place_qdq  # noqa: E402

PERCENTILE = 99.99
ORT_ENTROPY_BINS = 4096
ORT_QUANTIZED_BINS = 255


def activation_tensors(model_path: Path, every: int) -> list[str]:
    import onnx

    inputs = model_input(onnx.load(str(model_path)))
    placed, _ = place_qdq(model_path, sha256_file(model_path), inputs, None, "fp16", print)
    return sorted(qdq.activation_quantizers(placed))[::every]


def collect(model_path: Path, images: ImageSet, tensors: list[str]) -> dict[str, dict[str, float]]:
    """Thresholds per tensor from effedge's collector and ORT's, fed the same full tensors."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.quantization.calibrate import HistogramCollector

    model = onnx.load(str(model_path))
    inputs = model_input(model)
    graph_outputs = {o.name for o in model.graph.output}
    graph_input = model.graph.input[0].name
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                              for t in tensors if t not in graph_outputs and t != graph_input)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fetched = [t for t in tensors if t != graph_input]
    ours = {t: RangeCollector() for t in tensors}
    ort_percentile = HistogramCollector("percentile", True, 2048, 128, PERCENTILE, "same")
    ort_entropy = HistogramCollector("entropy", True, ORT_ENTROPY_BINS, ORT_QUANTIZED_BINS, PERCENTILE, "same")
    ort_entropy_defaults = HistogramCollector("entropy", True, 128, 128, PERCENTILE, "same")
    for index, batch in enumerate(images.batches(images.calibration, inputs.size, inputs.format, inputs.batch,
                                                 inputs.preprocessing)):
        values = dict(zip(fetched, session.run(fetched, {graph_input: batch})))
        if graph_input in tensors:
            values[graph_input] = batch
        for name, value in values.items():
            flat = value.astype(np.float32).ravel()
            for start in range(0, flat.size, SAMPLE_SIZE):  # every value (the collector samples larger updates)
                ours[name].update(flat[start:start + SAMPLE_SIZE])
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # ORT's chatter
            for collector in (ort_percentile, ort_entropy, ort_entropy_defaults):
                collector.collect({name: [value.astype(np.float32)] for name, value in values.items()})
        print(f"\rimage {index + 1}/{len(images.calibration)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        results = {"ort percentile": ort_percentile.compute_collection_result(),
                   "ort entropy": ort_entropy.compute_collection_result(),
                   "ort entropy (defaults)": ort_entropy_defaults.compute_collection_result()}
    table = {}
    for name in tensors:
        row = {f"effedge {m}": ours[name].threshold(m, PERCENTILE) for m in ("max", "percentile", "entropy")}
        _, _, low, high = ort_percentile.histogram_dict[name]  # the raw (signed) min and max
        row["ort max"] = max(abs(float(low)), abs(float(high)))
        for label, result in results.items():
            row[label] = max(abs(float(result[name][0])), abs(float(result[name][1])))
        table[name] = row
    return table


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="fp32 ONNX model (model.sim.onnx of effedge export)")
    parser.add_argument("--calib", required=True, help="calibration image folder")
    parser.add_argument("--images", type=int, default=36)
    parser.add_argument("--every", type=int, default=1, help="take every Nth quantized tensor (ORT's entropy "
                        "search takes seconds per tensor)")
    parser.add_argument("--json", type=Path, help="write the per-tensor thresholds here")
    args = parser.parse_args()
    tensors = activation_tensors(args.model, args.every)
    images = ImageSet.from_folder(args.calib, count=args.images, holdout=0)
    print(f"{len(tensors)} tensors, {len(images.calibration)} images", file=sys.stderr)
    table = collect(args.model, images, tensors)
    import onnx

    source = onnx.load(str(args.model))
    inputs = model_input(source)
    for method in ("max", "percentile", "entropy"):  # effedge's real pass: a strided sample of each tensor
        ranges, _ = calibrate(source, tensors, images, inputs, method=method, percentile=PERCENTILE,
                              progress=lambda items, total, text: items)
        for name, value in ranges.items():
            table[name][f"effedge calibrate() {method}"] = value
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    column = {label: np.array([table[name][label] for name in tensors]) for label in table[tensors[0]]}
    print("| method | compared | median rel. diff | 90th pct | largest | within 1 % |")
    print("|---|---|---|---|---|---|")
    for method, reference in (("max", "ort max"), ("percentile", "ort percentile"), ("entropy", "ort entropy")):
        for ours in (f"effedge {method}", f"effedge calibrate() {method}"):
            diff = relative(column[ours], column[reference])
            print(f"| {method} | {ours} vs {reference} | {np.median(diff):.2%} | {np.percentile(diff, 90):.2%} | "
                  f"{diff.max():.2%} | {np.mean(diff <= 0.01):.0%} |")
    diff = relative(column["ort entropy (defaults)"], column["ort max"])
    print(f"| entropy | ort entropy (defaults: 128 bins) vs ort max | {np.median(diff):.2%} | "
          f"{np.percentile(diff, 90):.2%} | {diff.max():.2%} | {np.mean(diff <= 0.01):.0%} |")
    ratio = column["effedge entropy"] / column["effedge max"]
    print(f"\neffedge entropy / max: median {np.median(ratio):.3f}; "
          f"percentile / max: median {np.median(column['effedge percentile'] / column['effedge max']):.3f}")


if __name__ == "__main__":
    main()
