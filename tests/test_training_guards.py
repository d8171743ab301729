"""SIGTERM/SIGINT stop with a checkpoint, and the NaN/Inf loss guard (engine/hooks/training_guards.py),
on a real MMEngine Runner with a toy model."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from toy_runner import ToyRegressor, build_toy_runner, toy_cfg

from pisa_train.engine import runner as engine
from pisa_train.engine.checkpoint_files import load_checkpoint_file
from pisa_train.engine.hooks.atomic_checkpoint import AtomicCheckpointHook
from pisa_train.engine.hooks.training_guards import describe_nonfinite, nonfinite_terms
from pisa_train.engine.patches.skip_nonfinite_updates import skip_nonfinite_updates
from pisa_train.errors import ConfigError, NonFiniteLossError, TrainingStopped


def load(path):
    return load_checkpoint_file(str(path), map_location="cpu")


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_at_the_iteration_boundary_and_resume_continues(tmp_path, signal_name, capsys):
    cfg = toy_cfg(tmp_path, max_iters=6, interval=100, custom_hooks=[dict(type="SendSignalHook", at=3,
                                                                          signal_name=signal_name)])
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingStopped) as raised:
        engine.run_training(cfg)
    assert str(raised.value) == (f"stopped by {signal_name} after iteration 3; checkpoint saved to "
                                 f"{tmp_path / 'iter_3.pth'}; continue with --resume")
    assert f"{signal_name} received: saving a checkpoint after this iteration" in capsys.readouterr().out
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous  # handlers restored
    assert load(tmp_path / "iter_3.pth")["meta"]["iter"] == 3
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_3.pth")

    resumed = toy_cfg(tmp_path, max_iters=6, interval=100)
    resumed.resume = True
    engine.run_training(resumed)
    assert f"resuming from {tmp_path / 'iter_3.pth'}" in capsys.readouterr().out
    assert load(tmp_path / "iter_6.pth")["meta"]["iter"] == 6


def test_a_scheduled_save_of_the_same_iteration_is_not_repeated(tmp_path, monkeypatch):
    saved = []
    original = AtomicCheckpointHook.save_checkpoint_file
    monkeypatch.setattr(AtomicCheckpointHook, "save_checkpoint_file",
                        lambda self, runner, filename, *a, **k: saved.append(filename) or
                        original(self, runner, filename, *a, **k))
    cfg = toy_cfg(tmp_path, max_iters=6, interval=1, custom_hooks=[dict(type="SendSignalHook", at=2)])
    with pytest.raises(TrainingStopped):
        engine.run_training(cfg)
    assert saved == ["iter_1.pth", "iter_2.pth"]


def test_an_epoch_based_run_stops_with_an_iteration_checkpoint(tmp_path):
    cfg = toy_cfg(tmp_path, by_epoch=True, custom_hooks=[dict(type="SendSignalHook", at=2)])
    with pytest.raises(TrainingStopped, match="checkpoint saved to .*iter_2.pth"):
        engine.run_training(cfg)
    meta = load(tmp_path / "iter_2.pth")["meta"]
    assert (meta["epoch"], meta["iter"]) == (0, 2)  # MMEngine restarts epoch 0, keeping the iteration count


def test_a_second_signal_stops_at_once(tmp_path):
    cfg = toy_cfg(tmp_path, max_iters=6, interval=100, custom_hooks=[dict(type="SendSignalHook", at=2, times=2)])
    with pytest.raises(KeyboardInterrupt):
        engine.run_training(cfg)
    assert not list(tmp_path.glob("*.pth"))


def test_a_nan_loss_stops_with_the_iteration_and_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    runner = build_toy_runner(toy_cfg(tmp_path, max_iters=6, nan_at=[4]))
    with pytest.raises(NonFiniteLossError) as raised:
        runner.train()
    message = str(raised.value)
    assert message.startswith("iteration 4: loss term 'loss_fit' is nan, 'loss' is nan; training stopped")
    assert f"the last good checkpoint is {tmp_path / 'iter_3.pth'}" in message
    assert "nonfinite_loss=skip" in message
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["iter_2.pth", "iter_3.pth"]
    assert torch.isfinite(load(tmp_path / "iter_3.pth")["state_dict"]["linear.weight"]).all()


def test_nonfinite_loss_skip_drops_that_step_and_goes_on(tmp_path):
    runner = build_toy_runner(toy_cfg(tmp_path, max_iters=5, max_keep_ckpts=-1, nonfinite_loss="skip", nan_at=[3]))
    runner.train()
    weights = {i: load(tmp_path / f"iter_{i}.pth")["state_dict"]["linear.weight"] for i in (2, 3, 4, 5)}
    assert torch.equal(weights[2], weights[3])  # step 3 not applied
    assert not torch.equal(weights[3], weights[4]) and torch.isfinite(weights[5]).all()


def test_nonfinite_loss_skip_still_stops_after_ten_in_a_row(tmp_path):
    runner = build_toy_runner(toy_cfg(tmp_path, max_iters=20, nonfinite_loss="skip", nan_at=range(2, 20)))
    with pytest.raises(NonFiniteLossError, match="iteration 11: .*the 10th non-finite loss in a row"):
        runner.train()


def test_nonfinite_loss_setting_is_checked():
    with pytest.raises(ConfigError, match="nonfinite_loss must be one of 'stop', 'skip', not 'ignore'"):
        toy_cfg("unused", nonfinite_loss="ignore")


def test_nonfinite_terms_names_the_terms_before_the_total():
    log_vars = {"loss": torch.tensor(float("inf")), "loss_rpn_cls": torch.tensor(0.5),
                "loss_bbox": torch.tensor(float("inf")), "acc": torch.tensor(float("nan"))}
    bad = nonfinite_terms(log_vars)
    assert [name for name, _ in bad] == ["loss_bbox", "loss"]
    assert describe_nonfinite(7, {0: bad}) == "iteration 7: loss term 'loss_bbox' is inf, 'loss' is inf"
    assert describe_nonfinite(7, {1: bad, 3: [("loss_cls", float("nan"))]}, world_size=4) == (
        "iteration 7: on rank 1 of 4, loss term 'loss_bbox' is inf, 'loss' is inf; "
        "on rank 3 of 4, loss term 'loss_cls' is nan")


def test_upstream_train_step_updates_through_the_instances_update_params(monkeypatch):
    """Guard of engine/patches/skip_nonfinite_updates.py: mmengine's BaseModel.train_step must call
    ``update_params`` on the OptimWrapper, once, with the summed loss, and AmpOptimWrapper must inherit
    OptimWrapper's; if either stops, the replaced ``update_params`` no longer skips anything and
    nonfinite_loss='skip' must change."""

    assert "update_params" not in vars(AmpOptimWrapper)
    model = ToyRegressor()
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    seen = []
    monkeypatch.setattr(OptimWrapper, "update_params", lambda self, loss, *args, **kwargs: seen.append(loss))
    data = dict(inputs=[torch.tensor([0.5])], targets=[torch.tensor([2.0])])
    log_vars = model.train_step(data, optim_wrapper)
    assert len(seen) == 1 and float(seen[0].detach()) == pytest.approx(float(log_vars["loss"]))


def test_a_skipped_step_leaves_the_weights_and_a_finite_one_updates_them():
    model = ToyRegressor(nan_at=[1])
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    skip_nonfinite_updates()  # as install_into_mmengine does for nonfinite_loss='skip'
    before = [p.detach().clone() for p in model.parameters()]
    data = dict(inputs=[torch.tensor([0.5])], targets=[torch.tensor([2.0])])
    model.train_step(data, optim_wrapper)  # call 1: NaN loss
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    model.train_step(data, optim_wrapper)  # call 2: finite
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    skip_nonfinite_updates(False)  # as for a run with nonfinite_loss='stop': mmengine's own again
    assert not getattr(OptimWrapper.update_params, "_pisa_train_replacement", False)


# A parent process that reads from a DataLoader with one worker, which the test (not the parent)
# sends a SIGTERM to after the first batch, as a scheduler signals every process of a job.
DATALOADER_UNDER_SIGTERM = """
import os, sys, time
import torch
from torch.utils.data import DataLoader, Dataset

