"""Level (c): the real commands in real processes on tiny data, with MMEngine's real training
loop and pycocotools' real metrics. Slow (minutes on 2 CPU cores); CI runs them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG, X101_PISA_CONFIG, run_command
from headless_chromium import open_in_chromium
from mmengine.config import Config
from PIL import Image, ImageChops
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from roboflow_export import read_export

from pisa_train.engine.checkpoint_files import allow_mmengine_checkpoints, mmengine_checkpoint_globals
from pisa_train.results.training_curves import FIGURE_DPI, FIGURE_SIZE_INCHES, read_scalars

pytestmark = pytest.mark.slow


def load_checkpoint(path: Path) -> dict:
    allow_mmengine_checkpoints()
    return torch.load(path, map_location="cpu")  # weights_only=True, torch's default


def x101_on_shapes(dataset: Path) -> list[str]:
    """The real X101 PISA config, pointed at a tiny dataset with --data, at 128 px, from scratch."""
    return [str(X101_PISA_CONFIG), "--device", "cpu", "--data", str(dataset), "--cfg-options",
            "train_dataloader.dataset.pipeline.2.scale=(128,128)",
            "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
            "model.backbone.init_cfg=None"]


def test_x101_pisa_trains_two_iterations_and_resume_continues_the_schedule(tmp_path, shapes_dataset):
    work_dir = tmp_path / "resumed"
    first = run_command("train", [*x101_on_shapes(shapes_dataset), "--work-dir", work_dir, "--max-iters", "2"],
                        cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (work_dir / "iter_2.pth").is_file()
    assert (work_dir / "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    dumped_config = (work_dir / X101_PISA_CONFIG.name).read_text()  # MMEngine saves the config it ran
    assert "PISARoIHead" in dumped_config and "ScoreHLRSampler" in dumped_config

    second = run_command("train", [*x101_on_shapes(shapes_dataset), "--work-dir", work_dir, "--max-iters", "4",
                                   "--resume"], cwd=tmp_path)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-5000:]
    assert "resumed epoch: 0, iter: 2" in log
    assert "Iter(train) [4/4]" in log and "Saving checkpoint at 4 iterations" in log
    resumed = load_checkpoint(work_dir / "iter_4.pth")

    straight_dir = tmp_path / "straight"
    straight = run_command("train", [*x101_on_shapes(shapes_dataset), "--work-dir", straight_dir, "--max-iters", "4"],
                           cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = load_checkpoint(straight_dir / "iter_4.pth")

    assert resumed["meta"]["iter"] == reference["meta"]["iter"] == 4
    # Same position in the learning-rate schedule as a run that was never interrupted.
    assert resumed["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        reference["optimizer"]["param_groups"][0]["lr"], rel=1e-12)
    assert [s["last_step"] for s in resumed["param_schedulers"]] == \
           [s["last_step"] for s in reference["param_schedulers"]]
    # Everything the checkpoint pickles is on the allowlist, and the allowlist is used.

    allowed = {f"{g.__module__}.{g.__qualname__}" if not isinstance(g, tuple) else g[1]
               for g in mmengine_checkpoint_globals()}
    # Asked in a fresh interpreter: in this one the allowlist is registered, and torch leaves
    # registered names out of its answer.
    unsafe = set(json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys, torch; print(json.dumps("
         "torch.serialization.get_unsafe_globals_in_checkpoint(sys.argv[1])))", str(work_dir / "iter_4.pth")],
        capture_output=True, text=True, check=True).stdout))
    assert unsafe <= allowed, unsafe - allowed
    assert "mmengine.logging.history_buffer.HistoryBuffer" in unsafe


def test_x101_pisa_trains_on_a_roboflow_export_with_one_class(tmp_path, roboflow_export):
    export = roboflow_export
    classes = read_export(export).classes
    work_dir = tmp_path / "work"
    result = run_command("train", [X101_PISA_CONFIG, "--device", "cpu", "--data", export, "--work-dir", work_dir,
                                   "--max-iters", "2", "--cfg-options",
                                   "train_dataloader.dataset.pipeline.2.scale=(160,160)",
                                   "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
                                   "model.backbone.init_cfg=None"], cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert f"classes ({len(classes)}): {', '.join(classes)}" in log and "without validation" in log
    # Roboflow numbers annotations from 0: the run reads a copy numbered from 1 (tests/test_annotation_ids.py).
    assert f"the train split is read from {work_dir / 'annotations' / 'train.json'}: a copy of " \
           f"train/_annotations.coco.json with annotation ids renumbered from 1" in log
    assert "Iter(train) [2/2]" in log
    checkpoint = load_checkpoint(work_dir / "iter_2.pth")
    assert checkpoint["meta"]["dataset_meta"]["classes"] == classes
    assert checkpoint["state_dict"]["roi_head.bbox_head.fc_cls.weight"].shape[0] == len(classes) + 1  # + background


def test_unreachable_pretrained_backbone_says_where_to_put_it(tmp_path, shapes_dataset, monkeypatch):
    # No network here, and none should be needed to test this: a proxy on a closed
    # local port makes the real download fail at once, as an offline machine does.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    result = run_command("train", [X101_PISA_CONFIG, "--device", "cpu", "--data", shapes_dataset, "--max-iters", "1",
                                   "--work-dir", tmp_path / "work", "--cfg-options",
                                   "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False"],
                         cwd=tmp_path)
    assert result.returncode == 6, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "resnext101_32x4d-a5af3160.pth" in error
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in error
    assert "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth" in error
    assert "--cfg-options model.backbone.init_cfg=None" in error


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo exactly as `make demo` trains it, in a fresh folder (its data is generated there)."""
    cwd = tmp_path_factory.mktemp("demo")
    result = run_command("train", [DEMO_CONFIG, "--device", "cpu"], cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "generated the synthetic shapes dataset" in result.stdout
    (cwd / "train_output.log").write_text(result.stdout + result.stderr)  # for the tests of the output itself
    return cwd


@pytest.fixture(scope="session")
def demo_evaluation(demo_run: Path) -> dict:
    work_dir = demo_run / "work_dirs" / "pisa_faster_rcnn_r18_fpn_demo_shapes"
    checkpoint = (work_dir / "last_checkpoint").read_text().strip()
    metrics_file = demo_run / "metrics.json"
    result = run_command("evaluate", [DEMO_CONFIG, checkpoint, "--device", "cpu", "--out", metrics_file,
                                      "--show-dir", demo_run / "shown", "--cfg-add",  # the demo config has none
                                      f"test_evaluator.outfile_prefix={demo_run / 'detections'}"], cwd=demo_run)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"cwd": demo_run, "stdout": result.stdout, "stderr": result.stderr,
            "metrics": json.loads(metrics_file.read_text())}


