"""Level (b): the configs. The eight PISA configs (and the two Faster R-CNN baselines) equal
MMDetection 3.3.0's own, key by key, and every config in configs/ loads and builds its model."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import CONFIGS
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

# Our config -> the installed mmdet's config it must equal once merged.
MMDET_EQUIVALENTS = {
    "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py": "pisa/faster-rcnn_x101-32x4d_fpn_pisa_1x_coco.py",
    "pisa_faster_rcnn_r50_fpn_1x_coco.py": "pisa/faster-rcnn_r50_fpn_pisa_1x_coco.py",
    "faster_rcnn_x101_32x4d_fpn_1x_coco.py": "faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py",
    "faster_rcnn_r50_fpn_1x_coco.py": "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py",
    "pisa_mask_rcnn_r50_fpn_1x_coco.py": "pisa/mask-rcnn_r50_fpn_pisa_1x_coco.py",
    "pisa_mask_rcnn_x101_32x4d_fpn_1x_coco.py": "pisa/mask-rcnn_x101-32x4d_fpn_pisa_1x_coco.py",
    "pisa_retinanet_r50_fpn_1x_coco.py": "pisa/retinanet-r50_fpn_pisa_1x_coco.py",
    "pisa_retinanet_x101_32x4d_fpn_1x_coco.py": "pisa/retinanet_x101-32x4d_fpn_pisa_1x_coco.py",
    "pisa_ssd300_coco.py": "pisa/ssd300_pisa_coco.py",
    "pisa_ssd512_coco.py": "pisa/ssd512_pisa_coco.py",
}
PISA_ZOO = sorted(name[:-3] for name in MMDET_EQUIVALENTS if name.startswith("pisa_"))
USER_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.py"))


def installed_mmdet_configs() -> Path:
    spec = importlib.util.find_spec("mmdet")
    assert spec is not None and spec.origin, "mmdet is not installed"
    return Path(spec.origin).parent / ".mim" / "configs"


def flatten(value, prefix=""):
    """{'a.b.0.c': leaf} for nested dicts and lists, so two configs compare key by key."""
    if isinstance(value, dict):
        items = {}
        for key, inner in value.items():
            items.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return items or {prefix: {}}
    if isinstance(value, (list, tuple)):
        items = {}
        for index, inner in enumerate(value):
            items.update(flatten(inner, f"{prefix}.{index}"))
        return items or {prefix: type(value)()}
    return {prefix: value}


@pytest.mark.parametrize("ours, theirs", sorted(MMDET_EQUIVALENTS.items()))
def test_config_equals_the_installed_mmdetection_config_key_by_key(ours, theirs):
    mmdet_path = installed_mmdet_configs() / theirs
    assert mmdet_path.is_file(), f"{mmdet_path} missing from the installed mmdet"
    ours_flat = flatten(Config.fromfile(str(CONFIGS / ours)).to_dict())
    theirs_flat = flatten(Config.fromfile(str(mmdet_path)).to_dict())
    only_ours = sorted(set(ours_flat) - set(theirs_flat))
    only_theirs = sorted(set(theirs_flat) - set(ours_flat))
    different = sorted(k for k in set(ours_flat) & set(theirs_flat) if ours_flat[k] != theirs_flat[k])
    assert not only_ours, f"keys only in {ours}: {only_ours}"
    assert not only_theirs, f"keys only in mmdet's {theirs}: {only_theirs}"
    assert not different, "values that differ: " + "; ".join(
        f"{k}: ours {ours_flat[k]!r}, mmdet {theirs_flat[k]!r}" for k in different)
    # The areas that make each model what it is must be among the compared keys, so that a vacuous
    # comparison cannot pass.
    areas = ["param_scheduler.1.milestones.0", "optim_wrapper.optimizer.lr", "default_hooks.checkpoint.type",
             "train_dataloader.batch_size", "train_cfg.max_epochs", "model.backbone.init_cfg.checkpoint"]
    two_stage = "rcnn" in ours
    areas += ["model.roi_head.bbox_head.loss_bbox.type"] if two_stage else ["model.bbox_head.type"]
    if ours.startswith("pisa_"):
        areas += (["model.train_cfg.rcnn.sampler.k", "model.train_cfg.rcnn.isr.k", "model.train_cfg.rcnn.carl.bias"]
                  if two_stage else ["model.train_cfg.isr.k", "model.train_cfg.carl.bias"])
    if "mask_rcnn" in ours:
        areas += ["model.roi_head.mask_head.num_classes", "val_evaluator.metric.1"]
    if "ssd" in ours:
        areas += ["train_dataloader.dataset.times", "optim_wrapper.clip_grad.max_norm", "input_size"]
    assert not [a for a in areas if a not in ours_flat]


@pytest.mark.parametrize("name", PISA_ZOO)
def test_every_pisa_model_of_mmdetection_has_its_config(name):
    """The eight models of mmdet's configs/pisa/ are here under their model names, and PISA's."""
    assert len(PISA_ZOO) == 8
    cfg = Config.fromfile(str(CONFIGS / f"{name}.py"))
    head = cfg.model.roi_head.type if "rcnn" in name else cfg.model.bbox_head.type
    assert head in ("PISARoIHead", "PISARetinaHead", "PISASSDHead")
    assert ("x101" in name) == (cfg.model.backbone.type == "ResNeXt")


def test_pisa_configs_really_are_pisa():
    cfg = Config.fromfile(str(CONFIGS / "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"))
    assert cfg.model.roi_head.type == "PISARoIHead"
    assert cfg.model.train_cfg.rcnn.sampler.type == "ScoreHLRSampler"
    assert cfg.model.backbone.type == "ResNeXt" and cfg.model.backbone.groups == 32
    assert cfg.model.backbone.base_width == 4 and cfg.model.backbone.depth == 101


@pytest.mark.parametrize("name", USER_CONFIGS)
def test_config_names_follow_the_mmdetection_convention(name):
    # {model}_{backbone}_{neck}_{schedule}_{dataset}.py; SSD's name carries its input size instead
    assert re.fullmatch(r"(pisa_)?((faster|mask)_rcnn|retinanet)_(r\d+|x101_32x4d)_fpn_(1x|demo)_(coco|shapes)\.py"
                        r"|pisa_ssd(300|512)_coco\.py", name), name


@pytest.mark.parametrize("name", USER_CONFIGS)
def test_every_config_builds_its_model(name):
    register_all_modules()
    cfg = Config.fromfile(str(CONFIGS / name))
    cfg.model.backbone.init_cfg = None  # no download in tests
    model = MODELS.build(cfg.model)
    if "rcnn" in name:
        expected_head = "PISARoIHead" if name.startswith("pisa_") else "StandardRoIHead"
        assert type(model.roi_head).__name__ == expected_head
        assert model.roi_head.bbox_head.num_classes == cfg.model.roi_head.bbox_head.num_classes
        assert hasattr(model.roi_head, "mask_head") == ("mask_rcnn" in name)
    else:
        assert type(model.bbox_head).__name__ == cfg.model.bbox_head.type
        assert model.bbox_head.num_classes == 80
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
