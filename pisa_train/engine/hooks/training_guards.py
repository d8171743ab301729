"""Stop training cleanly: on SIGTERM/SIGINT with a checkpoint, and on a NaN/Inf loss without one.

MMEngine 0.10.7 installs no signal handlers, so a scheduler's SIGTERM (SLURM
preemption, ``docker stop``, Kubernetes) or a Ctrl-C ends a run wherever it is
and loses everything since the last scheduled checkpoint. ``StopOnSignalHook``
turns the first SIGTERM or SIGINT into a request: the current iteration
finishes, a checkpoint is saved (by ``AtomicCheckpointHook``) and the command
exits with ``exit_codes.STOPPED_AND_SAVED``; ``--resume`` continues from there.
A second signal stops at once (exit code 130). The handlers are installed in
``before_train``. Dataloader workers ignore both signals (a scheduler's SIGTERM
and a terminal's Ctrl-C reach the whole process group, and a worker that died
of it would take the training process down before it saved):
engine/patches/dataloader_worker_signals.py, applied before the runner is built
(an iteration-based loop forks its workers when it is built, before ``before_train``).

MMEngine also trains on through a NaN or Inf loss (the parameters become NaN and
every later checkpoint is worthless). ``NonFiniteLossHook`` checks each
iteration's loss terms before the checkpoint hook runs. The config setting
``nonfinite_loss`` chooses what happens: ``'stop'`` (the default) ends the run
with a message naming the iteration and the loss term, so the last checkpoint
is the last good one; ``'skip'`` drops that step (no backward, no update) and
goes on, and still stops after ``MAX_SKIPS_IN_A_ROW`` such steps in a row.
"""
from __future__ import annotations

import math
import signal
import threading

import torch
import torch.distributed as dist
from mmengine.dist import all_gather_object, get_comm_device
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper

from pisa_train.engine.hooks.atomic_checkpoint import AtomicCheckpointHook
from pisa_train.errors import ConfigError, NonFiniteLossError, PisaError, TrainingStopped
from pisa_train.terminal import write_line

MAX_SKIPS_IN_A_ROW = 10
NONFINITE_ACTIONS = ("stop", "skip")  # the values of the config setting nonfinite_loss


def check_nonfinite_action(action) -> str:
    if action not in NONFINITE_ACTIONS:
        raise ConfigError(f"nonfinite_loss must be one of {', '.join(map(repr, NONFINITE_ACTIONS))}, "
                          f"not {action!r}")
    return action


