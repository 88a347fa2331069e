"""effedge detect, effedge classify, effedge eval: run a compiled model on images; COCO mAP or top-1/top-5."""
from __future__ import annotations

import click

from effedge.cli.main import cli
from effedge.errors import EffedgeError
from effedge.cli.options import InputFile, print_json, progress, rich_progress, table, threshold


BACKEND = click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "tensorrt-rtx"]),
                       help="Backend [default: onnxruntime for .onnx; for an engine, the one build.json says built it].")
IMAGES_HELP = ("IMAGES: image files, folders (their own files; --recursive adds subfolders) and globs, quoted globs "
               "expanded by effedge ('calib/*.png', 'photos/**/*.jpg'). Other files are skipped, one line each.")


@cli.command(epilog=IMAGES_HELP)
@click.argument("model", type=InputFile("model"))
@click.argument("images", nargs=-1, required=True)
@click.option("--recursive", "-r", is_flag=True, help="Include the images in subfolders of a folder (default: not "
              "recursive, the folder's own files only).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one per line (line i = class i) [default: build.json's, COCO for a 90-class "
              "detector].")
@click.option("--strict", is_flag=True, help="Exit non-zero when any image cannot be read (default: only when none "
              "can).")
@click.option("--out", type=click.Path(file_okay=False), default="runs/detect", show_default=True,
              help="Folder for annotated images and detections.json.")
@click.option("--score-threshold", type=threshold(zero_ok=True, one_ok=False), default=0.3, show_default=True, help="Score threshold.")
@click.option("--iou-threshold", type=threshold(zero_ok=False, one_ok=True), default=0.5, show_default=True,
              help="NMS IoU threshold (graphs without an NMS tail).")
@click.option("--json", "as_json", is_flag=True, help="Print the detections as JSON.")
@BACKEND
def detect(model, images, recursive, labels_file, strict, out, score_threshold, iou_threshold, as_json,
           backend) -> None:
    """Detect objects in IMAGES with MODEL (an engine or ONNX file) and draw them.

    \b
    Examples:
      effedge detect runs/d0-fp16-onnxruntime-…/model.fp16.onnx street.jpg park.png
      effedge detect model.int8.engine photos/ --recursive --score-threshold 0.5 --out annotated
      effedge detect model.fp16.onnx 'calib/*.png' --labels names.txt
    """
    from collections import Counter
    from pathlib import Path

    from effedge.io import write_json
    from effedge.runtime.detector import Detector, draw
    from effedge.runtime.images import find_inputs

    inputs = find_inputs(images, recursive=recursive)
    for name, reason in inputs.skipped:
        progress(f"skipped {name}: {reason}")
    with Detector(model, score_threshold=score_threshold, iou_threshold=iou_threshold,
                  labels_file=labels_file, backend=backend) as detector:
        for note in detector.warnings:
            progress(f"warning: {note}")
        results = detector.detect_files(inputs.images, progress=rich_progress)
        labels = detector.labels
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report, taken = [], set()
    for result in (r for r in results if r.error is None):
        stem, copy = result.path.stem, 1
        while f"{stem}.jpg" in taken:  # the same name in two folders: keep both
            copy += 1
            stem = f"{result.path.stem}-{copy}"
        taken.add(f"{stem}.jpg")
        target = out_dir / f"{stem}.jpg"
        draw(result.path, result.detections, target, labels)
        report.append({"image": str(result.path), "annotated": str(target),
                       "detections": result.detections.to_list(labels)})
    write_json(out_dir / "detections.json", report)
    if as_json:
        print_json(report)
    else:
        for entry in report:
            counts = Counter(d.get("name") or str(d["class"]) for d in entry["detections"])
            what = f" ({', '.join(f'{n} {name}' for name, n in counts.most_common())})" if counts else ""
            click.echo(f"{entry['image']}: {len(entry['detections'])} detection(s){what} -> {entry['annotated']}")
    _report_failures(results, bool(report), strict)


def _report_failures(results, any_read: bool, strict: bool) -> None:
    failures = [r for r in results if r.error is not None]
    if failures:
        progress(f"{len(failures)} of {len(results)} image(s) could not be read:")
        for failure in failures:
            progress(f"  {failure.path}: {failure.error}")
    if not any_read:
        raise EffedgeError(f"none of the {len(results)} image(s) could be read")
    if failures and strict:
        raise EffedgeError(f"{len(failures)} image(s) could not be read (--strict)")


