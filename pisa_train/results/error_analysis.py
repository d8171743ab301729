"""What a detector gets wrong: a confusion matrix, COCO's error breakdown, and the images it fails on most.

All three read the ground truth (a COCO annotation file, or its dict) and the detections pisa-eval
dumped (COCO's result format), for the config's classes only. Like the metrics (coco_metrics.py), they
match against annotations numbered 1..N where the file's ids are ones COCO matching cannot use (id 0
reads as "unmatched"; data/coco_annotations.py).

* The confusion matrix is over the classes plus background, at IoU 0.5 and a score threshold:
  detections scoring at least the threshold are matched to ground-truth boxes one to one, whatever
  their classes, by faster-coco-eval's COCO matching (``PreviewResults`` with ``useCats=False``:
  highest score first, each to the unmatched box it overlaps most). Row = the ground truth's class,
  column = the detection's; an unmatched box counts in the background column (missed), an unmatched
  detection in the background row (a false detection). Crowd boxes are neither: a detection on one is
  not counted, as COCO does. faster-coco-eval's own ``compute_confusion_matrix`` puts both kinds of
  errors in the class's row, which reads wrongly as "class -> background"; so the counting is done here,
  from its matches.
* The error breakdown is COCO's ``analyze()`` (Hoiem et al.'s analysis as the COCO detection
  evaluation page defines it; mmdet ships it as tools/analysis_tools/coco_error_analysis.py, a script,
  not an importable module, on pycocotools with a 48-process pool): precision-recall at IoU .75 (C75)
  and .50 (C50); at IoU .10, localisation errors forgiven (Loc); then confusions with classes of the
  same supercategory forgiven (Sim), with any class (Oth); then every false detection removed (BG);
  then every missed object found (FN, AP 1). Each level forgives more, so each AP is at least the one
  before, and the step from one level to the next is how much AP fixing that kind of error would add.
  It runs on faster-coco-eval's COCOeval (the same numbers as pycocotools', tests/test_coco_evaluation.py).
* The worst images are those with the most missed and false boxes (class-aware matching at IoU 0.5,
  detections scoring at least the threshold).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pisa_train.data.coco_annotations import load_annotation_file, with_usable_annotation_ids
from pisa_train.errors import DataError
from pisa_train.results.figure_text import literal_text

IOU_MATCH = 0.5
BACKGROUND = "background"
# COCO analyze()'s levels, from the strictest, and the error that each step after the first forgives.
BREAKDOWN_LEVELS = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
FIXED_BY_STEP = {"C50": "localisation finer than IoU 0.75 (C75 -> C50)",
                 "Loc": "localisation (IoU 0.1 to 0.5)",
                 "Sim": "confusion with a class of the same supercategory",
                 "Oth": "confusion with another class",
                 "BG": "false detections on background",
                 "FN": "missed objects"}


def load_ground_truth_and_detections(ground_truth, detections):
    """faster-coco-eval COCO objects for a ground-truth file (or dict) and detections (file or list);
    the ground truth's annotation ids renumbered where COCO matching cannot use them."""
    from faster_coco_eval import COCO

    if isinstance(ground_truth, (str, Path)):
        ground_truth = load_annotation_file(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(with_usable_annotation_ids(ground_truth))
        gt.createIndex()
        if isinstance(detections, (str, Path)):
            detections = json.loads(Path(detections).read_text())
        if detections:
            dt = gt.loadRes(copy.deepcopy(list(detections)))
        else:  # loadRes refuses an empty list
            dt = COCO()
            dt.dataset = {"images": gt.dataset.get("images", []), "categories": gt.dataset.get("categories", []),
                          "annotations": []}
            dt.createIndex()
    return gt, dt


def category_ids(categories, classes) -> list[int]:
    """The ids of ``classes`` (names) among ``categories`` (the ground truth's), in the order of ``classes``."""
    by_name = {category["name"]: category["id"] for category in categories}
    missing = [name for name in classes if name not in by_name]
    if missing:
        raise DataError(f"the config's classes {missing} are not categories of the ground truth ({sorted(by_name)}); "
                        f"evaluate with the annotation file the model was trained for")
    return [by_name[name] for name in classes]


def _matched(gt, dt, score_thr: float, same_class: bool):
    """faster-coco-eval's one-to-one matches at IoU 0.5: copies of the ground truth and detections
    (scoring at least ``score_thr``) whose annotations carry ``dt_id`` / ``gt_id`` when matched."""
    from faster_coco_eval.extra import PreviewResults

    with contextlib.redirect_stdout(io.StringIO()):
        matching = PreviewResults(gt, dt, iouType="bbox", min_score=score_thr, iou_tresh=IOU_MATCH,
                                  useCats=same_class)
    return matching.cocoGt, matching.cocoDt


@dataclass(frozen=True)
class ConfusionMatrix:
    classes: tuple[str, ...]  # rows and columns 0..K-1; index K is the background
    counts: np.ndarray  # (K+1) x (K+1): [ground truth's class, detection's class]
    score_thr: float
    iou_thr: float = IOU_MATCH

    @property
    def labels(self) -> list[str]:
        return [*self.classes, BACKGROUND]

    def row_normalised(self) -> np.ndarray:
        """Each row divided by its sum: where the boxes of a class went (rows without boxes stay 0)."""
        totals = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, totals, out=np.zeros(self.counts.shape), where=totals > 0)

    def to_json(self) -> dict:
        return {"classes": self.labels, "score_thr": self.score_thr, "iou_thr": self.iou_thr,
                "rows": "ground truth", "columns": "prediction", "counts": self.counts.astype(int).tolist()}


