"""A checkpoint for another model is refused when resuming or evaluating (checkpoint_compatibility)."""
from __future__ import annotations

import pytest
import torch
from toy_runner import build_toy_runner, toy_cfg

from pisa_train.config.rewrites import check_checkpoint_fits_model
from pisa_train.errors import CheckpointError


@pytest.fixture
def foreign_checkpoint(tmp_path):
    """A toy checkpoint whose layer has two outputs instead of one."""
    path = tmp_path / "foreign.pth"
    torch.save({"meta": {"epoch": 0, "iter": 1}, "state_dict": {"linear.weight": torch.zeros(2, 1),
                                                                  "linear.bias": torch.zeros(2)}}, path)
    return path


def test_upstream_loads_a_mismatched_checkpoint_leniently(tmp_path, foreign_checkpoint):
    """Fails when MMEngine's Runner.load_checkpoint stops loading mismatched weights with a mere
    warning: then CheckpointMatchesModelHook may be unnecessary."""
    runner = build_toy_runner(toy_cfg(tmp_path))
    before = runner.model.linear.weight.detach().clone()
    runner.load_checkpoint(str(foreign_checkpoint))
    assert torch.equal(runner.model.linear.weight, before)  # silently left as it was


def test_a_mismatched_checkpoint_is_refused_before_it_reaches_the_model(tmp_path, foreign_checkpoint):
    runner = build_toy_runner(check_checkpoint_fits_model(toy_cfg(tmp_path)))
    with pytest.raises(CheckpointError, match=r"is for another model: linear.weight is \[2, 1\] in the checkpoint "
                                              r"and \[1, 1\] in this model \(and 1 more weights differ in shape\)"):
        runner.load_checkpoint(str(foreign_checkpoint))


def test_a_matching_checkpoint_loads(tmp_path):
    runner = build_toy_runner(check_checkpoint_fits_model(toy_cfg(tmp_path, max_iters=1)))
    runner.train()
    other = build_toy_runner(check_checkpoint_fits_model(toy_cfg(tmp_path / "other")))
    other.load_checkpoint(str(tmp_path / "iter_1.pth"))
    assert torch.equal(other.model.linear.weight, runner.model.linear.weight)
