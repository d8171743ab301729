"""COCO evaluation of dumped detections (boxes, and masks for Mask R-CNN): the summary,
per-class AP, precision-recall curves, and the metrics as a table and as JSON.

mmdet's CocoMetric computes the six summary numbers but keeps COCOeval's
``eval['precision']`` to itself (and prints its classwise table only to the
log). pisa-eval therefore has CocoMetric dump its detections
(``test_evaluator.outfile_prefix``, with ``format_only``) and evaluates that file
here, once: with faster-coco-eval (a C++ reimplementation of COCOeval;
tests/test_coco_evaluation.py checks that its twelve summary numbers and its
precision array equal pycocotools' on generated data) or, with
``--coco-backend pycocotools``, with pycocotools, as CocoMetric would. The
numbers are those CocoMetric reports (rounded to 3 decimals in the summary),
with the per-class precision kept. A config whose ``test_evaluator.metric`` has
``'segm'`` (the Mask R-CNN configs) gets its masks evaluated the same way, from
CocoMetric's ``.segm.json``. Ground truth whose annotation ids COCOeval cannot use
(id 0, which it reads as "unmatched"; duplicates) is evaluated with the annotations
numbered 1..N (data/coco_annotations.py), whatever file the config names: --data
already points the config at such a renumbered copy, and a config that names the
file itself gets the same numbers.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from pisa_train.data.coco_annotations import load_annotation_file, with_usable_annotation_ids
from pisa_train.errors import DataError, EnvironmentProblem
from pisa_train.results.figure_text import literal_text
from pisa_train.terminal import shown

BACKENDS = ("pycocotools", "faster-coco-eval")
# The names people quote in papers, in COCOeval's stats order, with MMDetection's CocoMetric keys.
COCO_BBOX_METRICS = (
    ("AP", "coco/bbox_mAP"),
    ("AP50", "coco/bbox_mAP_50"),
    ("AP75", "coco/bbox_mAP_75"),
    ("APs", "coco/bbox_mAP_s"),
    ("APm", "coco/bbox_mAP_m"),
    ("APl", "coco/bbox_mAP_l"),
)
# What COCOeval evaluates (its iouType) that pisa-eval reports, as CocoMetric names them in `metric`.
IOU_TYPES = ("bbox", "segm")
# COCOeval's precision array: [iou threshold, recall point, class, area range, max detections];
# area range 0 is "all" and the last max-detections setting is 100.
AREA_ALL, MAX_DETS_100 = 0, -1


def coco_api(backend: str):
    """(COCO, COCOeval) classes of a backend; both take pycocotools' arguments."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as error:
            raise EnvironmentProblem(f"--coco-backend faster-coco-eval needs the faster-coco-eval package, which "
                                     f"is not importable ({error}); install it with "
                                     f"`.venv/bin/pip install faster-coco-eval`, or rerun `make setup`") from error
        return COCO, COCOeval_faster
    raise ValueError(f"unknown COCO evaluation backend {backend!r}; expected one of {BACKENDS}")


