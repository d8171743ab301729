"""--print-config [KEY]: the config a run would hand to MMEngine, printed instead of run."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import DEMO_CONFIG, X101_PISA_CONFIG, run_command
from mmengine.config import Config
from roboflow_export import read_export
from tiny_training import tiny_demo

from pisa_train import exit_codes
from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_train_config


def test_a_part_of_the_config_after_data_and_overrides(roboflow_export, capsys):
    code = train_cli.main([str(X101_PISA_CONFIG), "--print-config", "model.roi_head", "--data", str(roboflow_export),
                           "--device", "cpu", "--cfg-options", "model.roi_head.bbox_head.fc_out_channels=512"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith("roi_head = dict(\n")
    roi_head = Config.fromstring(captured.out, ".py").roi_head
    assert roi_head.type == "PISARoIHead"
    classes = read_export(roboflow_export).classes
    assert roi_head.bbox_head.num_classes == len(classes)  # --data: the export's classes (one, shuttlecock)
    assert roi_head.bbox_head.fc_out_channels == 512  # --cfg-options
    # What --data resolved, beside the config.
    assert f"[pisa-train]   classes ({len(classes)}): {', '.join(classes)}" in captured.err


def test_the_whole_config_is_what_the_builder_hands_to_mmengine(capsys):
    argv = [str(X101_PISA_CONFIG), "--device", "cpu", "--max-iters", "3", "--seed", "7"]
    assert train_cli.main([*argv, "--print-config"]) == 0
    printed = Config.fromstring(capsys.readouterr().out, ".py")
    built = build_train_config(train_cli.parse_request(argv), "cpu").cfg
    assert printed.to_dict() == Config.fromstring(built.pretty_text, ".py").to_dict()
    assert printed.train_cfg == dict(type="IterBasedTrainLoop", max_iters=3)  # the flags are applied
    assert printed.randomness.seed == 7


@pytest.mark.parametrize("key, expected", [
    ("model.roi_hed", "--print-config 'model.roi_hed' is not in the config; did you mean 'model.roi_head'?"),
    ("model.qqqqqqqqq", "--print-config 'model.qqqqqqqqq' is not in the config; 'model' has: type, "
                        "data_preprocessor, backbone, neck, rpn_head, roi_head, train_cfg, test_cfg"),
    ("train_cfg.max_epochs.x", "--print-config 'train_cfg.max_epochs.x' is not in the config; "
                               "'train_cfg.max_epochs' is 12, which has no 'x'"),
])
def test_an_unknown_key_is_refused_with_the_closest_real_one(capsys, key, expected):
    assert train_cli.main([str(X101_PISA_CONFIG), "--device", "cpu", "--print-config", key]) == \
        exit_codes.CONFIG_ERROR
    captured = capsys.readouterr()
    assert captured.err.strip() == f"pisa-train: error: {expected}" and captured.out == ""


def test_a_bare_resume_shows_the_checkpoint_the_run_would_continue_from(tmp_path, capsys):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    for iteration in (1, 2):
        torch.save({"meta": {"epoch": 0, "iter": iteration}, "state_dict": {}}, work_dir / f"iter_{iteration}.pth")
    (work_dir / "iter_3.pth").write_bytes(b"cut short by a kill")
    assert train_cli.main([str(DEMO_CONFIG), "--device", "cpu", "--work-dir", str(work_dir), "--resume",
                           "--print-config", "load_from"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"load_from = '{work_dir / 'iter_2.pth'}'\n"
    assert f"[pisa-train] resuming from {work_dir / 'iter_2.pth'}" in captured.err
    assert f"[pisa-train] skipping checkpoint {work_dir / 'iter_3.pth'}: " in captured.err


def test_nothing_is_trained_or_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo config generates data/demo_shapes/ and work_dirs/ here when it runs
    assert train_cli.main([str(DEMO_CONFIG), "--device", "cpu", "--print-config", "synthetic_dataset"]) == 0
    assert Config.fromstring(capsys.readouterr().out, ".py").synthetic_dataset.num_train_images == 300
    assert os.listdir(tmp_path) == []


def test_pisa_eval_prints_its_test_config(tmp_path, capsys):
    checkpoint = tmp_path / "epoch_1.pth"
    checkpoint.write_bytes(b"not read when printing")
    assert eval_cli.main([str(DEMO_CONFIG), str(checkpoint), "--device", "cpu", "--work-dir", str(tmp_path / "w"),
                          "--print-config"]) == 0
    cfg = Config.fromstring(capsys.readouterr().out, ".py")
    assert cfg.load_from == str(checkpoint) and cfg.resume is False
    assert cfg.test_evaluator.format_only is True
    assert cfg.test_evaluator.outfile_prefix == str(tmp_path / "w" / "test_detections")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_the_printed_config_is_the_one_the_run_dumps(tmp_path):
    work_dir = tmp_path / "work"
    argv = tiny_demo(work_dir, 1, options=["default_hooks.checkpoint.save_best=auto"])
    printed = run_command("train", [*argv, "--print-config"], cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert not work_dir.exists() and not (tmp_path / "data").exists()
    trained = run_command("train", argv, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    dumped = work_dir / DEMO_CONFIG.name  # MMEngine's Runner saves the config it was handed
    assert Config.fromstring(printed.stdout, ".py").to_dict() == Config.fromfile(str(dumped)).to_dict()
    assert printed.stdout == dumped.read_text()  # the same text, byte for byte
