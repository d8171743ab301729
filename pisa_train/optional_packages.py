"""Packages that only some options need, checked before a run starts rather than
failing deep inside MMEngine after the model is built."""
from __future__ import annotations

import importlib.util

from pisa_train.errors import EnvironmentProblem


def require_tensorboard() -> None:
    """MMEngine 0.10.7's TensorboardVisBackend imports ``torch.utils.tensorboard``, which needs
    the ``tensorboard`` package; without it MMEngine fails only when the first scalar is logged."""
    if importlib.util.find_spec("tensorboard") is None:
        raise EnvironmentProblem("--tensorboard needs the tensorboard package, which is not installed in this "
                                 "environment; install it with `.venv/bin/pip install tensorboard` "
                                 "(or leave out --tensorboard: the curves are drawn into the work dir anyway, "
                                 "see pisa-plot)")
