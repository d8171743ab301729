"""pisa-train's MMEngine hooks, and the one place that registers them.

A config names them by type, as config/rewrites.py adds them:

* ``AutocastTestHook`` (autocast_testing.py): the test loop under autocast (``--amp`` on pisa-eval).
* ``AtomicCheckpointHook`` (atomic_checkpoint.py): mmengine's CheckpointHook, saving
  atomically and deleting old checkpoints last; replaces the config's CheckpointHook.
* ``CheckpointMatchesModelHook`` (checkpoint_compatibility.py): refuses a checkpoint
  for another model when resuming or evaluating.
* ``FineTuneCheckpointHook`` (checkpoint_compatibility.py): starting from ``load_from``, the
  class-specific layers of a checkpoint for other classes start fresh; other differences are refused.
* ``NonFiniteLossHook``, ``StopOnSignalHook`` (training_guards.py): a NaN/Inf loss stops
  the run (or skips the step); SIGTERM/SIGINT save a checkpoint and stop.
* ``PatienceHook`` (early_stopping.py): ``--patience``, mmengine's EarlyStoppingHook saying why it stopped.
* ``PerRankLossHook`` (per_rank_losses.py): every process's loss in a distributed run.
* ``ProgressBarHook`` (progress_bar.py): the progress bar on a terminal.

``register_hooks`` puts them in mmengine's HOOKS registry (which mmdet's falls back
to); engine/runner.py calls it before building a Runner.
"""
from __future__ import annotations

from mmengine.registry import HOOKS

from pisa_train.engine.hooks.atomic_checkpoint import AtomicCheckpointHook
from pisa_train.engine.hooks.autocast_testing import AutocastTestHook
from pisa_train.engine.hooks.checkpoint_compatibility import CheckpointMatchesModelHook, FineTuneCheckpointHook
from pisa_train.engine.hooks.early_stopping import PatienceHook
from pisa_train.engine.hooks.per_rank_losses import PerRankLossHook
from pisa_train.engine.hooks.progress_bar import ProgressBarHook
from pisa_train.engine.hooks.training_guards import NonFiniteLossHook, StopOnSignalHook

PISA_TRAIN_HOOKS = (AtomicCheckpointHook, CheckpointMatchesModelHook, FineTuneCheckpointHook, NonFiniteLossHook,
                    StopOnSignalHook, PerRankLossHook, ProgressBarHook, AutocastTestHook, PatienceHook)


def register_hooks() -> None:
    for hook in PISA_TRAIN_HOOKS:
        HOOKS.register_module(module=hook, force=True)