@cli.command(epilog=IMAGES_HELP)
@click.argument("model", type=InputFile("model"))
@click.argument("images", nargs=-1, required=True)
@click.option("--recursive", "-r", is_flag=True, help="Include the images in subfolders of a folder (default: not "
              "recursive, the folder's own files only).")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True, help="Classes to show per image.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one per line (line i = class i) [default: build.json's, ImageNet-1k for a "
              "1000-class model].")
@click.option("--strict", is_flag=True, help="Exit non-zero when any image cannot be read (default: only when none "
              "can).")
@click.option("--json", "as_json", is_flag=True, help="Print the classes as JSON.")
@BACKEND
def classify(model, images, recursive, top_k, labels_file, strict, as_json, backend) -> None:
    """Classify IMAGES with MODEL (a classifier's engine or ONNX file): the top classes and their probabilities.

    \b
    Examples:
      effedge classify runs/b0-fp16-onnxruntime-…/model.fp16.onnx calib/chelsea.png
      effedge classify model.int8.engine photos/ --recursive --top-k 3 --json
    """
    from effedge.runtime.classifier import Classifier
    from effedge.runtime.images import find_inputs

    inputs = find_inputs(images, recursive=recursive)
    for name, reason in inputs.skipped:
        progress(f"skipped {name}: {reason}")
    with Classifier(model, backend=backend, top_k=top_k, labels=labels_file) as classifier:
        for note in classifier.warnings:
            progress(f"warning: {note}")
        results = classifier.classify_files(inputs.images, progress=rich_progress)
        report = [{"image": str(r.path), "classes": [{"class": p.class_index, "label": p.label,
                                                       "probability": round(p.probability, 6)}
                                                      for p in classifier.top(r.classes)]}
                  for r in results if r.error is None]
    if as_json:
        print_json(report)
    else:
        for entry in report:
            click.echo(f"{entry['image']}: " + ", ".join(
                f"{c['label'] or c['class']} {c['probability']:.3f}" for c in entry["classes"]))
    _report_failures(results, bool(report), strict)


@cli.command("eval")
@click.argument("model", type=InputFile("model"))
@click.option("--images", required=True, help="The annotated images: their folder (annotation file_names are "
              "relative to it), or a quoted glob such as 'val/*.png' (the annotated images among its matches); for "
              "a classifier, a folder of class-named subfolders (or the folder --labels-csv names files in).")
@click.option("--annotations", type=InputFile("json"), help="COCO instances JSON (detectors).")
@click.option("--labels-csv", type=click.Path(exists=True, dir_okay=False), help="Classifiers: 'file,label' rows (files relative to "
              "--images; label a class name or index) [default: --images holds one subfolder per class, named by "
              "its label or index].")
@click.option("--compare", "others", multiple=True, type=InputFile("model"),
              help="More models (e.g. other precisions) to evaluate into the same table; repeat the option.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one per line (line i = class i), matched to the annotation file's category names.")
