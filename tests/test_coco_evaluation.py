"""results/coco_metrics.py: the two COCO evaluators agree, and per-class AP and
precision-recall curves come out of COCOeval's precision array."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from generated_coco import generate_ground_truth_and_detections
from PIL import Image

from pisa_train.errors import DataError
from pisa_train.results.coco_metrics import evaluate_bbox, per_class_ap, plot_precision_recall_curves


def both_backends(ground_truth, detections, **kwargs):
    return [evaluate_bbox(copy.deepcopy(ground_truth), copy.deepcopy(detections), backend, **kwargs)
            for backend in ("pycocotools", "faster-coco-eval")]


def assert_same_evaluation(reference, fast):
    assert len(reference.stats) == len(fast.stats) == 12
    np.testing.assert_allclose(np.asarray(fast.stats), reference.stats, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(fast.eval["precision"]), reference.eval["precision"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(fast.eval["recall"]), reference.eval["recall"], rtol=0, atol=1e-9)


@pytest.mark.slow
def test_faster_coco_eval_gives_pycocotools_numbers_on_thousands_of_images():
    ground_truth, detections = generate_ground_truth_and_detections(num_images=3000, num_classes=5, seed=1)
    assert sum(a["iscrowd"] for a in ground_truth["annotations"]) > 100
    assert len({a["image_id"] for a in ground_truth["annotations"]}) < len(ground_truth["images"])  # empty images
    reference, fast = both_backends(ground_truth, detections)
    assert 0.1 < reference.stats[0] < 0.9  # neither trivial nor perfect: the comparison means something
    assert_same_evaluation(reference, fast)


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_gives_pycocotools_numbers_on_a_small_set(seed):
    ground_truth, detections = generate_ground_truth_and_detections(num_images=150, num_classes=3, seed=seed)
    assert_same_evaluation(*both_backends(ground_truth, detections))
    assert_same_evaluation(*both_backends(ground_truth, detections, classes=["class_2", "class_0"]))


def test_per_class_ap_averages_to_the_summary_ap():
    ground_truth, detections = generate_ground_truth_and_detections(num_images=150, num_classes=3, seed=2)
    evaluation = evaluate_bbox(ground_truth, detections)
    table = per_class_ap(evaluation)
    assert list(table) == ["class_0", "class_1", "class_2"]
    assert np.mean([row["AP"] for row in table.values()]) == pytest.approx(evaluation.stats[0], abs=1e-12)
    assert np.mean([row["AP50"] for row in table.values()]) == pytest.approx(evaluation.stats[1], abs=1e-12)


def test_a_perfect_detector_has_ap_one_per_class_and_no_detections_ap_zero():
    ground_truth, _ = generate_ground_truth_and_detections(num_images=40, num_classes=2, seed=3)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in ground_truth["annotations"] if not a["iscrowd"]]
    for backend in ("pycocotools", "faster-coco-eval"):
        table = per_class_ap(evaluate_bbox(copy.deepcopy(ground_truth), perfect, backend))
        assert all(row["AP"] == pytest.approx(1.0) for row in table.values()), (backend, table)
        nothing = evaluate_bbox(copy.deepcopy(ground_truth), [], backend)
        assert nothing.stats[0] <= 0


def test_classes_limit_the_evaluation_and_an_unknown_class_is_a_data_error():
    ground_truth, detections = generate_ground_truth_and_detections(num_images=60, num_classes=3, seed=4)
    table = per_class_ap(evaluate_bbox(ground_truth, detections, classes=["class_2", "class_0"]))
    assert list(table) == ["class_0", "class_2"]  # COCOeval orders the classes by category id
    with pytest.raises(DataError, match="class_9"):
        evaluate_bbox(ground_truth, detections, classes=["class_9"])


def test_precision_recall_curves_are_one_png_per_class(tmp_path):
    ground_truth, detections = generate_ground_truth_and_detections(num_images=60, num_classes=3, seed=5)
    written = plot_precision_recall_curves(evaluate_bbox(ground_truth, detections), tmp_path)
    assert [p.name for p in written] == [f"pr_curve_class_{k}.png" for k in range(3)]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (600, 500)
