"""A real MMEngine Runner on a two-weight model and 16 numbers: MMEngine's training loop, hooks and
checkpointing in about a second, without mmdet. For tests of pisa-train's hooks."""
from __future__ import annotations

import signal
import uuid

import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, MODELS
from torch.utils.data import Dataset

from pisa_train.config import rewrites as config_rewrites
from pisa_train.engine import runner as engine


@MODELS.register_module(force=True)
class ToyRegressor(BaseModel):
    """loss_fit = (w x + b - y)^2; ``nan_at`` names the train_step calls (1-based) whose
    loss_fit is NaN, to drive the non-finite loss guard."""

    def __init__(self, nan_at=()):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.nan_at = set(nan_at)
        self.calls = 0

    def forward(self, inputs, targets=None, mode="tensor"):
        inputs = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        prediction = self.linear(inputs)
        if mode == "loss":
            self.calls += 1
            targets = torch.stack(targets) if isinstance(targets, (list, tuple)) else targets
            loss = ((prediction - targets) ** 2).mean()
            if self.calls in self.nan_at:
                loss = loss * float("nan")
            return dict(loss_fit=loss, loss_zero=prediction.sum() * 0)
        return prediction


@DATASETS.register_module(force=True)
class ToyData(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        x = torch.tensor([index / 16.0])
        return dict(inputs=x, targets=2 * x + 1)


def toy_cfg(work_dir, max_iters=6, interval=1, max_keep_ckpts=2, custom_hooks=(), nonfinite_loss=None,
            nan_at=(), by_epoch=False):

    train_cfg = dict(by_epoch=True, max_epochs=2) if by_epoch else dict(by_epoch=False, max_iters=max_iters)
    cfg = Config(dict(
        model=dict(type="ToyRegressor", nan_at=list(nan_at)),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=dict(type="ToyData"), sampler=dict(type="DefaultSampler", shuffle=False),
                              batch_size=4, num_workers=0, collate_fn=dict(type="default_collate")),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9)),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=interval, by_epoch=by_epoch,
                                           max_keep_ckpts=max_keep_ckpts),
                           logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=list(custom_hooks),
        log_level="ERROR",
        default_scope="mmengine",
        randomness=dict(seed=0),
        # Unique per runner: MMEngine keeps one MessageHub/logger per experiment name and process.
        experiment_name=f"toy_{uuid.uuid4().hex[:12]}",
    ))
    if nonfinite_loss is not None:
        cfg.nonfinite_loss = nonfinite_loss
    return config_rewrites.add_training_safeguards(cfg)


def build_toy_runner(cfg):
    return engine.build_runner(cfg)


from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402


@HOOKS.register_module(force=True)
class SendSignalHook(Hook):
    """Sends this process ``signal_name`` (once, or ``times`` times) during iteration ``at``
    (1-based), as a scheduler or a Ctrl-C would, mid-iteration."""

    def __init__(self, at: int, signal_name: str = "SIGTERM", times: int = 1):
        self.at, self.signal_name, self.times = at, signal_name, times

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at:
            for _ in range(self.times):
                signal.raise_signal(getattr(signal, self.signal_name))
