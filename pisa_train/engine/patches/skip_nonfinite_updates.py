"""Patch: an optimizer step that is skipped when the loss is NaN or Inf (``nonfinite_loss='skip'``).

Upstream: mmengine 0.10.7, ``BaseModel.train_step`` computes the summed loss and
calls ``optim_wrapper.update_params(loss)`` (backward, step, zero_grad) with no
check of the loss; ``OptimWrapper`` has no hook for refusing a step. For a run
whose config asks for it, this patch replaces ``OptimWrapper.update_params``
(inherited unchanged by AmpOptimWrapper) so that a non-finite loss neither
back-propagates nor steps; every other call goes to mmengine's own method. Under
DDP every rank must skip the same step, or the others wait forever in backward's
all-reduce, so the ranks agree first.

Guard test: tests/test_training_guards.py::test_upstream_train_step_updates_through_the_instances_update_params
fails if mmengine stops calling ``update_params`` on the optimizer wrapper, or AmpOptimWrapper starts
overriding it. engine/runner.py's ``install_into_mmengine`` applies it (and takes it back for a run
that does not ask for it); engine/hooks/training_guards.py's ``NonFiniteLossHook`` reports the skips.
"""
from __future__ import annotations

import functools


def all_ranks_finite(loss) -> bool:
    """Whether ``loss`` is finite on every process of the run (on this one when not distributed)."""
    import torch
    import torch.distributed as dist

    finite = torch.isfinite(loss.detach()).all()
    if dist.is_available() and dist.is_initialized():
        flag = finite.to(torch.int32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())
    return bool(finite)


def skip_nonfinite_updates(enabled: bool = True) -> None:
    """From now on, ``OptimWrapper.update_params`` skips (zeroes the gradients, no step) a non-finite loss;
    with ``enabled=False`` it is mmengine's own again."""
    from mmengine.optim import OptimWrapper

    upstream = OptimWrapper.update_params
    if getattr(upstream, "_pisa_train_replacement", False):
        if not enabled:
            OptimWrapper.update_params = upstream.__wrapped__
        return
    if not enabled:
        return

    @functools.wraps(upstream)
    def update_params_if_finite(self, loss, *args, **kwargs):
        if not all_ranks_finite(loss):
            self.zero_grad()
            return None
        return upstream(self, loss, *args, **kwargs)

    update_params_if_finite._pisa_train_replacement = True
    OptimWrapper.update_params = update_params_if_finite
