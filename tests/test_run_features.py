"""Issue 23's run features: experiment trackers (--vis-backend), --patience, the best checkpoint, a resumed
run's record, and video in pisa-infer; with issue 20's point 11 (pisa-infer's detections.json written as
it goes, and kept valid by a Ctrl-C). Fast tests drive main() and the config functions; the slow ones train
the tiny demo (tests/tiny_training.py) in real processes."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import DEMO_CONFIG, run_command
from mlflow.tracking import MlflowClient
from mmengine.config import Config, DictAction
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook, EarlyStoppingHook
from mmengine.logging import MessageHub, MMLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_training import MODEL_OPTIONS, tiny_demo, tiny_eval
from wandb.proto import wandb_internal_pb2

from pisa_train import exit_codes
from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import infer as infer_cli
from pisa_train.cli import train as train_cli
from pisa_train.config import rewrites
from pisa_train.config.loading import parse_cfg_options
from pisa_train.engine.hooks.atomic_checkpoint import AtomicCheckpointHook
from pisa_train.results import report

# The tiny demo, validating after every epoch (tiny_demo's --max-iters turns validation off).
VALIDATION_OPTIONS = ["train_cfg.val_interval=1", "val_dataloader.dataset.pipeline.1.scale=(64,64)",
                      "val_dataloader.batch_size=2", "val_dataloader.num_workers=0",
                      "val_dataloader.persistent_workers=False"]


def validating_demo(work_dir: Path, epochs: int, *flags, options=()) -> list[str]:
    args = tiny_demo(work_dir, 1, *flags, options=[f"train_cfg.max_epochs={epochs}", *VALIDATION_OPTIONS, *options])
    at = args.index("--max-iters")
    return args[:at] + args[at + 2:]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


# --- trackers -------------------------------------------------------------------------------------------------

def test_vis_backends_are_added_with_mlflow_in_the_work_dir():
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.work_dir = "runs/a"
    built = rewrites.enable_vis_backends(cfg, ["mlflow", "tensorboard", "mlflow", "wandb"], None, "offline")
    assert [backend["type"] for backend in built.visualizer.vis_backends] == [
        "LocalVisBackend", "MLflowVisBackend", "TensorboardVisBackend", "WandbVisBackend"]
    assert built.visualizer.vis_backends[1]["tracking_uri"] == f"file://{os.path.abspath('runs/a')}/mlruns"
    assert built.visualizer.vis_backends[3]["init_kwargs"] == {"mode": "offline", "dir": "runs/a"}
    assert cfg.visualizer.vis_backends == [dict(type="LocalVisBackend")]  # the argument is untouched
    server = rewrites.enable_vis_backends(cfg, ["mlflow"], "http://127.0.0.1:5000")
    assert server.visualizer.vis_backends[1]["tracking_uri"] == "http://127.0.0.1:5000"
    assert rewrites.enable_tensorboard(cfg).visualizer.vis_backends[1] == dict(type="TensorboardVisBackend")
    cfg.visualizer.vis_backends.append(dict(type="MLflowVisBackend", exp_name="mine"))  # the config's own
    assert rewrites.enable_vis_backends(cfg, ["mlflow"]).visualizer.vis_backends[1:] == [
        dict(type="MLflowVisBackend", exp_name="mine", tracking_uri=f"file://{os.path.abspath('runs/a')}/mlruns")]


def test_an_unknown_vis_backend_is_one_line_listing_the_choices(capsys):
    assert train_cli.main([str(DEMO_CONFIG), "--vis-backend", "comet", "--print-config"]) == exit_codes.USAGE_ERROR
    assert one_line(capsys.readouterr().err) == (
        "pisa-train: error: --vis-backend 'comet' is not one of MMEngine's backends; choose from tensorboard, "
        "wandb, mlflow, clearml, neptune, dvclive, aim")


def test_a_vis_backend_without_its_package_is_one_line_naming_it(capsys):
    assert importlib.util.find_spec("aim") is None, "this test needs a tracker whose package is not installed"
    assert train_cli.main([str(DEMO_CONFIG), "--vis-backend", "aim", "--print-config"]) == exit_codes.ENVIRONMENT_ERROR
    expected = ("--vis-backend aim needs the aim package, which is not installed in this environment; install it "
                "with `.venv/bin/pip install aim` (or all trackers: `pip install -e .[trackers]`)")
    assert one_line(capsys.readouterr().err) == f"pisa-train: error: {expected}"
    checkpoint = Path("c.pth")
    checkpoint.write_bytes(b"")
    assert eval_cli.main([str(DEMO_CONFIG), str(checkpoint), "--vis-backend", "aim", "--print-config"]) == 6
    assert one_line(capsys.readouterr().err) == f"pisa-eval: error: {expected}"


def test_cfg_options_take_lists_of_dicts():
    assert parse_cfg_options(["visualizer.vis_backends=[dict(type=LocalVisBackend),dict(type='MLflowVisBackend',"
                              "exp_name='my run',tags={'a':1})]", "a.b=dict(x=-1,y=(1,2))", "c=1,2"]) == {
        "visualizer.vis_backends": [{"type": "LocalVisBackend"},
                                    {"type": "MLflowVisBackend", "exp_name": "my run", "tags": {"a": 1}}],
        "a.b": {"x": -1, "y": (1, 2)}, "c": [1, 2]}


def test_cfg_options_dicts_evaluate_nothing(capsys):
    code = train_cli.main([str(DEMO_CONFIG), "--print-config", "--cfg-options",
                           "custom_hooks=[dict(type=__import__('os').getcwd())]"])
    assert code == exit_codes.CONFIG_ERROR
    assert one_line(capsys.readouterr().err) == (
        "pisa-train: error: --cfg-options value for 'custom_hooks' cannot be parsed: "
        "'[dict(type=__import__('os').getcwd())]' (write dicts as dict(type=NAME,key=value) or {'key':value}, with "
        "balanced brackets and quotes, and only numbers, strings, True/False/None, lists and dicts inside)")


def test_upstream_dict_action_recurses_on_dicts():
    """mmengine 0.10.7's DictAction never ends on a dict with a comma in it: pisa-train parses those itself
    (config/loading.py's parse_dict_value). When this fails, upstream parses them and ours can go."""


    with pytest.raises(RecursionError):
        DictAction(option_strings=["--cfg-options"], dest="options")(
            None, argparse.Namespace(), ["visualizer.vis_backends=[dict(type=A,x=1)]"])


# --- patience and the best checkpoint ---------------------------------------------------------------------------

def test_patience_without_validation_is_one_line(capsys):
    assert train_cli.main([str(DEMO_CONFIG), "--max-iters", "2", "--patience", "3", "--print-config"]) == 2
    assert one_line(capsys.readouterr().err) == (
        "pisa-train: error: --patience 3 stops training when the validation bbox mAP stops improving, but this run "
        "does not validate (--max-iters skips validation; the config needs val_dataloader, val_cfg and a "
        "CocoMetric val_evaluator); leave out --patience or --max-iters")


def test_best_checkpoint_kept_whenever_the_run_validates():
    cfg = Config.fromfile(str(DEMO_CONFIG))
    kept = rewrites.keep_best_checkpoint(cfg).default_hooks.checkpoint
    assert (kept.save_best, kept.rule) == ("coco/bbox_mAP", "greater")
    assert "save_best" not in rewrites.keep_best_checkpoint(rewrites.limit_iterations(cfg, 4)).default_hooks.checkpoint
    patient = rewrites.enable_early_stopping(cfg, 3).custom_hooks[-1]
    assert patient == dict(type="PatienceHook", monitor="coco/bbox_mAP", rule="greater", patience=3,
                           min_delta=rewrites.PATIENCE_MIN_DELTA)


def test_upstream_early_stopping_hook_sets_stop_training():
    """engine/hooks/early_stopping.py relies on EarlyStoppingHook stopping through train_loop.stop_training,
    and on its wait_count and best_score."""


    hook = EarlyStoppingHook(monitor="coco/bbox_mAP", rule="greater", patience=2, min_delta=0.001)
    runner = SimpleNamespace(train_loop=SimpleNamespace(stop_training=False),
                             logger=SimpleNamespace(info=lambda message: None))
    for score in (0.2, 0.2005, 0.19):
        hook.after_val_epoch(runner, {"coco/bbox_mAP": score})
    assert runner.train_loop.stop_training and hook.wait_count == 2 and hook.best_score == 0.2


def best_saves(hook_class, folder: Path) -> list[tuple[str, bool]]:
    """Two validations, each a new best, through ``hook_class``'s save_best code on a stand-in runner whose
    save_checkpoint writes a small file; per save: its file name, and whether the previous best was still there."""
    hook = hook_class(interval=1, by_epoch=True, save_best="coco/bbox_mAP", rule="greater", out_dir=str(folder))
    hook.out_dir, hook.file_backend, hook.last_ckpt, hook._atomic = str(folder), LocalBackend(), None, True
    saves = []

    def save_checkpoint(out_dir, filename, **kwargs):
        saves.append((filename, (folder / "best_coco_bbox_mAP_epoch_1.pth").is_file()))
        (Path(out_dir) / filename).write_bytes(b"weights")

    runner = SimpleNamespace(message_hub=MessageHub.get_instance(f"best {folder}"), iter=4, epoch=1,
                             logger=MMLogger.get_instance(f"best {folder}"), save_checkpoint=save_checkpoint)
    hook._save_best_checkpoint(runner, {"coco/bbox_mAP": 0.1})
    runner.epoch, runner.iter = 2, 8
    hook._save_best_checkpoint(runner, {"coco/bbox_mAP": 0.2})
    return saves


def test_upstream_save_best_deletes_the_previous_best_then_saves_in_place(tmp_path):
    """MMEngine 0.10.7's CheckpointHook: the previous best is gone before the new one is written, and the new one
    is written in place (engine/hooks/atomic_checkpoint.py's _save_best_checkpoint works around both)."""
    assert best_saves(CheckpointHook, tmp_path) == [("best_coco_bbox_mAP_epoch_1.pth", False),
                                                    ("best_coco_bbox_mAP_epoch_2.pth", False)]


def test_the_best_checkpoint_is_saved_atomically_before_the_previous_one_goes(tmp_path):
    saves = best_saves(AtomicCheckpointHook, tmp_path)
    assert [saved for _, saved in saves] == [False, True]  # the previous best was still there
    assert all(name.startswith(".") and "best_coco_bbox_mAP_epoch_" in name for name, _ in saves), saves  # temps
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best_coco_bbox_mAP_epoch_2.pth"]


def test_report_lists_every_start_and_where_it_resumed(tmp_path):
    description = ["config: c.py", "resuming from the newest checkpoint in the work dir"]
    report.record_training_start(tmp_path, description[:1], 1000.0, {"resumed_from": None, "iteration": 0})
    report.record_training_start(tmp_path, description, 2000.0,  # the first start was stopped (SIGTERM)
                                 {"resumed_from": str(tmp_path / "iter_24.pth"), "iteration": 24, "epoch": 0})
    best = {"file": "best_coco_bbox_mAP_epoch_3.pth", "metric": "coco/bbox_mAP", "score": 0.4123, "epoch": 3}
    report.record_training_run(tmp_path, description, 2000.0, 2600.0, {"best_checkpoint": best,
                                                                       "stopped_early": None})
    page = report.write_report(tmp_path).read_text()
    runs = json.loads((tmp_path / "run.json").read_text())["runs"]
    assert [run["finished"] is None for run in runs] == [True, False]
    assert runs[1]["best_checkpoint"]["file"] == "best_coco_bbox_mAP_epoch_3.pth"
    assert "did not finish (stopped or failed; the next start resumes)" in page
    assert f"resumed from {tmp_path / 'iter_24.pth'} at iteration 24" in page
    assert "best_coco_bbox_mAP_epoch_3.pth (epoch 3, coco/bbox_mAP 0.412)" in page
    assert "resuming from the newest checkpoint in the work dir" not in page


# --- slow: real trainings ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mlflow_and_tensorboard_runs_are_read_back(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    result = run_command("train", tiny_demo(work, 4, "--vis-backend", "mlflow", "--tensorboard"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    client = MlflowClient(tracking_uri=f"file://{work}/mlruns")
    (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [metric.step for metric in losses] == [1, 2, 3, 4] and all(metric.value > 0 for metric in losses)
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 4

    (events,) = work.glob("*/vis_data/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("loss")] == [1, 2, 3, 4]


def wandb_records(path: Path):
    """The records of a W&B run file (``run-ID.wandb``), decoded with wandb's own protobuf schema: a 7-byte
    header (":W&B", magic, version), then LevelDB's log format (32 KiB blocks of chunks, each with a 7-byte header:
    CRC, length, type full/first/middle/last), which wandb 0.31 writes and reads in its Go core only."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    position, chunks = 7, []
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the padding at the end of a block
            position += left
            continue
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


@pytest.mark.slow
def test_wandb_runs_offline_without_a_key_and_its_run_reads_back(tmp_path, monkeypatch):
    for variable in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(variable, raising=False)
    work = tmp_path / "work"
    result = run_command("train", tiny_demo(work, 3, "--vis-backend", "wandb"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_file,) = work.glob("wandb/offline-run-*/run-*.wandb")
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
               for record in wandb_records(run_file) if record.WhichOneof("record_type") == "history"]
    assert len(history) == 3 and all(entry["loss"] > 0 and entry["lr"] > 0 for entry in history), history


@pytest.mark.slow
def test_patience_stops_a_run_that_stops_improving_and_resume_takes_the_newest_checkpoint(tmp_path):
    work = tmp_path / "work"
    # A learning rate of 0: the validation mAP cannot improve, so --patience 1 stops after the 2nd validation.
    result = run_command("train", validating_demo(work, 4, "--patience", "1",
                                                  options=["optim_wrapper.optimizer.lr=0"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stop = re.search(r"\[pisa-train\] (stopping early at epoch 2: coco/bbox_mAP has not improved on its best, "
                     r"[\d.]+, in the last 1 validations \(--patience 1\))", result.stdout)
    assert stop, result.stdout[-3000:]
    assert f"mmengine - INFO - {stop.group(1)}" in result.stdout  # in the log as well
    (first,) = json.loads((work / "run.json").read_text())["runs"]
    assert first["stopped_early"] == stop.group(1)
    best = first["best_checkpoint"]
    assert re.fullmatch(r"best_coco_bbox_mAP_iter_4\.pth", best["file"]) and best["epoch"] == 1, best
    assert (work / best["file"]).is_file()
    assert f"best checkpoint: {best['file']} (epoch 1, iteration 4, coco/bbox_mAP" in result.stdout
    page = (work / "report.html").read_text()
    assert stop.group(1) in page and best["file"] in page

    # --resume continues from the newest checkpoint (iteration 8), never from the best one (iteration 4).
    result = run_command("train", validating_demo(work, 3, "--resume"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {work / 'iter_8.pth'}" in result.stdout
    first, second = json.loads((work / "run.json").read_text())["runs"]
    assert (first["resumed_from"], first["start_iteration"]) == (None, 0)
    assert (second["resumed_from"], second["start_iteration"]) == (str(work / "iter_8.pth"), 8)
    page = (work / "report.html").read_text()
    assert f"resumed from {work / 'iter_8.pth'} at iteration 8" in page and "<h3>starts</h3>" in page


# --- pisa-infer: video, frames, Ctrl-C ----------------------------------------------------------------------

def write_video(path: Path, seconds: int = 2, fps: int = 10, size: int = 64) -> None:
    """A moving red disc on white, as mp4v (the codec every OpenCV build writes)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for frame in range(seconds * fps):
        image = np.full((size, size, 3), 255, np.uint8)
        cv2.circle(image, (12 + frame * 2, 32), 10, (0, 0, 255), -1)
        writer.write(image)
    writer.release()


def infer_args(checkpoint: Path, *inputs, out: Path, flags=()) -> list[str]:
    return [str(DEMO_CONFIG), str(checkpoint), *map(str, inputs), "--out", str(out), "--device", "cpu", *flags,
            "--cfg-options", *MODEL_OPTIONS, "--cfg-add", "model.backbone.base_channels=16"]


def test_an_unreadable_video_is_one_line(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 but not a video")
    assert infer_cli.main(infer_args(tmp_path / "c.pth", video, out=tmp_path / "out")) == exit_codes.DATA_ERROR
    assert one_line(capsys.readouterr().err) == (
        f"pisa-infer: error: video {video} cannot be read (not a video OpenCV can open); give a video file that "
        f"OpenCV's FFmpeg reads (mp4/H.264, avi, mkv, webm), or its frames as images in a folder")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("tiny")
    result = run_command("train", tiny_demo(cwd / "work", 1), cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "work" / "iter_1.pth"


@pytest.mark.slow
def test_eval_logs_its_coco_metrics_to_mlflow(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    result = run_command("evaluate", tiny_eval(tiny_checkpoint, work, "--vis-backend", "mlflow"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[pisa-eval] metrics logged to MLflowVisBackend" in result.stdout
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=f"file://{work}/mlruns")
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    evaluation = json.loads((work / "evaluation.json").read_text())
    logged = [run.data.metrics for run in runs if "test/bbox_AP" in run.data.metrics]
    assert logged == [{f"test/bbox_{name}": value for name, value in evaluation["bbox"].items()}]


@pytest.mark.slow
def test_infer_turns_a_video_into_an_annotated_video_and_a_folder_of_frames_into_images(tiny_checkpoint, tmp_path):
    write_video(tmp_path / "clip.mp4")
    frames = tmp_path / "frames"
    frames.mkdir()
    capture = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    for index in range(3):
        cv2.imwrite(str(frames / f"{index:05d}.png"), capture.read()[1])
    out = tmp_path / "out"
    result = run_command("infer", infer_args(tiny_checkpoint, tmp_path / "clip.mp4", frames, out=out,
                                             flags=["--score-thr", "0.05"]), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "in 3 images and 1 video (20 frames) on cpu" in result.stdout
    assert re.search(r"images and frames: 100\.0% 23 of 23 frames, .* ETA 0:00", result.stdout), result.stdout
    record = json.loads((out / "detections.json").read_text())
    assert record["complete"] is True and record["images_done"] == 23
    video_entries = [entry for entry in record["images"] if entry["file_name"] == str(tmp_path / "clip.mp4")]
    assert [entry["frame"] for entry in video_entries] == list(range(20))
    assert all((entry["width"], entry["height"]) == (64, 64) for entry in video_entries)
    assert record["videos"] == [{"file_name": str(tmp_path / "clip.mp4"), "fps": 10.0, "drawn": str(out / "clip.mp4"),
                                 "frames": 20}]
    drawn = cv2.VideoCapture(str(out / "clip.mp4"))
    assert (drawn.get(cv2.CAP_PROP_FPS), drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == (10.0, 20.0)
    assert sorted(path.name for path in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]


@pytest.mark.slow
def test_ctrl_c_in_infer_leaves_a_valid_detections_json_and_a_fresh_out_never_mixes(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = next((tiny_checkpoint.parents[1] / "data" / "demo_shapes" / "train").glob("*.jpg"))
    for index in range(200):  # a few images a second: the first progress line comes after 5 s, with many to go
        shutil.copy(source, images / f"{index:03d}.jpg")
    out = tmp_path / "out"
    out.mkdir()  # an earlier run's results, which the new run must not mix with
    (out / "old.jpg").write_bytes(b"earlier drawing")
    (out / "notes.txt").write_text("not pisa-infer's")
    (out / "detections.json").write_text(json.dumps({"images": [{"drawn": str(out / "old.jpg"), "detections": []}]}))
    process = subprocess.Popen([sys.executable, "-m", "pisa_train.cli.infer",
                                *infer_args(tiny_checkpoint, images, out=out)],
                               cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:  # progress comes every tenth of the way (5 s apart at least) without a terminal
        lines.append(line)
        if re.search(r"images: +\d+\.\d% \d+ of 200 images", line) and "100.0%" not in line:
            process.send_signal(signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=300)
    stdout = "".join(lines) + stdout
    assert process.returncode == exit_codes.INTERRUPTED, stderr[-3000:]
    stopped = re.search(r"\[pisa-infer\] stopped after (\d+) of 200 images; (.+) holds those \1", stdout)
    assert stopped, stdout[-3000:]
    done = int(stopped.group(1))
    assert 20 <= done < 200 and stopped.group(2) == str(out / "detections.json")
    record = json.loads((out / "detections.json").read_text())
    assert record["complete"] is False and record["images_done"] == done == len(record["images"])
    assert [entry["file_name"] for entry in record["images"]] == [str(images / f"{i:03d}.jpg") for i in range(done)]
    assert not (out / "old.jpg").exists() and (out / "notes.txt").is_file()
    assert "removed an earlier run's detections.json and drawings from" in stdout
