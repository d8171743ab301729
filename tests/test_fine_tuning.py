"""--load-from: start from a checkpoint's weights; trained on other classes, only the class-specific
layers start fresh (named in one line), and any other difference is refused."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import X101_PISA_CONFIG
from roboflow_export import read_export
from tiny_training import tiny_demo
from torch import nn

from pisa_train import exit_codes
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_train_config
from pisa_train.engine.checkpoint_files import load_checkpoint_file
from pisa_train.engine.hooks.checkpoint_compatibility import CLASS_SPECIFIC_LAYER, prepare_fine_tuning
from pisa_train.engine.runner import describe_run
from pisa_train.errors import CheckpointError
from pisa_train.fetch.model_zoo import MODEL_ZOO


def train_config(*argv):
    args = train_cli.parse_request([str(a) for a in argv])
    return build_train_config(args, "cpu")[0]


def test_load_from_a_model_name_starts_from_its_released_weights_and_skips_the_imagenet_download():
    cfg = train_config(X101_PISA_CONFIG, "--load-from", "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco")
    assert cfg.load_from == MODEL_ZOO["pisa_faster_rcnn_x101_32x4d_fpn_1x_coco"].weights_url
    assert cfg.resume is False  # weights only: no optimizer state, no iteration
    assert cfg.model.backbone.init_cfg is None
    assert dict(type="FineTuneCheckpointHook") in cfg.custom_hooks
    assert "CheckpointMatchesModelHook" not in str(cfg.custom_hooks)

    assert describe_run(cfg, "cpu")[-1] == (f"starting from the weights of {cfg.load_from} (not its optimizer state "
                                            f"or iteration)")
    url = "https://example.org/w/model-12345678.pth"
    assert train_config(X101_PISA_CONFIG, "--load-from", url).load_from == url
    plain = train_config(X101_PISA_CONFIG)
    assert plain.model.backbone.init_cfg.checkpoint == "open-mmlab://resnext101_32x4d"
    assert "FineTuneCheckpointHook" not in str(plain.custom_hooks)


@pytest.mark.parametrize("argv, code, line", [
    (["--load-from", "pisa_faster_rcnn_x101_32x4d_fpn_1x_cocoo"], exit_codes.CHECKPOINT_ERROR,
     "pisa-train: error: --load-from pisa_faster_rcnn_x101_32x4d_fpn_1x_cocoo: no such file, and not a released "
     "model or an URL; did you mean pisa_faster_rcnn_x101_32x4d_fpn_1x_coco?"),
    (["--load-from", "missing.pth"], exit_codes.CHECKPOINT_ERROR,
     "pisa-train: error: --load-from missing.pth: no such file, and not a released model or an URL; give a .pth "
     "file, an http(s) URL, or a released model's name (`pisa-train --list`)"),
    (["--load-from", "pisa_mask_rcnn_x101_32x4d_fpn_1x_coco"], exit_codes.CHECKPOINT_ERROR,
     "pisa-train: error: pisa_mask_rcnn_x101_32x4d_fpn_1x_coco has a config but no released checkpoint "
     "(MMDetection published none); train it, or start from another model's weights"),
    (["--load-from", "pisa_ssd300_coco", "--resume"], exit_codes.USAGE_ERROR,
     "pisa-train: error: --load-from starts a new run from a checkpoint's weights and --resume continues a run "
     "with its optimizer state and iteration; give one of them"),
])
def test_bad_load_from_gets_one_line(argv, code, line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_cli.main([str(X101_PISA_CONFIG), "--device", "cpu", *argv]) == code
    assert capsys.readouterr().err.strip().splitlines() == [line]


class Head(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.shared_fcs = nn.Linear(8, 8)
        self.fc_cls = nn.Linear(8, num_classes + 1)
        self.fc_reg = nn.Linear(8, 4 * num_classes)


class TwoStage(nn.Module):
    """The module names of mmdet's two-stage detectors, at toy size."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.backbone = nn.Conv2d(3, width, 3)
        self.roi_head = nn.Module()
        self.roi_head.bbox_head = Head(num_classes)


def checkpoint_of(model, classes) -> dict:
    return {"meta": {"dataset_meta": {"classes": classes}},
            "state_dict": {key: value.clone() for key, value in model.state_dict().items()}}