def confusion_matrix(ground_truth, detections, classes, score_thr: float) -> ConfusionMatrix:
    gt, dt = load_ground_truth_and_detections(ground_truth, detections)
    ids = category_ids(gt.cats.values(), classes)
    index = {category_id: k for k, category_id in enumerate(ids)}
    background = len(ids)
    counts = np.zeros((background + 1, background + 1), dtype=np.int64)
    if not dt.anns:
        matched_gt, matched_dt = gt, dt
    else:
        matched_gt, matched_dt = _matched(gt, dt, score_thr, same_class=False)
    for annotation in matched_gt.anns.values():
        if annotation.get("iscrowd") or annotation["category_id"] not in index:
            continue
        partner = matched_dt.anns.get(annotation["dt_id"]) if annotation.get("dt_id") is not None else None
        column = index.get(partner["category_id"], background) if partner is not None else background
        counts[index[annotation["category_id"]], column] += 1
    for detection in matched_dt.anns.values():
        if detection["category_id"] not in index or detection.get("score", 1.0) < score_thr:
            continue
        if detection.get("gt_id") is None:
            counts[background, index[detection["category_id"]]] += 1
    return ConfusionMatrix(tuple(classes), counts, score_thr)


@literal_text
def plot_confusion_matrix(matrix: ConfusionMatrix, path: str | Path, normalised: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = matrix.row_normalised() if normalised else matrix.counts
    size = len(matrix.labels)
    side = min(max(4.0, 0.55 * size + 2.5), 24.0)
    figure, axes = plt.subplots(figsize=(side + 1.5, side), dpi=100)
    image = axes.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else max(int(values.max()), 1))
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(size), matrix.labels, rotation=45, ha="right")
    axes.set_yticks(range(size), matrix.labels)
    axes.set(xlabel="prediction", ylabel="ground truth",
             title=f"confusion matrix{' (rows normalised)' if normalised else ''}, IoU {matrix.iou_thr}, "
                   f"score >= {matrix.score_thr}")
    if size <= 30:  # numbers in the cells while they are readable
        for row in range(size):
            for column in range(size):
                value = values[row, column]
                text = f"{value:.2f}" if normalised else f"{int(value)}"
                axes.text(column, row, text, ha="center", va="center", fontsize=8,
                          color="white" if value > (0.5 if normalised else values.max() / 2) else "black")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _evaluate(gt, dt, category_ids_, iou_thrs, image_ids=None) -> np.ndarray:
    """faster-coco-eval's precision [iou, recall, class] at the given IoUs, all areas, 100 detections."""
    from faster_coco_eval import COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval_faster(gt, dt, "bbox")
        evaluation.params.catIds = list(category_ids_)
        if image_ids is not None:
            evaluation.params.imgIds = sorted(image_ids)
        evaluation.params.iouThrs = np.array(iou_thrs, dtype=float)
        evaluation.params.maxDets = [100]
        evaluation.params.areaRng = [[0, 1e10]]
        evaluation.params.areaRngLbl = ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation.eval["precision"][:, :, :, 0, 0]


def _forgiving_confusion(gt, dt, category_id: int, confusable: set[int]) -> np.ndarray:
    """Precision of one class at IoU 0.1 when its detections on boxes of the ``confusable`` classes
    are not counted as false (those boxes become crowd boxes of this class, as COCO's analyze() does)."""
    from faster_coco_eval import COCO

    own = [a for a in dt.dataset["annotations"] if a["category_id"] == category_id]
    images = {a["image_id"] for a in own} | {a["image_id"] for a in gt.dataset["annotations"]
                                             if a["category_id"] == category_id}
    forgiving = copy.deepcopy(gt.dataset)
    for annotation in forgiving["annotations"]:
        if annotation["category_id"] in confusable:
            annotation.update(category_id=category_id, iscrowd=1, ignore=1)
    with contextlib.redirect_stdout(io.StringIO()):
        gt_forgiving = COCO()
        gt_forgiving.dataset = forgiving
        gt_forgiving.createIndex()
        dt_own = COCO()
        dt_own.dataset = {"images": forgiving.get("images", []), "categories": forgiving["categories"],
                          "annotations": copy.deepcopy(own)}
        dt_own.createIndex()
    return _evaluate(gt_forgiving, dt_own, [category_id], [0.1], images)[0, :, 0]