def nonfinite_terms(log_vars: dict) -> list[tuple[str, float]]:
    """The loss terms (and the total, 'loss') of one iteration that are NaN or Inf, terms first."""
    bad = []
    for name, value in (log_vars or {}).items():
        if "loss" not in name:
            continue
        try:
            number = float(value.detach() if hasattr(value, "detach") else value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(number):
            bad.append((name, number))
    return sorted(bad, key=lambda item: item[0] == "loss")


def describe_nonfinite(iteration: int, bad_by_rank: dict[int, list[tuple[str, float]]], world_size: int = 1) -> str:
    """``iteration 3: loss term 'loss_cls' is nan, 'loss' is nan``; in a distributed run, per rank:
    ``iteration 3: on rank 1 of 2, loss term ...`` (each process names the ranks that diverged)."""
    def named(bad):
        return "loss term " + ", ".join(f"'{name}' is {value}" for name, value in bad)

    if world_size == 1:
        return f"iteration {iteration}: {named(next(iter(bad_by_rank.values())))}"
    return f"iteration {iteration}: " + "; ".join(
        f"on rank {rank} of {world_size}, {named(bad)}" for rank, bad in sorted(bad_by_rank.items()))


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _on_any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any process: every rank must stop at the same iteration, or the
    others wait forever in the next all-reduce."""
    if _world_size() == 1:
        return flag

    value = torch.tensor([int(flag)], device=get_comm_device(None))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def raised_by_every_process(error: PisaError) -> PisaError:
    """``error``, which every process raises at this iteration (they agreed on it through a
    collective): in a distributed run each, once it has written its line, waits until all have,
    for torchrun stops the rest as soon as one exits, maybe before their line is out (CI saw it)."""
    if _world_size() > 1:
        error.after_report = dist.barrier
    return error


def nonfinite_by_rank(bad: list[tuple[str, float]]) -> dict[int, list[tuple[str, float]]]:
    """Every process's non-finite loss terms, by rank, for the ranks that have some ({} when none
    has); the same answer on every process, so that all stop (or skip) at the same iteration."""
    if _world_size() == 1:
        return {0: bad} if bad else {}
    if not _on_any_rank(bool(bad)):
        return {}

    return {rank: terms for rank, terms in enumerate(all_gather_object(bad)) if terms}


class NonFiniteLossHook(Hook):
    # Above the checkpoint hook (VERY_LOW) so that a step with a NaN loss is never saved.
    priority = "ABOVE_NORMAL"

    def __init__(self, action: str = "stop"):
        self.action = check_nonfinite_action(action)
        self.skips_in_a_row = 0

    def before_train(self, runner) -> None:
        # The skipping itself is engine/patches/skip_nonfinite_updates.py, which install_into_mmengine applies
        # to OptimWrapper for a config that asks for it; it has no way to skip a step of several optimizers.
        if self.action == "skip" and not isinstance(runner.optim_wrapper, OptimWrapper):
            raise ConfigError("nonfinite_loss='skip' needs a single optimizer (an OptimWrapper); this config has "
                              f"{type(runner.optim_wrapper).__name__}; use nonfinite_loss='stop'")

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        bad_by_rank = nonfinite_by_rank(nonfinite_terms(outputs))
        if not bad_by_rank:
            self.skips_in_a_row = 0
            return
        what = describe_nonfinite(runner.iter + 1, bad_by_rank, _world_size())
        last = runner.message_hub.get_info("last_ckpt") or "none saved yet"
        if self.action == "skip":
            self.skips_in_a_row += 1
            if self.skips_in_a_row < MAX_SKIPS_IN_A_ROW:
                runner.logger.warning(f"{what}; step skipped (nonfinite_loss='skip')")
                return
            raise raised_by_every_process(NonFiniteLossError(
                f"{what}, the {MAX_SKIPS_IN_A_ROW}th non-finite loss in a row; training stopped; the last "
                f"checkpoint is {last}; lower the learning rate or add gradient clipping (optim_wrapper.clip_grad)"))
        raise raised_by_every_process(NonFiniteLossError(
            f"{what}; training stopped, and this step was not saved: the last good checkpoint is {last}; lower "
            f"the learning rate or add gradient clipping (optim_wrapper.clip_grad), or set nonfinite_loss='skip' "
            f"(--cfg-options nonfinite_loss=skip) to skip such steps"))


class StopOnSignalHook(Hook):
    # Below the checkpoint hook, so that a scheduled save of this iteration comes first and is reused.
    priority = "LOWEST"
    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.requested = None  # the name of the first signal received
        self._previous = {}

    def before_train(self, runner) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for name in self.SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            self.restore()
            raise KeyboardInterrupt(f"second {name}")
        self.requested = name
        # Not the logger: a handler may run while the logger holds its lock.
        write_line(f"[pisa-train] {name} received: saving a checkpoint after this iteration, then stopping "
                   f"(send it again to stop at once, without saving)")

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not _on_any_rank(self.requested is not None):
            return
        self.requested = self.requested or "a signal to another process"

        savers = [hook for hook in runner.hooks if isinstance(hook, AtomicCheckpointHook)]
        if not savers:
            raise raised_by_every_process(TrainingStopped(
                f"stopped by {self.requested} after iteration {runner.iter + 1}, without a checkpoint: the config "
                f"has no AtomicCheckpointHook"))
        path = savers[0].save_for_stop(runner)
        self.restore()
        raise raised_by_every_process(TrainingStopped(
            f"stopped by {self.requested} after iteration {runner.iter + 1}; checkpoint saved to {path}; continue "
            f"with --resume"))

    def after_train(self, runner) -> None:
        self.restore()
