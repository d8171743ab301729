"""The config rewrites are pure: they return a new config and leave their input as it was."""
from __future__ import annotations

import builtins
import copy
import inspect
import os

import pytest
from conftest import X101_PISA_CONFIG
from mmengine.config import Config

from pisa_train.config import rewrites as rewrite
from pisa_train.errors import ConfigError


@pytest.fixture(scope="module")
def base_cfg():
    return Config.fromfile(str(X101_PISA_CONFIG))


def _launched(cfg):
    """A config as pisa-train hands it on for a distributed run: a launcher and a work dir set."""
    cfg = copy.deepcopy(cfg)
    cfg.launcher, cfg.work_dir = "pytorch", "w"
    return cfg


# Every rewrite rewrites.py defines, with arguments that make it change the config (the test below
# fails when one is added without a row here). Decisions that return no config (backend_to_apply,
# runs_validation) are in DECISIONS.
REWRITES = {
    "set_launcher": lambda c: rewrite.set_launcher(c, "slurm"),
    "apply_work_dir": lambda c: rewrite.apply_work_dir(c, "w", "x.py"),
    "enable_amp": lambda c: rewrite.enable_amp(c, "bfloat16"),
    "autocast_testing": lambda c: rewrite.autocast_testing(c, "bfloat16"),
    "enable_auto_scale_lr": lambda c: rewrite.enable_auto_scale_lr(c),
    "apply_resume": lambda c: rewrite.apply_resume(c, "work_dirs/x/iter_4.pth"),
    "apply_load_from": lambda c: rewrite.apply_load_from(c, "not/read/weights.pth"),
    "apply_seed": lambda c: rewrite.apply_seed(c, 1),
    "limit_iterations": lambda c: rewrite.limit_iterations(c, 3),
    "apply_device": lambda c: rewrite.apply_device(c, "cpu"),
    "use_cpu_model_wrapper": lambda c: rewrite.use_cpu_model_wrapper(_launched(c), "cpu"),
    "log_losses_per_rank": lambda c: rewrite.log_losses_per_rank(_launched(c)),
    "show_progress_bars": lambda c: rewrite.show_progress_bars(c),
    "apply_checkpoint_for_testing": lambda c: rewrite.apply_checkpoint_for_testing(c, "not/read/weights.pth"),
    "enable_show_dir": lambda c: rewrite.enable_show_dir(c, "shown"),
    "add_training_safeguards": lambda c: rewrite.add_training_safeguards(c),
    "check_checkpoint_fits_model": lambda c: rewrite.check_checkpoint_fits_model(c),
    "apply_ops_backend": lambda c: rewrite.apply_ops_backend(c, "torchvision"),
    "dump_detections_for_evaluation": lambda c: rewrite.dump_detections_for_evaluation(_launched(c)),
    "enable_tensorboard": lambda c: rewrite.enable_tensorboard(c),
    "enable_vis_backends": lambda c: rewrite.enable_vis_backends(c, ["tensorboard"]),
    "keep_best_checkpoint": lambda c: rewrite.keep_best_checkpoint(c),
    "enable_early_stopping": lambda c: rewrite.enable_early_stopping(c, 2),
}
DECISIONS = {
    "backend_to_apply": lambda c: rewrite.backend_to_apply("torchvision", "cpu", None),
    "runs_validation": lambda c: rewrite.runs_validation(c),
}


def test_every_rewrite_of_the_module_is_in_the_purity_test():
    defined = {name for name, function in inspect.getmembers(rewrite, inspect.isfunction)
               if function.__module__ == rewrite.__name__ and not name.startswith("_")}
    assert defined == set(REWRITES) | set(DECISIONS), "add the new rewrite to REWRITES (or DECISIONS)"


@pytest.fixture
def no_file_system(monkeypatch):
    """Any read of the file system (open, stat, listing a folder) fails the test: a rewrite that needs
    to know what is on disk gets it from its caller (config/checkpoint_references.py, dataset_folder.py)."""
    def refuse(name):
        def refused(path, *args, **kwargs):
            raise AssertionError(f"a pure rewrite called {name}({path!r})")
        return refused

    for module, name in ((builtins, "open"), (os, "open"), (os, "stat"), (os, "lstat"), (os, "listdir"),
                         (os, "scandir"), (os, "access")):
        monkeypatch.setattr(module, name, refuse(name))


@pytest.mark.parametrize("name", [*REWRITES, *DECISIONS])
def test_rewrites_leave_their_input_untouched_and_read_no_file(base_cfg, name, request):
    apply = {**REWRITES, **DECISIONS}[name]
    apply(base_cfg)  # once as it is: the first call may import modules, which reads files
    before = copy.deepcopy(base_cfg.to_dict())
    request.getfixturevalue("no_file_system")
    after = apply(base_cfg)
    assert base_cfg.to_dict() == before
    if name in REWRITES:
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
