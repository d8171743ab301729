"""--cfg-options may change keys the config has and parameters of the classes its dicts build;
--cfg-add adds other keys on purpose."""
from __future__ import annotations

import pytest
from conftest import DEMO_CONFIG, X101_PISA_CONFIG
from mmdet.datasets import CocoDataset
from mmengine.config import Config
from mmengine.hooks import CheckpointHook
from tiny_training import tiny_demo

from pisa_train import exit_codes
from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import infer as infer_cli
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_infer_config, build_test_config, build_train_config
from pisa_train.config.loading import config_key_paths, load_config, parse_cfg_options, unknown_key_message
from pisa_train.config.settings import class_built_by, class_parameters
from pisa_train.engine.hooks.atomic_checkpoint import AtomicCheckpointHook
from pisa_train.errors import ConfigError


def train_config(*argv):
    args = train_cli.parse_request([str(a) for a in argv])
    return build_train_config(args, "cpu")[0]


def test_a_misspelt_key_is_refused_with_the_key_meant(capsys):
    code = train_cli.main([str(X101_PISA_CONFIG), "--device", "cpu", "--cfg-options",
                           "model.roi_hed.bbox_head.num_classes=3"])
    err = capsys.readouterr().err
    assert code == exit_codes.CONFIG_ERROR
    assert err.strip() == (
        "pisa-train: error: --cfg-options 'model.roi_hed.bbox_head.num_classes' is not in the config (there is no "
        "'roi_hed' under 'model', and FasterRCNN takes no parameter 'roi_hed'); did you mean "
        "'model.roi_head.bbox_head.num_classes'? (to add a new key on purpose, pass it with --cfg-add "
        "model.roi_hed.bbox_head.num_classes=VALUE)")


def test_pisa_eval_checks_cfg_options_too(tmp_path, capsys):
    checkpoint = tmp_path / "c.pth"
    checkpoint.write_bytes(b"x")
    assert eval_cli.main([str(DEMO_CONFIG), str(checkpoint), "--device", "cpu", "--cfg-options",
                          "test_dataloader.batch_sise=2"]) == exit_codes.CONFIG_ERROR
    assert "did you mean 'test_dataloader.batch_size'?" in capsys.readouterr().err


def test_list_indices_keep_working():
    cfg = train_config(X101_PISA_CONFIG, "--cfg-options", "train_dataloader.dataset.pipeline.2.scale=(640,640)")
    assert tuple(cfg.train_dataloader.dataset.pipeline[2].scale) == (640, 640)
    with pytest.raises(ConfigError, match=r"no '9' under 'train_dataloader.dataset.pipeline'.*did you mean "
                                          r"'train_dataloader.dataset.pipeline.2.scale'\?"):
        train_config(X101_PISA_CONFIG, "--cfg-options", "train_dataloader.dataset.pipeline.9.scale=(640,640)")


def test_cfg_add_adds_keys_on_purpose():
    # model.test_cfg.rcnn is a settings dict the heads read (a mask head would read this key): no class to ask
    with pytest.raises(ConfigError, match=r"pass it with --cfg-add model.test_cfg.rcnn.mask_thr_binary=VALUE\)$"):
        train_config(X101_PISA_CONFIG, "--cfg-options", "model.test_cfg.rcnn.mask_thr_binary=0.5")
    cfg = train_config(X101_PISA_CONFIG, "--cfg-add", "model.test_cfg.rcnn.mask_thr_binary=0.5",
                       "--cfg-options", "model.roi_head.bbox_head.num_classes=2")
    assert cfg.model.test_cfg.rcnn.mask_thr_binary == 0.5
    assert cfg.model.roi_head.bbox_head.num_classes == 2


def test_a_dataset_metainfo_is_a_parameter_of_the_dataset():
    cfg = train_config(X101_PISA_CONFIG, "--cfg-options", "train_dataloader.dataset.metainfo.classes=(a,b)")
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == ("a", "b")


def test_runner_and_pisa_train_settings_are_known_even_when_the_config_leaves_them_out():
    cfg = train_config(X101_PISA_CONFIG, "--cfg-options", "work_dir=/w", "randomness.seed=3",
                       "nonfinite_loss=skip")
    assert cfg.work_dir == "/w" and cfg.randomness.seed == 3
    assert dict(type="NonFiniteLossHook", action="skip") in cfg.custom_hooks
    with pytest.raises(ConfigError, match="did you mean 'work_dir'"):
        train_config(X101_PISA_CONFIG, "--cfg-options", "work_dri=/w")


