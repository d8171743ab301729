"""``--patience N``: mmengine 0.10.7's EarlyStoppingHook, saying what it did.

Upstream logs the stop as "the monitored metric did not improve in the last N records" and keeps
nothing of it once the run is over. ``PatienceHook`` is that hook, unchanged in when it stops; it
logs one line naming the metric, its best value and the validations waited, and records the same
in the message hub's runtime info (``stopped_early``), where engine/runner.py's ``training_outcome``
reads it for run.json and the report. Its wait count is not saved in checkpoints (upstream's is
not either): a resumed run counts its validations from zero. tests/test_run_features.py's
``test_upstream_early_stopping_hook_sets_stop_training`` fails if upstream changes how it stops.
"""
from __future__ import annotations

from mmengine.hooks import EarlyStoppingHook

STOPPED_EARLY = "stopped_early"  # the runtime-info key


class PatienceHook(EarlyStoppingHook):
    def after_val_epoch(self, runner, metrics) -> None:
        stopping = runner.train_loop.stop_training
        super().after_val_epoch(runner, metrics)
        if stopping or not runner.train_loop.stop_training:
            return
        where = f"epoch {runner.epoch}" if runner.train_loop.__class__.__name__.startswith("Epoch") \
            else f"iteration {runner.iter}"
        message = (f"stopping early at {where}: {self.monitor} has not improved on its best, {self.best_score:.4f}, "
                   f"in the last {self.wait_count} validations (--patience {self.patience})")
        runner.logger.info(message)
        runner.message_hub.update_info(STOPPED_EARLY, message)