def error_breakdown(ground_truth, detections, classes) -> dict:
    """COCO's analyze() for the classes: AP at each level (the mean over classes with ground truth),
    per class, and the AP that fixing each kind of error would add."""
    gt, dt = load_ground_truth_and_detections(ground_truth, detections)
    ids = category_ids(gt.cats.values(), classes)
    precision = np.zeros((len(BREAKDOWN_LEVELS), 101, len(ids)))
    precision[:3] = _evaluate(gt, dt, ids, [0.75, 0.5, 0.1])
    supercategory = {category_id: gt.cats[category_id].get("supercategory") for category_id in ids}
    with_truth = [k for k, category_id in enumerate(ids) if gt.getAnnIds(catIds=[category_id], iscrowd=False)]
    for k, category_id in enumerate(ids):
        if k not in with_truth:
            continue
        similar = {other for other in gt.cats if other != category_id and supercategory[category_id] is not None
                   and gt.cats[other].get("supercategory") == supercategory[category_id]}
        precision[3, :, k] = _forgiving_confusion(gt, dt, category_id, similar)
        precision[4, :, k] = _forgiving_confusion(gt, dt, category_id, set(gt.cats) - {category_id})
    precision = np.maximum(precision, 0)  # -1: no ground truth (those classes are left out below)
    precision[5] = precision[4] > 0
    precision[6] = 1.0
    per_class = {name: {level: float(precision[i, :, k].mean()) for i, level in enumerate(BREAKDOWN_LEVELS)}
                 for k, name in enumerate(classes) if k in with_truth}
    ap = {level: float(np.mean([per_class[name][level] for name in per_class])) if per_class else 0.0
          for level in BREAKDOWN_LEVELS}
    gains = {FIXED_BY_STEP[level]: ap[level] - ap[previous]
             for previous, level in zip(BREAKDOWN_LEVELS, BREAKDOWN_LEVELS[1:])}
    recall = np.linspace(0, 1, 101)
    curves = {level: precision[i][:, with_truth].mean(axis=1).tolist() if with_truth else [0.0] * 101
              for i, level in enumerate(BREAKDOWN_LEVELS)}
    return {"definition": "COCO analyze(): PR at IoU .75, .50, .10 (Loc), similar-class confusions forgiven (Sim), "
                          "all confusions forgiven (Oth), false detections removed (BG), missed objects found (FN); "
                          "all areas, 100 detections per image",
            "levels": list(BREAKDOWN_LEVELS), "ap": ap, "gain_if_fixed": gains, "per_class": per_class,
            "classes_without_ground_truth": [name for k, name in enumerate(classes) if k not in with_truth],
            "recall": recall.tolist(), "precision": curves}


@literal_text
def plot_error_breakdown(breakdown: dict, path: str | Path) -> Path:
    """COCO's analyze() figure: the area under each level's precision-recall curve, labelled with its AP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = ("#ffffff", "#31a354", "#74c476", "#c6dbef", "#6baed6", "#fd8d3c", "#d73027")
    figure, axes = plt.subplots(figsize=(7, 5), dpi=100)
    recall = breakdown["recall"]
    for level, colour in reversed(list(zip(BREAKDOWN_LEVELS, colours))):
        axes.fill_between(recall, breakdown["precision"][level], color=colour, edgecolor="#555555", linewidth=0.5,
                          label=f"[{breakdown['ap'][level]:.3f}] {level}")
    handles, labels = axes.get_legend_handles_labels()
    axes.legend(handles[::-1], labels[::-1], loc="lower left", fontsize="small")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision",
             title="error breakdown (COCO analyze), all classes")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def image_errors(ground_truth, detections, classes, score_thr: float) -> list[dict]:
    """Per image: its missed boxes and false detections (class-aware, IoU 0.5, score >= score_thr),
    most errors first; ties in image order."""
    gt, dt = load_ground_truth_and_detections(ground_truth, detections)
    ids = set(category_ids(gt.cats.values(), classes))
    matched_gt, matched_dt = _matched(gt, dt, score_thr, same_class=True) if dt.anns else (gt, dt)
    errors = {image_id: {"image_id": image_id, "file_name": image["file_name"], "missed": 0, "false": 0}
              for image_id, image in gt.imgs.items()}
    for annotation in matched_gt.anns.values():
        if annotation["category_id"] in ids and not annotation.get("iscrowd") and annotation.get("dt_id") is None:
            errors[annotation["image_id"]]["missed"] += 1
    for detection in matched_dt.anns.values():
        if detection["category_id"] in ids and detection.get("gt_id") is None \
                and detection.get("score", 1.0) >= score_thr:
            errors[detection["image_id"]]["false"] += 1
    return sorted(errors.values(), key=lambda e: (-(e["missed"] + e["false"]), e["image_id"]))