if sys.argv[1] == "patched":
    from pisa_train.engine.patches.dataloader_worker_signals import keep_dataloader_workers_through_stop_signals
    keep_dataloader_workers_through_stop_signals()

class Slow(Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, index):
        time.sleep(0.3)
        return torch.tensor([index])

batches = iter(DataLoader(Slow(), batch_size=1, num_workers=1, prefetch_factor=1))
for batch in batches:
    if batch.item() == 0:
        print("worker", batches._workers[0].pid, flush=True)
        sys.stdin.readline()  # the test has sent its SIGTERM
print("read every batch", flush=True)
"""


def _read_through_a_sigterm_to_the_worker(mode: str):
    proc = subprocess.Popen([sys.executable, "-c", DATALOADER_UNDER_SIGTERM, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline().split()[1])
    os.kill(worker, signal.SIGTERM)
    out, err = proc.communicate("go\n", timeout=60)
    return proc.returncode, out, err


def test_upstream_dataloader_workers_die_of_a_sigterm_from_outside():
    """Guard of engine/patches/dataloader_worker_signals.py: torch's worker dies of a SIGTERM that its
    parent did not send, and the parent's next batch fails. If this fails, torch's workers survive it
    now and the patch can go."""
    code, out, err = _read_through_a_sigterm_to_the_worker("upstream")
    assert code != 0 and "read every batch" not in out
    assert "DataLoader worker (pid(s)" in err and "exited unexpectedly" in err, err[-2000:]


def test_patched_dataloader_workers_keep_working_through_a_sigterm_from_outside_and_the_run_ends():
    code, out, err = _read_through_a_sigterm_to_the_worker("patched")
    assert (code, out.splitlines()[-1]) == (0, "read every batch"), err[-2000:]