def test_a_key_under_a_none_value_says_so():
    message = unknown_key_message({"model": {"backbone": {"init_cfg": None}}}, "model.backbone.init_cfg.type")
    assert "'model.backbone.init_cfg' is None in the config, so it has no 'type'" in message


def test_key_paths_cover_dicts_and_lists():
    assert config_key_paths({"a": {"b": [{"c": 1}, 2]}}) == ["a", "a.b", "a.b.0", "a.b.0.c", "a.b.1"]


def test_safeguards_are_in_the_config_handed_to_mmengine():
    cfg = train_config(X101_PISA_CONFIG)
    assert cfg.default_hooks.checkpoint.type == "AtomicCheckpointHook"
    assert cfg.default_hooks.checkpoint.interval == 1  # the config's settings are kept
    assert [h["type"] for h in cfg.custom_hooks] == ["StopOnSignalHook", "NonFiniteLossHook", "ProgressBarHook"]
    resumed = train_config(X101_PISA_CONFIG, "--resume")
    assert dict(type="CheckpointMatchesModelHook") in resumed.custom_hooks


# The overrides MMDetection's documentation uses every day, on keys mmdet's default_runtime and
# schedule leave at their defaults: parameters of CheckpointHook and OptimWrapper.
EVERYDAY_OVERRIDES = {
    "default_hooks.checkpoint.max_keep_ckpts=3": ("default_hooks", "checkpoint", "max_keep_ckpts", 3),
    "default_hooks.checkpoint.save_best=auto": ("default_hooks", "checkpoint", "save_best", "auto"),
    "default_hooks.checkpoint.by_epoch=False": ("default_hooks", "checkpoint", "by_epoch", False),
    "optim_wrapper.clip_grad.max_norm=10": ("optim_wrapper", "clip_grad", "max_norm", 10),
}


@pytest.mark.parametrize("option", EVERYDAY_OVERRIDES)
def test_a_parameter_of_the_class_a_dict_builds_is_accepted(option):
    *path, value = EVERYDAY_OVERRIDES[option]
    loaded = load_config(str(X101_PISA_CONFIG))
    node = loaded.to_dict()
    for segment in path[:-1]:
        node = node.get(segment, {})
    assert path[-1] not in node  # the config leaves it out: a parameter, not a key of the config
    cfg = train_config(X101_PISA_CONFIG, "--cfg-options", option)
    node = cfg
    for segment in path:
        node = node[segment]
    assert node == value and type(node) is type(value)  # parsed as DictAction parses it


def test_a_misspelt_parameter_is_refused_with_the_parameter_meant(capsys):
    code = train_cli.main([str(X101_PISA_CONFIG), "--device", "cpu", "--cfg-options",
                           "default_hooks.checkpoint.max_keep_ckpt=3"])
    assert code == exit_codes.CONFIG_ERROR
    assert capsys.readouterr().err.strip() == (
        "pisa-train: error: --cfg-options 'default_hooks.checkpoint.max_keep_ckpt' is not in the config (there is "
        "no 'max_keep_ckpt' under 'default_hooks.checkpoint', and CheckpointHook takes no parameter "
        "'max_keep_ckpt'); did you mean 'default_hooks.checkpoint.max_keep_ckpts'? (to add a new key on purpose, "
        "pass it with --cfg-add default_hooks.checkpoint.max_keep_ckpt=VALUE)")


def test_suggestions_come_from_the_config_and_from_the_parameters():
    cfg_dict = load_config(str(X101_PISA_CONFIG)).to_dict()
    assert "did you mean 'default_hooks.checkpoint.save_best'?" in unknown_key_message(
        cfg_dict, "default_hooks.checkpoint.save_bset")  # save_best is not in the config
    assert "did you mean 'optim_wrapper.clip_grad.max_norm'?" in unknown_key_message(
        cfg_dict, "optim_wrapper.clip_gard.max_norm")
    assert "did you mean 'model.train_cfg.rcnn.pos_weight'?" in unknown_key_message(
        cfg_dict, "model.train_cfg.rcnn.pos_weigth")  # a settings dict builds no class: its keys are checked