def test_demo_reaches_map_of_at_least_half(demo_evaluation):
    ap = demo_evaluation["metrics"]["bbox"]["AP"]
    print(f"demo bbox mAP: {ap:.3f}")
    assert ap >= 0.5
    assert "COCO bbox metrics" in demo_evaluation["stdout"]
    assert f"{ap:.3f}" in demo_evaluation["stdout"]


def test_eval_metrics_are_those_pycocotools_computes(demo_evaluation):
    cwd = demo_evaluation["cwd"]
    ground_truth = COCO(str(cwd / "data" / "demo_shapes" / "annotations" / "val.json"))
    detections = ground_truth.loadRes(str(cwd / "detections.bbox.json"))
    evaluation = COCOeval(ground_truth, detections, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    reported = demo_evaluation["metrics"]["bbox"]
    for index, name in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
        # mmdet's CocoMetric rounds to 3 decimals; -1 (no objects of that size) stays -1.
        assert reported[name] == pytest.approx(round(evaluation.stats[index], 3), abs=1e-9), name


def test_eval_show_dir_draws_every_test_image(demo_evaluation):
    drawn = sorted((demo_evaluation["cwd"] / "shown").rglob("*.jpg"))
    assert len(drawn) == 60
    with Image.open(drawn[0]) as image:
        assert image.size[0] >= 160


DEMO_WORK_DIR = Path("work_dirs") / "pisa_faster_rcnn_r18_fpn_demo_shapes"
DEMO_CLASSES = ("circle", "square", "triangle")


def assert_png(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        image.verify()  # a whole, readable PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size, (path, image.format, image.size)
        assert len(image.convert("L").getcolors(maxcolors=256 * 256) or []) > 10, f"{path} is blank"


def test_training_draws_its_curves_into_the_work_dir_and_pisa_plot_redraws_them(demo_run):
    work_dir = demo_run / DEMO_WORK_DIR
    size = (FIGURE_SIZE_INCHES[0] * FIGURE_DPI, FIGURE_SIZE_INCHES[1] * FIGURE_DPI)
    assert_png(work_dir / "training_curves.png", size)
    assert "training curves: " in (demo_run / "train_output.log").read_text()
    training, validation = read_scalars(work_dir)

    saved = Config.fromfile(str(work_dir / "pisa_faster_rcnn_r18_fpn_demo_shapes.py"))  # the config that ran
    # Every validation the schedule asked for was read, and the logged iterations reach the end.
    assert sorted(validation) == list(range(saved.train_cfg.val_interval, saved.train_cfg.max_epochs + 1,
                                            saved.train_cfg.val_interval))
    assert all("coco/bbox_mAP" in record for record in validation.values())
    assert {"loss", "loss_cls", "loss_bbox", "lr"} <= set(training[max(training)])
    redrawn = demo_run / "redrawn_curves.png"
    result = run_command("plot", [work_dir, "--out", redrawn], cwd=demo_run, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_png(redrawn, size)


def test_eval_reports_ap_per_class_and_draws_precision_recall_curves(demo_evaluation):
    metrics = demo_evaluation["metrics"]
    per_class = metrics["per_class"]
    assert tuple(per_class) == DEMO_CLASSES
    for name, row in per_class.items():
        assert 0 <= row["AP"] <= row["AP50"] <= 1, (name, row)
    # COCO's AP is the mean of the per-class APs (the summary is rounded to 3 decimals).
    mean = sum(row["AP"] for row in per_class.values()) / len(per_class)
    assert abs(mean - metrics["bbox"]["AP"]) <= 5e-4 + 1e-12
    stdout = demo_evaluation["stdout"]
    assert "AP per class" in stdout
    for name, row in per_class.items():
        assert any(line.startswith(name) and f"{row['AP']:.3f}" in line for line in stdout.splitlines()), name
    for name in DEMO_CLASSES:  # next to --out
        assert_png(demo_evaluation["cwd"] / "pr_curves" / f"pr_curve_{name}.png", (600, 500))


def test_commands_write_no_progress_bar_control_characters_when_not_on_a_terminal(demo_evaluation):
    outputs = {"pisa-train": (demo_evaluation["cwd"] / "train_output.log").read_text(),
               "pisa-eval": demo_evaluation["stdout"] + demo_evaluation["stderr"]}
    for command, output in outputs.items():
        assert "\r" not in output and "\x1b" not in output, command


def box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def test_infer_draws_detections_that_overlap_the_ground_truth(demo_run):
    val = demo_run / "data" / "demo_shapes"
    ground_truth = json.loads((val / "annotations" / "val.json").read_text())
    images = sorted((val / "val").glob("*.jpg"))[:8]
    checkpoint = (demo_run / DEMO_WORK_DIR / "last_checkpoint").read_text().strip()
    out = demo_run / "inferred"
    result = run_command("infer", [DEMO_CONFIG, checkpoint, *images, "--out", out, "--device", "cpu",
                                   "--score-thr", "0.3"], cwd=demo_run, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "\r" not in output and "\x1b" not in output
    report = json.loads((out / "detections.json").read_text())
    names = {c["id"]: c["name"] for c in report["categories"]}
    assert tuple(names.values()) == DEMO_CLASSES
    assert [Path(r["file_name"]).name for r in report["images"]] == [p.name for p in images]

    gt_names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    gt_images = {i["file_name"].split("/")[-1]: i["id"] for i in ground_truth["images"]}
    found = total = 0
    for record, image in zip(report["images"], images):
        for detection in record["detections"]:
            assert detection["score"] >= 0.3 and detection["image_id"] == record["id"]
        boxes = [a for a in ground_truth["annotations"] if a["image_id"] == gt_images[image.name]]
        for box in boxes:
            total += 1
            found += any(names[d["category_id"]] == gt_names[box["category_id"]]
                         and box_iou(d["bbox"], box["bbox"]) > 0.5 for d in record["detections"])
        with Image.open(image) as original, Image.open(record["drawn"]) as drawn:
            assert drawn.size == original.size
            if record["detections"]:  # the boxes are drawn on the image
                assert ImageChops.difference(drawn.convert("RGB"), original.convert("RGB")).getbbox() is not None
    assert total > 0
    print(f"pisa-infer found {found} of {total} ground-truth boxes (right class, IoU > 0.5)")
    assert found / total > 0.5


def test_eval_writes_what_the_model_gets_wrong(demo_evaluation):
    cwd, metrics = demo_evaluation["cwd"], demo_evaluation["metrics"]
    analysis = metrics["analysis"]
    ground_truth = json.loads((cwd / "data" / "demo_shapes" / "annotations" / "val.json").read_text())
    detections = json.loads((cwd / "detections.bbox.json").read_text())
    matrix = json.loads((cwd / "confusion_matrix.json").read_text())
    assert matrix["classes"] == [*DEMO_CLASSES, "background"] and matrix["score_thr"] == 0.3
    # Each ground-truth box is counted once in its class's row, each detection scoring >= 0.3 once in its column.
    for k, category_id in enumerate((1, 2, 3)):
        assert sum(matrix["counts"][k]) == sum(a["category_id"] == category_id for a in ground_truth["annotations"])
        assert sum(row[k] for row in matrix["counts"]) == sum(
            d["category_id"] == category_id and d["score"] >= 0.3 for d in detections)
    breakdown = json.loads((cwd / "error_breakdown.json").read_text())
    assert breakdown["ap"]["C50"] == pytest.approx(metrics["bbox"]["AP50"], abs=5e-4)
    assert breakdown["ap"]["C75"] == pytest.approx(metrics["bbox"]["AP75"], abs=5e-4)
    levels = [breakdown["ap"][level] for level in breakdown["levels"]]
    assert levels == sorted(levels) and levels[-1] == 1.0
    assert 0 < len(analysis["worst_images"]) <= 8
    for entry in analysis["worst_images"]:
        assert entry["missed"] + entry["false"] > 0
        with Image.open(cwd / entry["drawn"]) as drawn:  # ground truth and predictions side by side
            assert drawn.size == (2 * 128, 128)
    for name in ("confusion_matrix.png", "confusion_matrix_normalised.png", "error_breakdown.png"):
        with Image.open(cwd / name) as image:
            assert image.format == "PNG" and min(image.size) >= 400


def test_the_report_after_the_demo_opens_in_headless_chromium(demo_evaluation):
    work_dir = demo_evaluation["cwd"] / DEMO_WORK_DIR
    page = work_dir / "report.html"  # written by pisa-train, then again by pisa-eval
    text = page.read_text()
    assert "pisa_faster_rcnn_r18_fpn_demo_shapes.py" in text and "EpochBasedTrainLoop, 8 epochs" in text
    assert f"{demo_evaluation['metrics']['bbox']['AP']:.3f}" in text
    screenshot = demo_evaluation["cwd"] / "report.png"
    result = open_in_chromium(page, screenshot)
    broken = [alt for complete, width, alt in result["images"] if not (complete and width > 0)]
    # training curves, 3 PR curves, 2 confusion matrices, the breakdown, worst images, 6 samples
    assert len(result["images"]) >= 13 and not broken, broken
    assert result["console"] == [], result["console"]
    assert result["scroll_width"] <= 1366
    print(f"report screenshot: {screenshot}")
