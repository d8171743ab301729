"""results/error_analysis.py on hand-made cases whose answers are known, and against the COCO summary."""
from __future__ import annotations

import numpy as np
import pytest
from generated_coco import generate_ground_truth_and_detections
from PIL import Image

from pisa_train.errors import DataError
from pisa_train.results.coco_metrics import evaluate_bbox
from pisa_train.results.error_analysis import (
    confusion_matrix,
    error_breakdown,
    image_errors,
    plot_confusion_matrix,
    plot_error_breakdown,
)
from pisa_train.results.evaluation_analysis import draw_images

CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"},
              {"id": 2, "name": "dog", "supercategory": "animal"},
              {"id": 3, "name": "car", "supercategory": "vehicle"},
              {"id": 9, "name": "pets", "supercategory": "none"}]  # a root category: not a class
CLASSES = ("cat", "dog", "car")
BOX = [10.0, 10.0, 100.0, 100.0]


def dataset(boxes: list[tuple[int, int, list[float], int]], num_images: int = 8) -> dict:
    """Ground truth from (image_id, category_id, box, iscrowd) tuples."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in range(1, num_images + 1)]
    annotations = [{"id": n, "image_id": image_id, "category_id": category_id, "bbox": box, "iscrowd": crowd,
                    "area": box[2] * box[3]} for n, (image_id, category_id, box, crowd) in enumerate(boxes, 1)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def detection(image_id: int, category_id: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


def test_confusion_matrix_counts_on_a_hand_made_case():
    ground_truth = dataset([(1, 1, BOX, 0),  # cat, found as cat
                            (2, 2, BOX, 0),  # dog, found as cat
                            (3, 3, BOX, 0),  # car, missed
                            (5, 1, BOX, 0),  # cat, found only below the score threshold: missed
                            (6, 1, BOX, 1),  # a crowd of cats: a detection on it is neither right nor wrong
                            (7, 2, BOX, 0)])  # dog, found as dog at IoU 0.6 (>= 0.5)
    detections = [detection(1, 1, BOX, 0.9), detection(2, 1, [12, 8, 100, 104], 0.8),
                  detection(4, 2, BOX, 0.7),  # nothing there: a false dog
                  detection(5, 1, BOX, 0.2), detection(6, 1, BOX, 0.9),
                  detection(7, 2, [10, 10, 100, 60], 0.6),
                  detection(8, 3, [150, 150, 20, 20], 0.29)]  # below the threshold: not counted
    matrix = confusion_matrix(ground_truth, detections, CLASSES, score_thr=0.3)
    assert matrix.labels == ["cat", "dog", "car", "background"]
    #                     predicted: cat dog car background
    expected = np.array([[1, 0, 0, 1],   # ground truth cat
                         [1, 1, 0, 0],   # ground truth dog
                         [0, 0, 0, 1],   # ground truth car
                         [0, 1, 0, 0]])  # background
    np.testing.assert_array_equal(matrix.counts, expected)
    np.testing.assert_allclose(matrix.row_normalised()[0], [0.5, 0, 0, 0.5])
    assert matrix.to_json()["counts"] == expected.tolist()
    lower = confusion_matrix(ground_truth, detections, CLASSES, score_thr=0.1)
    assert lower.counts[0].tolist() == [2, 0, 0, 0] and lower.counts[3].tolist() == [0, 1, 1, 0]


def test_classes_not_in_the_ground_truth_are_a_data_error():
    with pytest.raises(DataError, match=r"the config's classes \['horse'\] are not categories of the ground truth"):
        confusion_matrix(dataset([]), [], ("cat", "horse"), score_thr=0.3)


@pytest.mark.parametrize("case, expected_gains", [
    # One cat, found only at IoU 0.35: a localisation error, worth the whole AP.
    ("localisation", {"Loc": 1.0}),
    # cat found (0.9) and a dog taken for a cat at a higher score (0.95): the cat's AP is 0.5 until
    # same-supercategory confusions are forgiven; the dog, never found, is the missed half.
    ("similar class", {"Sim": 0.25, "FN": 0.5}),
    # The same with a car (another supercategory): forgiven only with every confusion.
    ("other class", {"Oth": 0.25, "FN": 0.5}),
    # cat found (0.5) below a detection on empty background (0.9).
    ("background", {"BG": 0.5}),
])
def test_error_breakdown_on_hand_made_cases(case, expected_gains):
    if case == "localisation":
        ground_truth, detections = dataset([(1, 1, BOX, 0)]), [detection(1, 1, [10, 10, 100, 35], 0.9)]
    elif case in ("similar class", "other class"):
        other = 2 if case == "similar class" else 3
        ground_truth = dataset([(1, 1, BOX, 0), (2, other, BOX, 0)])
        detections = [detection(1, 1, BOX, 0.9), detection(2, 1, BOX, 0.95)]
    else:
        ground_truth = dataset([(1, 1, BOX, 0)])
        detections = [detection(1, 1, BOX, 0.5), detection(2, 1, BOX, 0.9)]
    classes = ("cat", "dog", "car")
    breakdown = error_breakdown(ground_truth, detections, classes)
    levels = breakdown["levels"]
    steps = {level: breakdown["ap"][level] - breakdown["ap"][previous] for previous, level in zip(levels, levels[1:])}
    for level, gain in steps.items():
        assert gain == pytest.approx(expected_gains.get(level, 0.0), abs=1e-9), (level, breakdown["ap"])
    assert breakdown["ap"]["FN"] == 1.0


def test_error_breakdown_levels_agree_with_the_coco_summary_and_only_forgive_more():
    ground_truth, detections = generate_ground_truth_and_detections(num_images=300, num_classes=4, seed=5)
    classes = [category["name"] for category in ground_truth["categories"]]
    breakdown = error_breakdown(ground_truth, detections, classes)
    summary = evaluate_bbox(ground_truth, detections, "pycocotools", classes=classes).stats
    # C50 and C75 are COCO's AP50 and AP75 (all areas, 100 detections), computed independently here.
    assert breakdown["ap"]["C50"] == pytest.approx(summary[1], abs=1e-9)
    assert breakdown["ap"]["C75"] == pytest.approx(summary[2], abs=1e-9)
    aps = [breakdown["ap"][level] for level in breakdown["levels"]]
    assert aps == sorted(aps) and aps[-1] == 1.0 and aps[0] < aps[2] < aps[-2]
    # Per class too: each level forgives more than the one before.
    for name, row in breakdown["per_class"].items():
        values = [row[level] for level in breakdown["levels"]]
        assert all(b >= a - 1e-9 for a, b in zip(values, values[1:])), name
    # The gains are the steps between levels; with AP75 they account for the whole of AP = 1.
    assert breakdown["ap"]["C75"] + sum(breakdown["gain_if_fixed"].values()) == pytest.approx(1.0)


def test_image_errors_rank_images_by_missed_and_false_boxes():
    ground_truth = dataset([(1, 1, BOX, 0), (2, 1, BOX, 0), (2, 2, [120, 120, 60, 60], 0), (3, 3, BOX, 0)])
    detections = [detection(1, 1, BOX, 0.9),  # image 1: right
                  detection(2, 2, BOX, 0.9),  # image 2: a dog where a cat is (false, and the cat missed) ...
                  detection(3, 3, BOX, 0.9), detection(3, 3, [150, 10, 30, 30], 0.8)]  # image 3: one false
    errors = image_errors(ground_truth, detections, CLASSES, score_thr=0.3)
    assert [(e["image_id"], e["missed"], e["false"]) for e in errors[:3]] == [(2, 2, 1), (3, 0, 1), (1, 0, 0)]


def test_plots_are_written(tmp_path):
    ground_truth, detections = generate_ground_truth_and_detections(num_images=50, num_classes=3, seed=1)
    classes = [category["name"] for category in ground_truth["categories"]]

    matrix = confusion_matrix(ground_truth, detections, classes, score_thr=0.3)
    for normalised in (False, True):
        path = plot_confusion_matrix(matrix, tmp_path / f"cm_{normalised}.png", normalised)
        with Image.open(path) as image:
            assert image.size[0] >= 400 and image.size[1] >= 400
    path = plot_error_breakdown(error_breakdown(ground_truth, detections, classes), tmp_path / "breakdown.png")
    with Image.open(path) as image:
        assert image.size == (700, 500)


def _strong_changes(drawn, original, box) -> tuple[int, int]:
    """Pixels of ``drawn`` far from ``original`` (a box line or label, not JPEG noise): around ``box``, and in all."""
    changed = np.abs(drawn - original).max(axis=2) > 60
    x, y, w, h = box
    return int(changed[max(0, y - 3):y + h + 3, max(0, x - 3):x + w + 3].sum()), int(changed.sum())


def test_a_worst_image_shows_the_ground_truth_left_and_the_predictions_right(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (128, 128), (128, 128, 128)).save(tmp_path / "images" / "a.jpg")
    truth_box, predicted_box = [10, 10, 40, 40], [70, 70, 40, 40]  # apart: each side's lines are its own
    ground_truth = {"images": [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 128}],
                    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": truth_box, "area": 1600,
                                     "iscrowd": 0}]}
    detections = [{"image_id": 1, "category_id": 2, "bbox": predicted_box, "score": 0.9},
                  {"image_id": 1, "category_id": 1, "bbox": [60, 5, 30, 30], "score": 0.1}]  # below --score-thr
    written = draw_images([{"image_id": 1, "file_name": "a.jpg"}], ground_truth, detections, ["circle", "square"],
                          tmp_path / "images", tmp_path / "out" / "worst_images", score_thr=0.3)
    assert written == ["worst_images/01_a.jpg"]
    drawn = np.asarray(Image.open(tmp_path / "out" / written[0]).convert("RGB")).astype(int)
    original = np.asarray(Image.open(tmp_path / "images" / "a.jpg").convert("RGB")).astype(int)
    assert drawn.shape == (128, 256, 3)
    left, right = drawn[:, :128], drawn[:, 128:]
    around_truth, everywhere = _strong_changes(left, original, truth_box)
    assert around_truth > 100 and around_truth == everywhere  # the ground truth's box, and nothing else
    around_prediction, everywhere = _strong_changes(right, original, predicted_box)
    assert around_prediction > 100 and _strong_changes(right, original, truth_box)[0] == 0
    assert _strong_changes(right, original, [60, 5, 30, 30])[0] <= around_prediction // 10  # not the low score
