"""Everything pisa-eval writes beside its metrics, in one folder, and the index that lists it.

From the ground truth and the dumped detections: the per-class precision-recall curves
(coco_metrics.py), the confusion matrix (counts and row-normalised, PNG and JSON), COCO's error
breakdown (PNG and JSON) and the worst images (error_analysis.py), and a few sample predictions; the
images are drawn ground truth left, predictions right, by mmdet's visualizer (predictions.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from pisa_train.files import write_json_atomically
from pisa_train.results import coco_metrics, error_analysis, predictions

EVALUATION_INDEX = "evaluation.json"  # in the work dir: what the last pisa-eval found, and where it put it
SAMPLE_IMAGES = 6  # the first images of the test set, drawn as they are predicted


def draw_images(entries: list[dict], ground_truth: dict, detections: list[dict] | None, classes, image_folder: Path,
                out_dir: Path, score_thr: float) -> list[str | None]:
    """Each image of ``entries`` (``image_id``, ``file_name``) drawn into ``out_dir``, ground truth left and
    predictions right (``detections`` None: the ground truth alone): for each, the file written, relative
    to ``out_dir.parent``, or None for an image that is not on disk."""
    class_of_category = {category_id: k for k, category_id in enumerate(
        error_analysis.category_ids(ground_truth["categories"], classes))}
    visualizer = predictions.prediction_visualizer(classes)
    written = []
    for rank, entry in enumerate(entries, start=1):
        image = image_folder / entry["file_name"]
        if not image.is_file():
            written.append(None)
            continue
        truth = [a for a in ground_truth["annotations"] if a["image_id"] == entry["image_id"]]
        found = [d for d in detections or () if d["image_id"] == entry["image_id"]]
        out = out_dir / f"{rank:02d}_{Path(entry['file_name']).stem}.jpg"
        predictions.draw_predictions(visualizer, image, predictions.coco_data_sample(truth, found, class_of_category),
                                     out, score_thr, with_ground_truth=True, with_predictions=detections is not None)
        written.append(out.relative_to(out_dir.parent).as_posix())
    return written


def analyse_evaluation(evaluation, ground_truth_file: str, detections_file: str, classes, image_folder: str | Path,
                       out_dir: str | Path, score_thr: float, worst: int, samples: int) -> dict:
    """Write the analyses into ``out_dir``; return what was written (paths relative to ``out_dir``) and found."""
    out_dir = Path(out_dir)
    ground_truth = json.loads(Path(ground_truth_file).read_text())
    detections = json.loads(Path(detections_file).read_text())
    classes = list(classes) if classes else [category["name"] for category in ground_truth["categories"]]
    curves = coco_metrics.plot_precision_recall_curves(evaluation, out_dir / "pr_curves")
    matrix = error_analysis.confusion_matrix(ground_truth, detections, classes, score_thr)
    write_json_atomically(out_dir / "confusion_matrix.json", matrix.to_json())
    error_analysis.plot_confusion_matrix(matrix, out_dir / "confusion_matrix.png", normalised=False)
    error_analysis.plot_confusion_matrix(matrix, out_dir / "confusion_matrix_normalised.png", normalised=True)
    breakdown = error_analysis.error_breakdown(ground_truth, detections, classes)
    write_json_atomically(out_dir / "error_breakdown.json", breakdown)
    error_analysis.plot_error_breakdown(breakdown, out_dir / "error_breakdown.png")
    errors = error_analysis.image_errors(ground_truth, detections, classes, score_thr)
    worst_images = [entry for entry in errors if entry["missed"] + entry["false"] > 0][:worst]
    image_folder = Path(image_folder)
    return {
        "analysis_dir": str(out_dir.resolve()),
        "pr_curves": [path.relative_to(out_dir).as_posix() for path in curves],
        "confusion_matrix": ["confusion_matrix.png", "confusion_matrix_normalised.png", "confusion_matrix.json"],
        "error_breakdown": ["error_breakdown.png", "error_breakdown.json"],
        "error_breakdown_ap": breakdown["ap"], "gain_if_fixed": breakdown["gain_if_fixed"],
        "score_thr": score_thr,
        "worst_images": [{**entry, "drawn": drawn} for entry, drawn in zip(
            worst_images, draw_images(worst_images, ground_truth, detections, classes, image_folder,
                                      out_dir / "worst_images", score_thr))],
        "sample_predictions": [drawn for drawn in draw_images(
            [{"image_id": image["id"], "file_name": image["file_name"]} for image in ground_truth["images"][:samples]],
            ground_truth, detections, classes, image_folder, out_dir / "sample_predictions", score_thr) if drawn],
    }


def evaluate_and_analyse(ground_truth_file: str, detections_prefix: str, iou_types, backend: str, classes,
                         image_folder, analysis_dir: str | Path, score_thr: float, worst: int, **context) -> dict:
    """The COCO metrics of the detections dumped as ``detections_prefix`` + ``.bbox.json`` (and ``.segm.json``
    when ``iou_types`` has 'segm'), per class too, and the analyses of the boxes (written into
    ``analysis_dir``), as one record: ``{"bbox": ..., "per_class": ..., ["segm": ..., "per_class_segm": ...,]
    **context, "analysis": ...}``."""
    detections = f"{detections_prefix}.bbox.json"
    evaluation = coco_metrics.evaluate_bbox(ground_truth_file, detections, backend, classes=classes)
    record = {"bbox": coco_metrics.summary_from_stats(evaluation.stats),
              "per_class": coco_metrics.per_class_ap(evaluation)}
    if "segm" in iou_types:
        masks = coco_metrics.evaluate_bbox(ground_truth_file, f"{detections_prefix}.segm.json", backend,
                                           classes=classes, iou_type="segm")
        record.update(segm=coco_metrics.summary_from_stats(masks.stats), per_class_segm=coco_metrics.per_class_ap(masks))
    analysis = analyse_evaluation(evaluation, ground_truth_file, detections, classes, image_folder or ".",
                                  analysis_dir, score_thr, worst, SAMPLE_IMAGES)
    return {**record, **context, "analysis": analysis}
