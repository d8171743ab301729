"""Level (a): the command lines, asserting on the config each would hand to MMEngine, and
on the one-line errors and exit codes users see for bad input."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import DEMO_CONFIG, REPO_ROOT, X101_PISA_CONFIG
from roboflow_export import read_export

from pisa_train import exit_codes
from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_test_config, build_train_config
from pisa_train.error_reporting import run_reporting_errors


def train_config(*argv, device="cpu"):
    args = train_cli.parse_request([str(a) for a in argv])
    return build_train_config(args, device)[0]


def test_work_dir_precedence_command_line_then_config_then_file_name(tmp_path):
    assert train_config(X101_PISA_CONFIG, "--work-dir", tmp_path / "w").work_dir == str(tmp_path / "w")
    from_config = train_config(X101_PISA_CONFIG, "--cfg-options", "work_dir=/somewhere/else")
    assert from_config.work_dir == "/somewhere/else"
    assert train_config(X101_PISA_CONFIG).work_dir == "./work_dirs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco"


def test_cfg_options_values_are_parsed_like_mmengine_dictaction():
    cfg = train_config(X101_PISA_CONFIG, "--cfg-options", "train_dataloader.batch_size=4",
                       "model.backbone.init_cfg=None", "optim_wrapper.optimizer.lr=0.01",
                       "model.rpn_head.anchor_generator.ratios=[0.5,1.0]",
                       "model.backbone.out_indices=(1,2)")
    assert cfg.train_dataloader.batch_size == 4
    assert cfg.model.backbone.init_cfg is None
    assert cfg.optim_wrapper.optimizer.lr == 0.01
    assert cfg.model.rpn_head.anchor_generator.ratios == [0.5, 1.0]
    assert cfg.model.backbone.out_indices == (1, 2)


def test_flags_rewrite_the_config_as_mmdetection_train_does(tmp_path):
    checkpoint = tmp_path / "epoch_3.pth"
    checkpoint.write_bytes(b"not read here")
    cfg = train_config(X101_PISA_CONFIG, "--amp", "--auto-scale-lr", "--resume", checkpoint,
                       "--seed", "7", "--launcher", "pytorch")
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "bfloat16"  # on the CPU
    assert cfg.auto_scale_lr.enable is True and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.resume is True and cfg.load_from == str(checkpoint)
    assert cfg.randomness.seed == 7
    assert cfg.launcher == "pytorch"
    bare = train_config(X101_PISA_CONFIG, "--resume")
    assert bare.resume is True and bare.load_from is None


def test_max_iters_makes_an_iteration_based_run_without_validation():
    cfg = train_config(X101_PISA_CONFIG, "--max-iters", "2")
    assert cfg.train_cfg.type == "IterBasedTrainLoop" and cfg.train_cfg.max_iters == 2
    assert cfg.val_dataloader is None and cfg.val_cfg is None and cfg.val_evaluator is None  # no validation
    assert cfg.default_hooks.checkpoint.by_epoch is False and cfg.default_hooks.checkpoint.interval == 2
    assert cfg.default_hooks.logger.interval == 2
    untouched = train_config(X101_PISA_CONFIG)
    assert untouched.train_cfg.type == "EpochBasedTrainLoop" and untouched.train_cfg.max_epochs == 12


def test_cpu_runs_use_gloo_for_distributed_and_cuda_runs_keep_nccl():
    assert train_config(X101_PISA_CONFIG, device="cpu").env_cfg.dist_cfg.backend == "gloo"
    assert train_config(X101_PISA_CONFIG, device="cuda").env_cfg.dist_cfg.backend == "nccl"


def test_eval_config_loads_the_checkpoint_and_draws_into_show_dir(tmp_path):
    checkpoint = tmp_path / "iter_2.pth"
    checkpoint.write_bytes(b"x")
    args = eval_cli.parse_request([str(DEMO_CONFIG), str(checkpoint), "--show-dir", str(tmp_path / "vis"),
                                               "--work-dir", str(tmp_path / "w")])
    cfg, _ = build_test_config(args, "cpu")
    assert cfg.load_from == str(checkpoint) and not cfg.resume
    assert cfg.default_hooks.visualization.draw is True
    assert cfg.default_hooks.visualization.test_out_dir == str(tmp_path / "vis")
    assert cfg.work_dir == str(tmp_path / "w")


@pytest.mark.parametrize("argv, code, message", [
    (["configs/no_such_config.py"], exit_codes.CONFIG_ERROR,
     "config file configs/no_such_config.py not found; configs/ holds: faster_rcnn_r50_fpn_1x_coco.py, "
     "faster_rcnn_x101_32x4d_fpn_1x_coco.py, pisa_faster_rcnn_r18_fpn_demo_shapes.py, "
     "pisa_faster_rcnn_r50_fpn_1x_coco.py, pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py, "
     "pisa_mask_rcnn_r50_fpn_1x_coco.py, pisa_mask_rcnn_x101_32x4d_fpn_1x_coco.py, pisa_retinanet_r50_fpn_1x_coco.py, "
     "pisa_retinanet_x101_32x4d_fpn_1x_coco.py, pisa_ssd300_coco.py, pisa_ssd512_coco.py"),
    (["configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_cocoo.py"], exit_codes.CONFIG_ERROR,
     "config file configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_cocoo.py not found; "
     "did you mean configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py?"),
    ([str(X101_PISA_CONFIG), "--cfg-options", "train_dataloader.batch_size"], exit_codes.CONFIG_ERROR,
     "--cfg-options item 'train_dataloader.batch_size' is not KEY=VALUE; write it like train_dataloader.batch_size=4 "
     "or model.backbone.init_cfg=None"),
    ([str(X101_PISA_CONFIG), "--cfg-options", "model.backbone.out_indices=[0,1"], exit_codes.CONFIG_ERROR,
     "--cfg-options value for 'model.backbone.out_indices' cannot be parsed: '[0,1' (check that its brackets and "
     "quotes are balanced)"),
    ([str(X101_PISA_CONFIG), "--resume", "missing.pth"], exit_codes.CHECKPOINT_ERROR,
     "--resume checkpoint missing.pth not found; give the path of a .pth file, or --resume alone to continue from the "
     "newest checkpoint in the work dir"),
    ([str(X101_PISA_CONFIG), "--max-iters", "0"], exit_codes.USAGE_ERROR, "--max-iters must be at least 1, not 0"),
])
def test_bad_input_gets_one_clear_line_and_an_exit_code(argv, code, message, capsys, tmp_path):
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")  # relative config paths, as from a clone
    assert train_cli.main(argv + ["--device", "cpu"]) == code
    assert capsys.readouterr().err == f"pisa-train: error: {message}\n"


def test_config_with_a_syntax_error_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("_base_ = './x.py'\nmodel = dict(type='FasterRCNN'\n")
    assert train_cli.main([str(broken), "--device", "cpu"]) == exit_codes.CONFIG_ERROR
    assert capsys.readouterr().err == (f"pisa-train: error: config {broken} (or one of its _base_ files) has a syntax "
                                       f"error: '(' was never closed (<unknown>, line 2)\n")


def test_missing_coco_data_says_how_to_get_it(tmp_path, capsys):
    # The working directory is tmp_path (conftest): no data/coco here.
    code = train_cli.main([str(X101_PISA_CONFIG), "--device", "cpu", "--work-dir", str(tmp_path / "w")])
    assert code == exit_codes.DATA_ERROR
    assert capsys.readouterr().err == (
        "pisa-train: error: annotation file data/coco/annotations/instances_train2017.json not found "
        "(train_dataloader.dataset.ann_file) (and 4 more missing); download COCO 2017 with `pisa-data download "
        "coco2017 --dest data/coco`, or point the config at a COCO-format folder with --data DIR\n")
    assert not (tmp_path / "w").exists()  # nothing started, nothing written


def test_eval_bad_input(tmp_path, capsys):
    assert eval_cli.main([str(DEMO_CONFIG), str(tmp_path / "none.pth"), "--device", "cpu"]) == exit_codes.CHECKPOINT_ERROR
    assert capsys.readouterr().err == (
        f"pisa-eval: error: checkpoint {tmp_path / 'none.pth'} not found; give the path of a .pth file written by "
        f"pisa-train (work_dirs/<config>/epoch_N.pth or iter_N.pth), a released model's name (pisa-train --list) or "
        f"an URL\n")
    checkpoint = tmp_path / "c.pth"
    checkpoint.write_bytes(b"x")
    assert eval_cli.main([str(DEMO_CONFIG), str(checkpoint), "--out", "m.pkl", "--device", "cpu"]) == exit_codes.USAGE_ERROR
    assert capsys.readouterr().err == ("pisa-eval: error: --out m.pkl: the metrics are written as JSON; give a file "
                                       "name ending in .json\n")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_asked_for_but_absent(capsys):
    assert train_cli.main([str(X101_PISA_CONFIG), "--device", "cuda"]) == exit_codes.ENVIRONMENT_ERROR
    assert capsys.readouterr().err == (
        f"pisa-train: error: --device cuda asked for, but no CUDA GPU is visible (torch {torch.__version__} built with "
        f"CUDA {torch.version.cuda}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
        f"check nvidia-smi, or train on the CPU with --device cpu\n")


@pytest.mark.parametrize("module", ["train", "evaluate"])
def test_help_imports_neither_torch_nor_mmdet(module):
    code = (f"import sys\nfrom pisa_train.cli.{module} import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = sorted(m for m in ('torch', 'mmdet', 'mmengine', 'mmcv') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage:" in out
    assert "HEAVY []" in out


def test_unexpected_errors_are_one_line_with_a_debug_hint(capsys):
    def broken():
        raise RuntimeError("something upstream broke\nsecond line")

    assert run_reporting_errors("pisa-x", broken) == exit_codes.UNEXPECTED_ERROR
    err = capsys.readouterr().err
    assert err.strip() == "pisa-x: error: RuntimeError: something upstream broke (rerun with --debug for the traceback)"
    assert run_reporting_errors("pisa-x", broken, debug=True) == exit_codes.UNEXPECTED_ERROR
    assert "Traceback" in capsys.readouterr().err


def test_data_points_the_x101_config_at_a_roboflow_export(roboflow_export):
    export = roboflow_export
    classes = read_export(export).classes
    cfg = train_config(X101_PISA_CONFIG, "--data", export)
    dataset = cfg.train_dataloader.dataset
    assert tuple(dataset.metainfo.classes) == classes
    assert cfg.model.roi_head.bbox_head.num_classes == len(classes)
    assert dataset.data_root == str(export)
    # Roboflow numbers annotations from 0, which COCO evaluation reads as "unmatched": a renumbered copy.
    assert dataset.ann_file == os.path.abspath(os.path.join(cfg.work_dir, "annotations", "train.json"))
    assert cfg.val_dataloader is None  # a train split only: no validation
    args = train_cli.parse_request([str(X101_PISA_CONFIG), "--data", str(export)])
    notes = build_train_config(args, "cpu")[1]
    assert any(classes[0] in line for line in notes)
    assert any("without validation" in line for line in notes)
