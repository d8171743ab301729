"""The report page (results/report.py) and what pisa-eval analyses for it (results/evaluation_analysis.py),
on a small generated dataset with real images and detections made from its boxes; the page is opened in
headless Chromium where it is installed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_CONFIG
from headless_chromium import open_in_chromium
from PIL import Image

from pisa_train import exit_codes
from pisa_train.cli import evaluate, plot
from pisa_train.results.evaluation_analysis import EVALUATION_INDEX, evaluate_and_analyse
from pisa_train.results.report import record_training_run, write_report
from pisa_train.results.training_curves import plot_training_curves


def detections_from(ground_truth: dict, seed: int = 0) -> list[dict]:
    """Each box found with some jitter (and a wrong class now and then), plus false detections."""
    rng = np.random.default_rng(seed)
    category_ids = [category["id"] for category in ground_truth["categories"]]
    detections = []
    for index, annotation in enumerate(ground_truth["annotations"]):
        x, y, w, h = annotation["bbox"]
        if index == 0 or rng.random() < 0.15:
            continue  # missed
        jitter = rng.normal(0, 0.05, size=4) * [w, h, w, h]
        category = annotation["category_id"] if rng.random() < 0.85 else int(rng.choice(category_ids))
        detections.append({"image_id": annotation["image_id"], "category_id": category,
                           "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                           "score": float(rng.uniform(0.4, 1.0))})
    for image in ground_truth["images"][::3]:
        detections.append({"image_id": image["id"], "category_id": int(rng.choice(category_ids)),
                           "bbox": [5.0, 5.0, 20.0, 20.0], "score": float(rng.uniform(0.3, 0.9))})
    return detections


@pytest.fixture
def evaluated_work_dir(tmp_path, shapes_dataset) -> Path:
    """A work dir as pisa-train and pisa-eval leave it: run.json, training curves, evaluation.json + analyses."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    ground_truth_file = shapes_dataset / "annotations" / "val.json"
    ground_truth = json.loads(ground_truth_file.read_text())
    detections_file = tmp_path / "detections.bbox.json"
    detections_file.write_text(json.dumps(detections_from(ground_truth)))
    record = evaluate_and_analyse(str(ground_truth_file), str(tmp_path / "detections"), ["bbox"], "faster-coco-eval",
                                  ["circle", "square", "triangle"], shapes_dataset / "val", work_dir, score_thr=0.3,
                                  worst=3, config="configs/demo.py", checkpoint="iter_8.pth",
                                  coco_backend="faster-coco-eval")
    (work_dir / EVALUATION_INDEX).write_text(json.dumps(record))
    record_training_run(work_dir, ["config: configs/demo.py", "device: cpu, launcher: none",
                                   "schedule: EpochBasedTrainLoop, 8 epochs"], started=1_700_000_000.0,
                        finished=1_700_000_300.0)
    logs = work_dir / "20260101_000000" / "vis_data"
    logs.mkdir(parents=True)
    logs.joinpath("scalars.json").write_text("".join(
        json.dumps({"loss": 2.0 / step, "loss_cls": 1.0 / step, "lr": 0.02, "step": step}) + "\n"
        for step in range(1, 11)))
    plot_training_curves(work_dir)
    return work_dir