@click.option("--strict", is_flag=True, help="Exit non-zero when any annotated image cannot be read (default: such "
              "images are left out and listed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(model, images, annotations, labels_csv, others, labels_file, strict, as_json) -> None:
    """COCO mAP of a detector, or top-1/top-5 accuracy of a classifier, MODEL (engine or ONNX), on labelled images.

    \b
    Head classes map onto the annotation file's categories by COCO category id (a COCO head), by name
    (the file's category names are among the model's class names) or as class + 1; the output says which.
    \b
    Examples:
      effedge eval runs/d0-fp32-…/model.fp32.onnx --images val/images --annotations val/instances.json
      effedge eval model.fp32.onnx --compare model.fp16.onnx --compare model.int8.onnx --images … --annotations …
      effedge eval runs/b0-…/model.fp16.onnx --images imagenet/val        (val/<label or index>/*.JPEG)
      effedge eval model.int8.onnx --images photos --labels-csv photos/labels.csv
    """
    from pathlib import Path

    if annotations is None:
        return _eval_classifiers((model, *others), images, labels_csv, labels_file, strict, as_json)
    if labels_csv is not None:
        raise EffedgeError("--labels-csv labels a classifier's images; a detector takes --annotations (COCO JSON)")

    from effedge.evaluate.coco import EVAL_SCORE_THRESHOLD, METRICS, evaluate
    from effedge.runtime.detector import Detector
    from effedge.runtime.images import find_inputs

    if Path(images).expanduser().is_dir():
        image_set = Path(images).expanduser()
    else:
        image_set = find_inputs([images]).images
    rows = []
    for path in (model, *others):
        progress(f"evaluating {path}")
        with Detector(path, score_threshold=EVAL_SCORE_THRESHOLD, labels_file=labels_file) as detector:
            for note in detector.warnings:
                progress(f"warning: {note}")
            rows.append({"model": path, **evaluate(detector, image_set, annotations, labels=detector.labels,
                                                   progress=rich_progress)})
        progress(f"classes -> categories: by {rows[-1]['category_mapping']}")
        if rows[-1]["unnamed_categories"]:
            unnamed = rows[-1]["unnamed_categories"]
            progress(f"warning: not matched by name: the model has no class named {', '.join(unnamed[:5])}"
                     + (f" (and {len(unnamed) - 5} more)" if len(unnamed) > 5 else "")
                     + "; check --labels, or the file's category ids must be class + 1")
        for failure in rows[-1]["failed"]:
            progress(f"  left out {failure['image']}: {failure['error']}")
    if as_json:
        print_json(rows)
    else:
        table("COCO bbox evaluation", ["model", *METRICS, "images", "detections", "classes by"],
              [[r["model"], *("-" if r[m] is None else f"{r[m]:.3f}" for m in METRICS), r["images"], r["detections"], r["category_mapping"]]
               for r in rows])
    if strict and any(r["failed"] for r in rows):
        raise EffedgeError(f"{sum(len(r['failed']) for r in rows)} annotated image(s) could not be read (--strict)")


def _eval_classifiers(models, images, labels_csv, labels_file, strict, as_json) -> None:
    from effedge.evaluate.classification import evaluate_classifier, from_csv, from_folders
    from effedge.runtime.classifier import Classifier

    rows = []
    for path in models:
        progress(f"evaluating {path}")
        with Classifier(path, labels=labels_file) as classifier:
            for note in classifier.warnings:
                progress(f"warning: {note}")
            samples = (from_csv(labels_csv, images, classifier.labels, classifier.num_classes) if labels_csv else
                       from_folders(images, classifier.labels, classifier.num_classes))
            rows.append({"model": path, **evaluate_classifier(classifier, samples, progress=rich_progress)})
        for failure in rows[-1]["failed"]:
            progress(f"  left out {failure['image']}: {failure['error']}")
    if as_json:
        print_json(rows)
    else:
        table("classification", ["model", "top-1", "top-5", "images"],
              [[r["model"], f"{r['top1']:.3f}", f"{r['top5']:.3f}", r["images"]] for r in rows])
    if strict and any(r["failed"] for r in rows):
        raise EffedgeError(f"{sum(len(r['failed']) for r in rows)} labelled image(s) could not be read (--strict)")


@cli.command("demo-images")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--count", type=click.IntRange(1, 10_000), default=16, show_default=True, help="Images to write.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=3, show_default=True,
              help="Random seed (1 and 2 made the demo detector's training and validation sets).")
@click.option("--json", "as_json", is_flag=True, help="Print the folder, annotation file and count as JSON.")
def demo_images_command(out, count, seed, as_json) -> None:
    """Write OUT/images/*.png (256 px shapes: circle, square, triangle, cross) and OUT/instances.json (COCO):
    images for the demo detector, `effedge compile --weights demo`.

    \b
    Examples:
      effedge demo-images demo && effedge compile --weights demo --out runs/demo
      effedge detect runs/demo/model.fp16.onnx demo/images
      effedge eval runs/demo/model.fp16.onnx --images demo/images --annotations demo/instances.json
    """
    from effedge.demo import demo_images

    annotations = demo_images(out, count, seed=seed)
    if as_json:
        print_json({"images": str(annotations.parent / "images"), "annotations": str(annotations), "count": count})
        return
    click.echo(f"{annotations.parent / 'images'}: {count} image(s); annotations {annotations}")
