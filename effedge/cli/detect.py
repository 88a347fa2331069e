"""effedge detect, effedge eval: run a compiled model on images, COCO mAP."""
from __future__ import annotations

import click

from effedge.cli.main import cli
from effedge.cli.options import ImageFolder, InputFile, print_json, progress, rich_progress, table, threshold


@cli.command()
@click.argument("model", type=InputFile("model"))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default="runs/detect", show_default=True,
              help="Folder for annotated images and detections.json.")
@click.option("--score-threshold", type=threshold(zero_ok=True, one_ok=False), default=0.3, show_default=True, help="Score threshold.")
@click.option("--iou-threshold", type=threshold(zero_ok=False, one_ok=True), default=0.5, show_default=True,
              help="NMS IoU threshold (graphs without an NMS tail).")
@click.option("--json", "as_json", is_flag=True, help="Print the detections as JSON.")
def detect(model, images, out, score_threshold, iou_threshold, as_json) -> None:
    """Detect objects in IMAGES with MODEL (an engine or ONNX file) and draw them.

    \b
    Examples:
      effedge detect runs/d0-fp16-onnxruntime-…/model.fp16.onnx street.jpg park.png
      effedge detect model.int8.engine photos/*.jpg --score-threshold 0.5 --out annotated
    """
    from pathlib import Path

    from effedge.io import write_json
    from effedge.runtime.detector import Detector, draw

    out_dir = Path(out)
    with Detector(model, score_threshold=score_threshold, iou_threshold=iou_threshold) as detector:
        results = detector([Path(p) for p in images])
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for path, detections in zip(images, results):
        target = out_dir / (Path(path).stem + ".jpg")
        draw(Path(path), detections, target)
        report.append({"image": str(path), "annotated": str(target), "detections": detections.to_list()})
    write_json(out_dir / "detections.json", report)
    if as_json:
        print_json(report)
        return
    for entry in report:
        click.echo(f"{entry['image']}: {len(entry['detections'])} detection(s) -> {entry['annotated']}")


@cli.command("eval")
@click.argument("model", type=InputFile("model"))
@click.option("--images", "images_dir", required=True, type=ImageFolder(), help="Image folder.")
@click.option("--annotations", required=True, type=InputFile("json"), help="COCO instances JSON.")
@click.option("--compare", "others", multiple=True, type=InputFile("model"),
              help="More models (e.g. other precisions) to evaluate into the same table; repeat the option.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(model, images_dir, annotations, others, as_json) -> None:
    """COCO mAP of MODEL (engine or ONNX) on an annotated image folder.

    \b
    Examples:
      effedge eval runs/d0-fp32-…/model.fp32.onnx --images val/images --annotations val/instances.json
      effedge eval model.fp32.onnx --compare model.fp16.onnx --compare model.int8.onnx --images … --annotations …
    """
    from effedge.evaluate.coco import EVAL_SCORE_THRESHOLD, METRICS, evaluate
    from effedge.runtime.detector import Detector

    rows = []
    for path in (model, *others):
        progress(f"evaluating {path}")
        with Detector(path, score_threshold=EVAL_SCORE_THRESHOLD) as detector:
            rows.append({"model": path, **evaluate(detector, images_dir, annotations, progress=rich_progress)})
    if as_json:
        print_json(rows)
        return
    table("COCO bbox evaluation", ["model", *METRICS, "images", "detections"],
           [[r["model"], *(f"{r[m]:.3f}" for m in METRICS), r["images"], r["detections"]] for r in rows])
