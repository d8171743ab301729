"""What run.json records of a training run that only the running loop knows: where it started, and
when its best checkpoint was saved.

MMEngine resumes inside ``Runner.train()`` (``load_or_resume``), so the iteration a resumed run continues
from is known only at ``before_train``. ``RunRecordHook`` hands it, with the checkpoint, to a callback
that pisa-train's command passes in (engine/runner.py registers the hook object itself: a callback
cannot go through a config), which records the start in run.json before the first iteration: a run
stopped by a signal or a crash still leaves its start in the record. After each validation it notes
the epoch and iteration of a new best checkpoint (MMEngine's save_best names the file by one of them
only) in the message hub's runtime info, where engine/runner.py's ``training_outcome`` reads them.
"""
from __future__ import annotations

from collections.abc import Callable

from mmengine.hooks import Hook

BEST_SAVED_AT = "best_ckpt_saved_at"  # the runtime-info key: {"file": ..., "epoch": ..., "iter": ...}


class RunRecordHook(Hook):
    priority = "VERY_LOW"  # after the CheckpointHook (VERY_LOW too, registered earlier) has saved the best

    def __init__(self, on_start: Callable[[dict], None], resumed_from: str | None):
        self.on_start = on_start
        self.resumed_from = resumed_from

    def before_train(self, runner) -> None:
        self.on_start({"resumed_from": self.resumed_from or None, "iteration": runner.iter, "epoch": runner.epoch})

    def after_val_epoch(self, runner, metrics=None) -> None:
        info = runner.message_hub.runtime_info
        best = info.get("best_ckpt")
        if best and (info.get(BEST_SAVED_AT) or {}).get("file") != best:
            runner.message_hub.update_info(BEST_SAVED_AT, {"file": best, "epoch": runner.epoch, "iter": runner.iter})
