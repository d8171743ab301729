"""The config rewrites are pure: they return a new config and leave their input as it was."""
from __future__ import annotations

import copy

import pytest
from mmengine.config import Config

from conftest import X101_PISA_CONFIG
from pisa_train.config import rewrites as rewrite
from pisa_train.errors import ConfigError


@pytest.fixture(scope="module")
def base_cfg():
    return Config.fromfile(str(X101_PISA_CONFIG))


@pytest.mark.parametrize("apply", [
    lambda c: rewrite.enable_amp(c),
    lambda c: rewrite.enable_amp(c, "bfloat16"),
    lambda c: rewrite.autocast_testing(c, "bfloat16"),
    lambda c: rewrite.enable_auto_scale_lr(c),
    lambda c: rewrite.limit_iterations(c, 3),
    lambda c: rewrite.apply_device(c, "cpu"),
    lambda c: rewrite.apply_seed(c, 1),
    lambda c: rewrite.apply_work_dir(c, "w", "x.py"),
    lambda c: rewrite.set_launcher(c, "slurm"),
    lambda c: rewrite.enable_show_dir(c, "shown"),
])
def test_rewrites_leave_their_input_untouched(base_cfg, apply):
    before = copy.deepcopy(base_cfg.to_dict())
    after = apply(base_cfg)
    assert base_cfg.to_dict() == before
    assert after.to_dict() != before


def test_auto_scale_lr_needs_a_base_batch_size(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    cfg.auto_scale_lr = None
    with pytest.raises(ConfigError, match="base_batch_size"):
        rewrite.enable_auto_scale_lr(cfg)


def test_max_iters_keeps_an_iteration_checkpoint_interval_the_user_chose(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    cfg.default_hooks.checkpoint.by_epoch = False
    cfg.default_hooks.checkpoint.interval = 5
    limited = rewrite.limit_iterations(cfg, 20)
    assert limited.default_hooks.checkpoint.interval == 5
