"""A detector's predictions as pictures and as COCO result entries.

Pictures are drawn by mmdet's ``DetLocalVisualizer``, the renderer that
``pisa-eval --show-dir`` uses through mmdet's ``DetVisualizationHook``, so that
both look the same (boxes, class names, scores, mmdet's palette). With ground
truth in the data sample it draws ground truth and predictions side by side.
"""
from __future__ import annotations

from pathlib import Path

from pisa_train.results.figure_text import literal_text

VISUALIZER_NAME = "pisa-train predictions"


def prediction_visualizer(classes):
    """mmdet's visualizer, knowing the class names (and no palette: mmdet makes one per class)."""
    from mmdet.visualization import DetLocalVisualizer

    visualizer = DetLocalVisualizer.get_instance(VISUALIZER_NAME)
    visualizer.dataset_meta = {"classes": tuple(classes)}
    return visualizer


@literal_text
def draw_predictions(visualizer, image_path: str | Path, data_sample, out_path: str | Path,
                     score_thr: float, with_ground_truth: bool = False, with_predictions: bool = True) -> None:
    """``image_path`` with the predictions of ``data_sample`` scoring at least ``score_thr``
    (and, ``with_ground_truth``, its ground truth: on the left, or alone without predictions) into ``out_path``."""
    import mmcv

    image = mmcv.imread(str(image_path), channel_order="rgb")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    # mmdet keeps boxes scoring above the threshold; ours is "at least", as --score-thr says.
    visualizer.add_datasample(Path(out_path).name, image, data_sample, draw_gt=with_ground_truth,
                              draw_pred=with_predictions, pred_score_thr=score_thr - 1e-9, out_file=str(out_path))


def detections_of(result, image_id: int, score_thr: float) -> list[dict]:
    """One image's predictions as COCO result entries ([x, y, width, height] in pixels of
    the original image); ``category_id`` is the model's class index."""
    instances = result.pred_instances
    entries = []
    for box, score, label in zip(instances.bboxes.tolist(), instances.scores.tolist(), instances.labels.tolist()):
        if score < score_thr:
            continue
        x1, y1, x2, y2 = box
        entries.append({"image_id": image_id, "category_id": int(label),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(score), 4)})
    return entries


def output_names(images: list[Path]) -> list[str]:
    """File names for the drawn images: the input's name, numbered when two inputs share one."""
    seen: dict[str, int] = {}
    names = []
    for image in images:
        count = seen.get(image.name, 0)
        seen[image.name] = count + 1
        names.append(image.name if count == 0 else f"{image.stem}_{count}{image.suffix}")
    return names


def coco_data_sample(ground_truth: list[dict], detections: list[dict], class_of_category: dict[int, int]):
    """mmdet's DetDataSample of one image from COCO entries ([x, y, w, h] boxes): ground truth (crowd
    boxes left out) and detections, labelled by ``class_of_category`` (category id -> class index;
    other categories are left out)."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    def instances(entries: list[dict], with_scores: bool) -> InstanceData:
        kept = [entry for entry in entries if entry["category_id"] in class_of_category]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (entry["bbox"] for entry in kept)]
        data = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            labels=torch.tensor([class_of_category[e["category_id"]] for e in kept], dtype=torch.long))
        if with_scores:
            data.scores = torch.tensor([entry["score"] for entry in kept], dtype=torch.float32)
        return data

    sample = DetDataSample()
    sample.gt_instances = instances([entry for entry in ground_truth if not entry.get("iscrowd")], False)
    sample.pred_instances = instances(detections, True)
    return sample