def test_the_analysis_finds_what_the_detections_get_wrong(evaluated_work_dir, shapes_dataset):
    record = json.loads((evaluated_work_dir / EVALUATION_INDEX).read_text())
    analysis = record["analysis"]
    matrix = json.loads((evaluated_work_dir / "confusion_matrix.json").read_text())
    assert matrix["classes"] == ["circle", "square", "triangle", "background"]
    counts = np.array(matrix["counts"])
    # Every ground-truth box is in its class's row once; every detection scoring >= 0.3 in its column once.
    ground_truth = json.loads((shapes_dataset / "annotations" / "val.json").read_text())
    detections = json.loads((evaluated_work_dir.parent / "detections.bbox.json").read_text())
    for k, category_id in enumerate((1, 2, 3)):
        assert counts[k].sum() == sum(a["category_id"] == category_id for a in ground_truth["annotations"])
        assert counts[:, k].sum() == sum(d["category_id"] == category_id and d["score"] >= 0.3 for d in detections)
    assert counts[3, 3] == 0  # background against background is not counted
    assert np.trace(counts[:3, :3]) > 0 and counts[:3, 3].sum() > 0 and counts[3, :3].sum() > 0
    assert sum(analysis["gain_if_fixed"].values()) + analysis["error_breakdown_ap"]["C75"] == pytest.approx(1.0)
    assert analysis["error_breakdown_ap"]["C50"] == pytest.approx(record["bbox"]["AP50"], abs=5e-4)
    assert len(analysis["worst_images"]) == 3
    errors = [entry["missed"] + entry["false"] for entry in analysis["worst_images"]]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0

    for entry in analysis["worst_images"]:
        with Image.open(Path(analysis["analysis_dir"]) / entry["drawn"]) as drawn:
            assert drawn.size == (2 * 96, 96)  # ground truth and predictions side by side
    assert len(analysis["sample_predictions"]) == 4  # the shapes fixture has 4 val images


def test_the_report_is_one_self_contained_page_with_every_part(evaluated_work_dir):
    page = write_report(evaluated_work_dir).read_text()
    for heading in ("What was trained", "Evaluation", "Precision-recall curves", "Confusion matrix",
                    "Error breakdown", "Worst images", "Sample predictions"):
        assert f">{heading}</h2>" in page, heading
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all(source.startswith("data:image/") for source in sources)
    # 3 PR curves + 2 confusion matrices + 1 breakdown + 3 worst + 4 samples (+ curves when present)
    assert len(sources) >= 13
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "schedule" in page and "EpochBasedTrainLoop, 8 epochs" in page and "0:05:00" in page


def test_a_work_dir_without_evaluation_says_which_command_makes_it(tmp_path):
    page = write_report(tmp_path).read_text()
    assert "not evaluated yet: run pisa-eval CONFIG CHECKPOINT" in page
    assert "pisa-train writes run.json at the end of a run" in page


def test_the_report_opens_in_headless_chromium_with_every_image_and_no_console_error(evaluated_work_dir, tmp_path):
    result = open_in_chromium(write_report(evaluated_work_dir), tmp_path / "report.png")
    assert len(result["images"]) >= 13
    broken = [alt for complete, width, alt in result["images"] if not (complete and width > 0)]
    assert not broken, broken
    assert result["console"] == [], result["console"]
    assert result["scroll_width"] <= 1366  # fits a laptop screen: no sideways scrolling
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_pisa_plot_report_rewrites_the_page_from_the_work_dir(evaluated_work_dir, capsys):
    (evaluated_work_dir / "report.html").unlink(missing_ok=True)
    assert plot.main([str(evaluated_work_dir), "--report"]) == 0
    out = capsys.readouterr().out
    assert f"[pisa-plot] report written to {evaluated_work_dir / 'report.html'}" in out
    assert ">Worst images</h2>" in (evaluated_work_dir / "report.html").read_text()


def test_pisa_eval_refuses_thresholds_outside_their_range(tmp_path, capsys):
    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"x")
    assert evaluate.main([str(DEMO_CONFIG), str(checkpoint), "--score-thr", "1.5", "--device", "cpu"]) == \
        exit_codes.USAGE_ERROR
    assert capsys.readouterr().err.strip() == "pisa-eval: error: --score-thr must be between 0 and 1, not 1.5"
    assert evaluate.main([str(DEMO_CONFIG), str(checkpoint), "--worst-images", "-1", "--device", "cpu"]) == \
        exit_codes.USAGE_ERROR
    assert capsys.readouterr().err.strip() == "pisa-eval: error: --worst-images must be 0 or more, not -1"
