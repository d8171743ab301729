"""Each process's own loss in a distributed run, one line per logged iteration.

MMEngine logs from rank 0 only, and the losses it logs are rank 0's (MMEngine 0.10
does not average them over processes; DDP averages the gradients). A rank whose data
makes its loss diverge would go unseen. ``PerRankLossHook`` prints, at the logger's
interval, ``[pisa-train] rank R/W iter I: loss ... loss_cls ...`` from every process;
config/rewrites.py's ``log_losses_per_rank`` adds it to distributed runs.
"""
from __future__ import annotations

from mmengine.dist import get_dist_info
from mmengine.hooks import Hook

from pisa_train.terminal import write_line


class PerRankLossHook(Hook):
    priority = "BELOW_NORMAL"

    def __init__(self, interval: int = 50):
        self.interval = interval

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        rank, world_size = get_dist_info()
        if world_size < 2 or not outputs or not self.every_n_train_iters(runner, self.interval):
            return
        terms = " ".join(f"{name}: {float(value.detach() if hasattr(value, 'detach') else value):.4f}"
                         for name, value in outputs.items() if "loss" in name)
        write_line(f"[pisa-train] rank {rank}/{world_size} iter {runner.iter + 1}: {terms}")