def test_other_classes_reinitialise_the_class_layers_and_keep_the_rest():
    source, target = TwoStage(3), TwoStage(1)
    checkpoint = checkpoint_of(source, ["circle", "square", "triangle"])
    fresh_cls = target.roi_head.bbox_head.fc_cls.weight.detach().clone()
    line = prepare_fine_tuning(target, checkpoint, "demo.pth")
    assert line == ("fine-tuning from demo.pth, trained on 3 classes (circle, square, triangle), to num_classes=1: "
                    "roi_head.bbox_head.fc_cls, roi_head.bbox_head.fc_reg start from fresh weights; every other "
                    "weight is the checkpoint's")
    target.load_state_dict(checkpoint["state_dict"], strict=True)  # every shape fits now
    assert torch.equal(target.backbone.weight, source.backbone.weight)
    assert torch.equal(target.roi_head.bbox_head.shared_fcs.weight, source.roi_head.bbox_head.shared_fcs.weight)
    assert torch.equal(target.roi_head.bbox_head.fc_cls.weight, fresh_cls)
    # Same classes: nothing to say, nothing changed.
    assert prepare_fine_tuning(TwoStage(3), checkpoint_of(source, ["a", "b", "c"]), "x.pth") is None


def test_any_other_difference_is_refused():
    with pytest.raises(CheckpointError) as refused:
        prepare_fine_tuning(TwoStage(1, width=16), checkpoint_of(TwoStage(3), ["a", "b", "c"]), "other.pth")
    assert str(refused.value) == (
        "checkpoint other.pth is for another model: backbone.weight is [8, 3, 3, 3] in the checkpoint and "
        "[16, 3, 3, 3] in this model (and 1 more weights differ in shape); it was trained on 3 classes (a, b, c), "
        "this config has num_classes=1; only the class-specific layers may differ when fine-tuning (--load-from): "
        "start from a checkpoint of this architecture")


@pytest.mark.parametrize("key, class_specific", [
    ("roi_head.bbox_head.fc_cls.weight", True), ("roi_head.bbox_head.fc_reg.bias", True),
    ("roi_head.mask_head.conv_logits.weight", True), ("roi_head.bbox_head.1.fc_cls.weight", True),
    ("bbox_head.retina_cls.weight", True), ("bbox_head.cls_convs.3.0.weight", True),
    ("roi_head.bbox_head.shared_fcs.0.weight", False), ("bbox_head.retina_reg.weight", False),
    ("bbox_head.reg_convs.0.0.weight", False), ("rpn_head.rpn_cls.weight", False),
    ("roi_head.mask_head.convs.0.conv.weight", False)])
def test_the_class_specific_layers_of_each_detector(key, class_specific):
    assert bool(CLASS_SPECIFIC_LAYER.match(key)) == class_specific


@pytest.mark.slow
def test_a_three_class_demo_checkpoint_fine_tunes_onto_the_one_class_roboflow_export(tmp_path, roboflow_export):
    def train(work, *flags, options=()):
        result = subprocess.run([sys.executable, "-m", "pisa_train.cli.train",
                                 *tiny_demo(work, 1, *flags, options=options)],
                                cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return result.stdout + result.stderr, load_checkpoint_file(str(work / "iter_1.pth"))["state_dict"]

    classes = read_export(roboflow_export).classes
    _, source = train(tmp_path / "demo")
    # Learning rate 0 and BatchNorm statistics frozen: nothing may change what was loaded.
    output, tuned = train(tmp_path / "tuned", "--data", roboflow_export, "--load-from", tmp_path / "demo" / "iter_1.pth",
                          options=["optim_wrapper.optimizer.lr=0", "model.backbone.norm_eval=True"])
    assert (f"fine-tuning from {tmp_path / 'demo' / 'iter_1.pth'}, trained on 3 classes (circle, square, triangle), "
            f"to num_classes={len(classes)}: roi_head.bbox_head.fc_cls, roi_head.bbox_head.fc_reg start from fresh weights; "
            f"every other weight is the checkpoint's") in output
    assert "size mismatch" not in output
    kept = [key for key in source if key.startswith(("backbone.", "neck.", "rpn_head.", "roi_head.bbox_head.shared"))]
    assert len(kept) > 100
    assert [key for key in kept if not torch.equal(source[key], tuned[key])] == []
    assert tuned["roi_head.bbox_head.fc_cls.weight"].shape[0] == len(classes) + 1  # + background
    assert source["roi_head.bbox_head.fc_cls.weight"].shape[0] == 4
    assert tuned["roi_head.bbox_head.fc_reg.weight"].shape[0] == 4 * len(classes)
