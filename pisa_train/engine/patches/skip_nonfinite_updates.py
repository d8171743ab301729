"""Patch: an optimizer step that is skipped when the loss is NaN or Inf (``nonfinite_loss='skip'``).

Upstream: mmengine 0.10.7, ``BaseModel.train_step`` computes the summed loss and
calls ``optim_wrapper.update_params(loss)`` (backward, step, zero_grad) with no
check of the loss; ``OptimWrapper`` has no hook for refusing a step. This patch
rebinds ``update_params`` on the run's one OptimWrapper instance (not the class)
so that a non-finite loss neither back-propagates nor steps; every other call
goes to mmengine's own method. Under DDP every rank must skip the same step, or
the others wait forever in backward's all-reduce, so the ranks agree first.

Guard test: tests/test_training_guards.py::test_upstream_train_step_updates_through_the_instances_update_params
fails if mmengine stops calling ``update_params`` on the instance.
engine/hooks/training_guards.py's ``NonFiniteLossHook`` applies it.
"""
from __future__ import annotations

from pisa_train.errors import ConfigError


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


def skip_nonfinite_updates(optim_wrapper) -> None:
    """Make ``optim_wrapper.update_params`` skip (zero the gradients, no step) a non-finite loss."""
    if not hasattr(optim_wrapper, "update_params"):
        raise ConfigError("nonfinite_loss='skip' needs a single optimizer (an OptimWrapper); this config has "
                          f"{type(optim_wrapper).__name__}; use nonfinite_loss='stop'")
    update_params = optim_wrapper.update_params

    def update_params_if_finite(loss, *args, **kwargs):
        if not all_ranks_finite(loss):
            optim_wrapper.zero_grad()
            return None
        return update_params(loss, *args, **kwargs)

    optim_wrapper.update_params = update_params_if_finite
