"""Level (a) for issue 6: pisa-plot and pisa-infer as commands, the training-curve reader, and
the config rewrites behind pisa-eval's per-class report and pisa-train --tensorboard."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import DEMO_CONFIG
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pisa_train import exit_codes
from pisa_train.cli import infer as infer_cli
from pisa_train.cli import plot as plot_cli
from pisa_train.cli import train as train_cli
from pisa_train.config import rewrites as rewrite
from pisa_train.config.loading import load_config
from pisa_train.config.rewrites import dump_detections_for_evaluation, enable_tensorboard
from pisa_train.errors import ConfigError
from pisa_train.results.training_curves import FIGURE_DPI, FIGURE_SIZE_INCHES, read_scalars


@pytest.mark.parametrize("module", ["infer", "plot"])
def test_help_imports_neither_torch_nor_mmdet_nor_matplotlib(module):
    code = (f"import sys\nfrom pisa_train.cli.{module} import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = sorted(m for m in ('torch', 'mmdet', 'mmengine', 'mmcv', 'matplotlib') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage:" in out and "HEAVY []" in out


def write_run(work_dir, timestamp, train_steps, val_steps, loss_offset=0.0):
    vis = work_dir / timestamp / "vis_data"
    vis.mkdir(parents=True)
    lines = []
    for step in train_steps:
        lines.append({"lr": 0.01 * step, "loss": 2.0 - 0.01 * step + loss_offset, "loss_cls": 1.0 + loss_offset,
                      "loss_bbox": 0.5, "epoch": 1 + step // 10, "iter": step, "step": step})
    for epoch in val_steps:
        lines.append({"coco/bbox_mAP": 0.1 * epoch, "coco/bbox_mAP_50": 0.2 * epoch, "coco/bbox_mAP_75": 0.05 * epoch,
                      "data_time": 0.1, "time": 0.2, "step": epoch})
    (vis / "scalars.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n{\"lr\": 0.1, \"lo")


def test_a_resumed_run_reads_as_one_with_the_redone_iterations_from_the_later_run(tmp_path):
    write_run(tmp_path, "20260101_000000", range(5, 35, 5), [1, 2])
    write_run(tmp_path, "20260101_010000", range(25, 45, 5), [3, 4], loss_offset=10.0)  # resumed at iteration 20
    training, validation = read_scalars(tmp_path)
    assert sorted(training) == list(range(5, 45, 5))
    assert training[20]["loss_cls"] == 1.0 and training[25]["loss_cls"] == 11.0  # 25, 30 come from the resume
    assert sorted(validation) == [1, 2, 3, 4]
    assert validation[3]["coco/bbox_mAP"] == pytest.approx(0.3)


def test_pisa_plot_writes_a_png_of_the_work_dir(tmp_path, capsys):
    write_run(tmp_path, "20260101_000000", range(1, 20), [1])
    assert plot_cli.main([str(tmp_path)]) == 0
    assert f"training curves written to {tmp_path / 'training_curves.png'}" in capsys.readouterr().out
    with Image.open(tmp_path / "training_curves.png") as image:
        image.verify()
    with Image.open(tmp_path / "training_curves.png") as image:
        assert image.format == "PNG"
        assert image.size == (FIGURE_SIZE_INCHES[0] * FIGURE_DPI, FIGURE_SIZE_INCHES[1] * FIGURE_DPI)
        assert len(image.convert("L").getcolors(maxcolors=256 * 256) or []) > 10  # drawn on, not blank


def test_pisa_plot_on_a_folder_without_logs_says_what_it_needs(tmp_path, capsys):
    assert plot_cli.main([str(tmp_path)]) == exit_codes.DATA_ERROR
    assert capsys.readouterr().err == (
        f"pisa-plot: error: {tmp_path} holds no training logs (no */vis_data/scalars.json with loss values); give the "
        f"work dir of a pisa-train run that logged at least one iteration (default_hooks.logger.interval sets how "
        f"often it logs)\n")
    assert plot_cli.main([str(tmp_path / "absent")]) == exit_codes.DATA_ERROR
    assert capsys.readouterr().err == (
        f"pisa-plot: error: work dir {tmp_path / 'absent'} not found; give the folder pisa-train wrote its checkpoints "
        f"and logs to (work_dirs/<config name> by default)\n")
    assert plot_cli.main([str(tmp_path), "--out", "x.jpg"]) == exit_codes.USAGE_ERROR
    assert capsys.readouterr().err == ("pisa-plot: error: --out x.jpg: the curves are written as PNG; give a file name "
                                       "ending in .png\n")


def demo_config():
    return rewrite.apply_work_dir(load_config(str(DEMO_CONFIG), {}, {}), "w", str(DEMO_CONFIG))


def test_pisa_eval_has_the_detections_written_and_evaluates_them_itself():
    cfg = demo_config()
    rewritten = dump_detections_for_evaluation(cfg)
    assert rewritten.test_evaluator.format_only is True
    assert rewritten.test_evaluator.outfile_prefix == "w/test_detections"
    assert cfg.test_evaluator.get("format_only") is False  # the argument is untouched
    cfg.test_evaluator.outfile_prefix = "mine/det"
    assert dump_detections_for_evaluation(cfg).test_evaluator.outfile_prefix == "mine/det"


def test_pisa_eval_refuses_a_test_evaluator_that_is_not_coco_bbox():
    cfg = demo_config()
    cfg.test_evaluator.metric = "segm"
    with pytest.raises(ConfigError, match="test_evaluator.metric=bbox"):
        dump_detections_for_evaluation(cfg)
    cfg.test_evaluator = dict(type="VOCMetric")
    with pytest.raises(ConfigError, match="CocoMetric"):
        dump_detections_for_evaluation(cfg)


def test_tensorboard_adds_mmengines_backend_once():
    cfg = enable_tensorboard(enable_tensorboard(demo_config()))
    assert [b["type"] for b in cfg.visualizer.vis_backends] == ["LocalVisBackend", "TensorboardVisBackend"]


def test_tensorboard_without_the_package_is_an_environment_problem(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    assert train_cli.main([str(DEMO_CONFIG), "--device", "cpu", "--tensorboard"]) == exit_codes.ENVIRONMENT_ERROR
    assert capsys.readouterr().err == (
        "pisa-train: error: --tensorboard needs the tensorboard package, which is not installed in this environment; "
        "install it with `.venv/bin/pip install tensorboard` (or leave out --tensorboard: the curves are drawn into "
        "the work dir anyway, see pisa-plot)\n")


def test_infer_refuses_missing_images_and_bad_thresholds(tmp_path, capsys):
    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"")
    assert infer_cli.main([str(DEMO_CONFIG), str(checkpoint), str(tmp_path / "nope.jpg"), "--out", str(tmp_path),
                           "--device", "cpu"]) == exit_codes.DATA_ERROR
    assert capsys.readouterr().err == (f"pisa-infer: error: image or folder {tmp_path / 'nope.jpg'} not found; give "
                                       f"image files or folders of images\n")
    assert infer_cli.main([str(DEMO_CONFIG), str(checkpoint), str(tmp_path), "--out", str(tmp_path),
                           "--score-thr", "1.5"]) == exit_codes.USAGE_ERROR
    assert capsys.readouterr().err == "pisa-infer: error: --score-thr must be between 0 and 1, not 1.5\n"
    assert infer_cli.main([str(DEMO_CONFIG), str(checkpoint), str(tmp_path), "--out", str(tmp_path),
                           "--device", "cpu"]) == exit_codes.DATA_ERROR  # a folder without images
    assert capsys.readouterr().err == (f"pisa-infer: error: folder {tmp_path} holds no images (.jpg, .jpeg, .png, "
                                       f".bmp, .tif, .tiff, .webp); give image files or a folder of images\n")


@pytest.mark.slow
def test_infer_loads_checkpoints_weights_only_and_runs_no_code_from_them(tmp_path, run_cli):
    evil, marker, image = tmp_path / "evil.pth", tmp_path / "pwned", tmp_path / "one.jpg"
    code = ("import os, torch\n"
            "class Payload:\n"
            "    def __reduce__(self):\n"
            f"        return (os.system, ('touch {marker}',))\n"
            f"torch.save({{'meta': {{'x': Payload()}}, 'state_dict': {{}}}}, {str(evil)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    Image.new("RGB", (64, 64), (90, 120, 30)).save(image)
    result = run_cli("infer", [DEMO_CONFIG, evil, image, "--out", tmp_path / "out", "--device", "cpu"], cwd=tmp_path)
    assert result.returncode == exit_codes.CHECKPOINT_ERROR, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"pisa-infer: error: checkpoint {evil} was refused: it pickles posix.system, which is not among the weights "
        f"and mmengine training state that pisa-train loads, and unpickling it could run arbitrary code; if you trust "
        f"where this file came from, load it anyway with --trust-checkpoint {evil}")
    assert not marker.exists()


@pytest.mark.slow
def test_tensorboard_logs_the_training_scalars_as_event_files(tmp_path, shapes_dataset, run_cli):
    work_dir = tmp_path / "work"
    result = run_cli("train", [DEMO_CONFIG, "--device", "cpu", "--data", shapes_dataset, "--work-dir", work_dir,
                               "--max-iters", "3", "--tensorboard", "--cfg-options", "default_hooks.logger.interval=1"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    event_files = list(work_dir.glob("*/vis_data/events.out.tfevents.*"))
    assert len(event_files) == 1, event_files
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "loss_cls", "loss_bbox", "lr"} <= set(scalars), scalars
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3]
    # The same numbers as MMEngine's own scalars.json beside it.
    logged = [json.loads(line) for line in (event_files[0].parent / "scalars.json").read_text().splitlines()]
    assert [event.value for event in events.Scalars("loss")] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
