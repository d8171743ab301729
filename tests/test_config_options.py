"""--cfg-options may change only keys the config has; --cfg-add adds keys on purpose."""
from __future__ import annotations

import pytest

from conftest import DEMO_CONFIG, X101_PISA_CONFIG
from pisa_train import exit_codes
from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_train_config
from pisa_train.config.loading import config_key_paths, unknown_key_message
from pisa_train.errors import ConfigError


def train_config(*argv):
    args = train_cli.build_parser().parse_args([str(a) for a in argv])
    return build_train_config(args, "cpu")[0]


def test_a_misspelt_key_is_refused_with_the_key_meant(capsys):
    code = train_cli.main([str(X101_PISA_CONFIG), "--device", "cpu", "--cfg-options",
                           "model.roi_hed.bbox_head.num_classes=3"])
    err = capsys.readouterr().err
    assert code == exit_codes.CONFIG_ERROR
    assert err.strip() == (
        "pisa-train: error: --cfg-options 'model.roi_hed.bbox_head.num_classes' is not in the config (there is no "
        "'roi_hed' under 'model'); did you mean 'model.roi_head.bbox_head.num_classes'? (to add a new key on "
        "purpose, pass it with --cfg-add model.roi_hed.bbox_head.num_classes=VALUE)")


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
    with pytest.raises(ConfigError, match="pass it with --cfg-add train_dataloader.dataset.metainfo.classes=VALUE"):
        train_config(X101_PISA_CONFIG, "--cfg-options", "train_dataloader.dataset.metainfo.classes=(a,b)")
    cfg = train_config(X101_PISA_CONFIG, "--cfg-add", "train_dataloader.dataset.metainfo.classes=(a,b)",
                       "--cfg-options", "model.roi_head.bbox_head.num_classes=2")
    assert tuple(cfg.train_dataloader.dataset.metainfo.classes) == ("a", "b")
    assert cfg.model.roi_head.bbox_head.num_classes == 2


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