def evaluated_iou_types(metric) -> list[str]:
    """What pisa-eval evaluates for a CocoMetric ``metric`` ('bbox', or ['bbox', 'segm'])."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    return [iou_type for iou_type in IOU_TYPES if iou_type in metrics]


def evaluate_bbox(ground_truth, detections, backend: str = "pycocotools", classes=None, quiet: bool = True,
                  iou_type: str = "bbox"):
    """Run COCOeval (evaluate, accumulate, summarize) on a ground-truth file or dict and a
    detections file or list, and return the evaluation object (``stats``, ``eval['precision']``).

    ``classes`` (names) limits the evaluation to those categories, as CocoMetric limits it to
    the config's classes (a Roboflow export's box-less root category is not one of them).
    ``iou_type='segm'`` evaluates the detections' masks instead of their boxes. Annotation ids
    COCOeval cannot use are renumbered first (``ground_truth`` itself is not changed)."""
    COCO, COCOeval = coco_api(backend)
    if isinstance(ground_truth, (str, Path)):
        ground_truth = load_annotation_file(ground_truth)
    sink = io.StringIO() if quiet else None
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        gt = COCO()
        gt.dataset = with_usable_annotation_ids(ground_truth)
        gt.createIndex()
        if isinstance(detections, (str, Path)):
            detections = json.loads(Path(detections).read_text())
        dt = gt.loadRes(detections) if detections else COCO()
        if not detections:  # loadRes refuses an empty list; an empty result set is AP 0
            dt.dataset = {"images": gt.dataset.get("images", []), "categories": gt.dataset.get("categories", []),
                          "annotations": []}
            dt.createIndex()
        evaluation = COCOeval(gt, dt, iou_type)
        if classes:
            by_name = {cat["name"]: cat_id for cat_id, cat in gt.cats.items()}
            missing = [name for name in classes if name not in by_name]
            if missing:
                raise DataError(f"the config's classes {missing} are not categories of the ground truth "
                                f"({sorted(by_name)}); evaluate with the annotation file the model was trained for")
            evaluation.params.catIds = [by_name[name] for name in classes]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def class_names(evaluation) -> dict[int, str]:
    cats = evaluation.cocoGt.cats
    return {cat_id: cats[cat_id]["name"] for cat_id in evaluation.params.catIds}


def per_class_ap(evaluation) -> dict[str, dict]:
    """AP (0.50:0.95), AP50 and AP75 per class, as COCOeval's summary averages them;
    None for a class without ground truth (COCOeval marks it -1)."""
    precision = evaluation.eval["precision"]
    thresholds = list(np.round(evaluation.params.iouThrs, 2))
    names = class_names(evaluation)
    table = {}
    for k, cat_id in enumerate(evaluation.params.catIds):
        def mean_ap(p):
            valid = p[p > -1]
            return float(np.mean(valid)) if valid.size else None

        table[names[cat_id]] = {
            "AP": mean_ap(precision[:, :, k, AREA_ALL, MAX_DETS_100]),
            "AP50": mean_ap(precision[thresholds.index(0.5), :, k, AREA_ALL, MAX_DETS_100]),
            "AP75": mean_ap(precision[thresholds.index(0.75), :, k, AREA_ALL, MAX_DETS_100]),
        }
    return table


def format_per_class_table(table: dict[str, dict]) -> str:
    table = {shown(name): row for name, row in table.items()}  # escaped before padding: the columns stay aligned
    width = max([len("class"), *map(len, table)])
    lines = ["AP per class", f"{'class'.ljust(width)} |     AP |   AP50 |   AP75",
             f"{'-' * width}-+--------+--------+-------"]
    for name, row in table.items():
        values = " | ".join("   n/a" if row[k] is None else f"{row[k]:6.3f}" for k in ("AP", "AP50", "AP75"))
        lines.append(f"{name.ljust(width)} | {values}")
    return "\n".join(lines)


def file_name_for(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return safe or "class"


@literal_text
def plot_precision_recall_curves(evaluation, out_dir: str | Path) -> list[Path]:
    """One PNG per class: precision against recall at IoU 0.50, 0.75 and averaged over
    0.50:0.95 (all areas, 100 detections per image). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = evaluation.eval["precision"]
    recall = evaluation.params.recThrs
    thresholds = list(np.round(evaluation.params.iouThrs, 2))
    written = []
    for k, (cat_id, name) in enumerate(class_names(evaluation).items()):
        curves = precision[:, :, k, AREA_ALL, MAX_DETS_100]
        figure, axes = plt.subplots(figsize=(6, 5), dpi=100)
        for label, curve in (("IoU 0.50", curves[thresholds.index(0.5)]),
                             ("IoU 0.75", curves[thresholds.index(0.75)]),
                             ("IoU 0.50:0.95 (mean)", curves.mean(axis=0))):
            if (curve > -1).all():
                axes.plot(recall, curve, label=f"{label}, AP {curve.mean():.3f}")
        if not (curves > -1).all():
            axes.text(0.5, 0.5, "no ground truth of this class", ha="center", transform=axes.transAxes)
        axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
                 title=f"precision-recall: {name}")
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="lower left")
        path = out_dir / f"pr_curve_{file_name_for(name)}.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(path)
    return written


def summary_from_stats(stats) -> dict:
    """The six numbers from COCOeval's ``stats`` (its first six entries), rounded to 3
    decimals as mmdet's CocoMetric reports them; -1 (no objects of that size) stays -1."""
    return {name: round(float(stats[index]), 3) for index, (name, _) in enumerate(COCO_BBOX_METRICS)}


def format_metrics_table(summary: dict, iou_type: str = "bbox") -> str:
    names = list(summary)
    widths = [max(len(n), 6) for n in names]
    header = " | ".join(n.rjust(w) for n, w in zip(names, widths))
    rule = "-+-".join("-" * w for w in widths)
    values = " | ".join(f"{summary[n]:.3f}".rjust(w) for n, w in zip(names, widths))
    return f"COCO {iou_type} metrics\n{header}\n{rule}\n{values}"