@pytest.mark.parametrize("option", [
    "train_dataloader.pin_memory=True",  # torch's DataLoader, which MMEngine builds from train_dataloader
    "train_dataloader.dataset.lazy_init=True",  # CocoDataset passes it up to mmengine's BaseDataset
    "train_dataloader.sampler.round_up=False",  # DefaultSampler
    "model.backbone.base_channels=16",  # mmdet's ResNet
    "model.train_cfg.rcnn.sampler.context=None",  # ScoreHLRSampler, from mmdet's TASK_UTILS
    "default_hooks.logger.priority=ABOVE_NORMAL",  # read by MMEngine's Runner.register_hook
    "optim_wrapper.paramwise_cfg.norm_decay_mult=0",  # read by the optimizer wrapper constructor: a free dict
    "model.roi_head.bbox_roi_extractor.roi_layer.aligned=False",  # mmcv.ops.RoIAlign, which mmdet takes by name
    "model.test_cfg.rcnn.nms.class_agnostic=True",  # mmcv's batched_nms
])
def test_parameters_of_datasets_samplers_models_and_hooks_are_accepted(option):
    [(key, value)] = parse_cfg_options([option]).items()
    cfg = train_config(X101_PISA_CONFIG, "--cfg-options", option)
    node = cfg
    for segment in key.split("."):
        node = node[segment]
    assert node == value


def test_anything_inside_a_dict_valued_parameter_is_accepted_but_not_inside_a_number():
    cfg = train_config(X101_PISA_CONFIG, "--cfg-options", "optim_wrapper.clip_grad.max_norm=35",
                       "optim_wrapper.clip_grad.norm_type=2")
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=35, norm_type=2)
    message = unknown_key_message(load_config(str(X101_PISA_CONFIG)).to_dict(),
                                  "default_hooks.checkpoint.max_keep_ckpts.x")
    assert message == ("--cfg-options 'default_hooks.checkpoint.max_keep_ckpts.x' is not in the config: "
                       "'default_hooks.checkpoint.max_keep_ckpts' is a parameter of CheckpointHook whose value is "
                       "not a dict (int), so it has no 'x'; set 'default_hooks.checkpoint.max_keep_ckpts' itself")


def test_pisa_eval_and_pisa_infer_accept_class_parameters_too(tmp_path):
    checkpoint = tmp_path / "c.pth"
    checkpoint.write_bytes(b"x")
    option = "test_dataloader.dataset.lazy_init=True"
    args = eval_cli.parse_request([str(X101_PISA_CONFIG), str(checkpoint), "--cfg-options", option])
    assert build_test_config(args, "cpu")[0].test_dataloader.dataset.lazy_init is True
    args = infer_cli.parse_request([str(X101_PISA_CONFIG), str(checkpoint), "x.jpg", "--out",
                                                str(tmp_path), "--cfg-options", option])
    assert build_infer_config(args, "cpu")[0].test_dataloader.dataset.lazy_init is True


def test_class_parameters_follow_kwargs_to_the_base_classes():
    class Base:
        def __init__(self, a, b=1):
            pass

    class PassesUp(Base):
        def __init__(self, c, **kwargs):
            super().__init__(**kwargs)

    class KeepsItsKwargs:
        def __init__(self, x, **kwargs):
            self.options = kwargs

    assert list(class_parameters(PassesUp)) == ["c", "a", "b"]
    assert list(class_parameters(KeepsItsKwargs)) == ["x"]
    assert class_parameters(AtomicCheckpointHook) == class_parameters(CheckpointHook)
    assert {"max_keep_ckpts", "save_best", "by_epoch"} <= set(class_parameters(CheckpointHook))
    assert {"seg_map_suffix", "ann_file", "data_root", "lazy_init"} <= set(class_parameters(CocoDataset))


@pytest.mark.parametrize("path, node, expected", [
    ("default_hooks.checkpoint", dict(type="CheckpointHook"), "CheckpointHook"),
    ("custom_hooks.0", dict(type="EMAHook"), "EMAHook"),
    ("optim_wrapper", dict(optimizer=dict(type="SGD")), "OptimWrapper"),  # MMEngine's default
    ("optim_wrapper.optimizer", dict(type="SGD"), "SGD"),
    ("param_scheduler.1", dict(type="MultiStepLR"), "MultiStepLR"),
    ("train_dataloader", dict(batch_size=2), "DataLoader"),
    ("train_dataloader.dataset.dataset", dict(type="CocoDataset"), "CocoDataset"),  # inside RepeatDataset
    ("train_dataloader.batch_sampler", dict(type="AspectRatioBatchSampler"), "AspectRatioBatchSampler"),
    ("train_pipeline.2", dict(type="Resize"), "Resize"),
    ("val_evaluator", dict(type="CocoMetric"), "CocoMetric"),
    ("train_cfg", dict(by_epoch=False, max_iters=3), "IterBasedTrainLoop"),
    ("model.roi_head", dict(type="PISARoIHead"), "PISARoIHead"),
    ("model.rpn_head.anchor_generator", dict(type="AnchorGenerator"), "AnchorGenerator"),
    ("model.backbone.init_cfg", dict(type="Pretrained"), "PretrainedInit"),
    ("model.roi_head.bbox_roi_extractor.roi_layer", dict(type="RoIAlign"), "RoIAlign"),
    ("model.train_cfg", dict(rpn=dict()), None),  # a settings dict, read by the heads: no class
    ("model.roi_head", dict(type="NoSuchHead"), None),
])
def test_the_class_a_dict_builds_is_found_in_the_registry_of_its_place(path, node, expected):
    built = class_built_by(node, path, "mmdet")
    assert (built.name if built else None) == expected


def test_without_a_close_name_the_refusal_lists_what_the_dict_has_and_its_class_takes():
    message = unknown_key_message(load_config(str(X101_PISA_CONFIG)).to_dict(), "default_hooks.checkpoint.zzzz")
    assert message.startswith(
        "--cfg-options 'default_hooks.checkpoint.zzzz' is not in the config (there is no 'zzzz' under "
        "'default_hooks.checkpoint', and CheckpointHook takes no parameter 'zzzz'); 'default_hooks.checkpoint' "
        "has: type, interval; CheckpointHook also takes: by_epoch, save_optimizer, ")


# The demo config with its checkpoint hook and optimizer wrapper as mmdet's _base_ files leave them,
# so that none of EVERYDAY_OVERRIDES is in it (the demo itself keeps two checkpoints and clips gradients).
DEMO_AS_MMDET_LEAVES_IT = f"""
_base_ = {str(DEMO_CONFIG)!r}
default_hooks = dict(checkpoint=dict(_delete_=True, type='CheckpointHook', interval=1))
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.04, momentum=0.9, weight_decay=0.0001))
"""


@pytest.mark.slow
@pytest.mark.parametrize("option, iterations, checkpoints", [
    # with by_epoch=False a checkpoint each iteration (the config's interval, 1), of which the last three stay
    ("default_hooks.checkpoint.max_keep_ckpts=3", 4, ["iter_2.pth", "iter_3.pth", "iter_4.pth"]),
    ("default_hooks.checkpoint.save_best=auto", 1, ["iter_1.pth"]),
    ("default_hooks.checkpoint.by_epoch=False", 2, ["iter_1.pth", "iter_2.pth"]),  # else only the last
    ("optim_wrapper.clip_grad.max_norm=10", 1, ["iter_1.pth"]),
])
def test_each_everyday_override_trains_the_demo(tmp_path, run_cli, option, iterations, checkpoints):
    """Each trains the (tiny) demo with --cfg-options alone, and does in the run what it says."""

    config = tmp_path / "demo_as_mmdet_leaves_it.py"
    config.write_text(DEMO_AS_MMDET_LEAVES_IT)
    *path, value = EVERYDAY_OVERRIDES[option]
    assert path[-1] not in load_config(str(config)).to_dict()[path[0]].get(path[1], {})
    work_dir = tmp_path / "work"
    options = ["model.backbone.base_channels=16", option]  # tiny_demo's --cfg-add keys, as --cfg-options
    options += ["default_hooks.checkpoint.by_epoch=False"] if "max_keep_ckpts" in option else []
    argv = tiny_demo(work_dir, iterations, options=options)
    argv = [str(config), *argv[1:argv.index("--cfg-add")]]
    result = run_cli("train", argv, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    node = Config.fromfile(str(work_dir / config.name))  # the config MMEngine ran
    for segment in path:
        node = node[segment]
    assert node == value
    assert sorted(p.name for p in work_dir.glob("iter_*.pth")) == checkpoints
    # OptimWrapper clips the gradients with clip_grad, and then logs their norm
    assert ("grad_norm:" in result.stdout) == ("clip_grad" in option)
