"""Let torch >= 2.6 load mmengine checkpoints without unpickling arbitrary objects.

Works around mmengine 0.10.7 (open-mmlab/mmengine#1655): torch 2.6 made
``torch.load(..., weights_only=True)`` the default, and mmengine's
``load_from_local`` calls ``torch.load(filename, map_location)``. Every
checkpoint mmengine writes holds its MessageHub state: HistoryBuffer objects
with numpy arrays, whose pickle also refers to HistoryBuffer's statistics
methods through ``builtins.getattr``. So resume fails with "Unsupported global:
GLOBAL mmengine.logging.history_buffer.HistoryBuffer".

The fix is not ``weights_only=False`` (which runs any code a .pth file holds)
but an allowlist of exactly the globals those checkpoints contain, registered
with ``torch.serialization.add_safe_globals``. ``builtins.getattr`` is not
allowed as such: the name is bound to a function that only looks up
HistoryBuffer's registered statistics methods. Everything else is still
refused by torch. tests/test_safe_checkpoint_loading.py fails if upstream
starts loading these checkpoints without us.
"""
from __future__ import annotations


def _history_buffer_statistic(owner, name: str):
    """Stands in for ``builtins.getattr`` while unpickling: mmengine pickles the
    HistoryBuffer class's statistics methods as getattr(HistoryBuffer, 'mean')."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is not HistoryBuffer or name not in HistoryBuffer._statistics_methods:
        import pickle

        raise pickle.UnpicklingError(
            f"checkpoint asks for getattr({getattr(owner, '__name__', type(owner).__name__)}, {name!r}); "
            f"only HistoryBuffer's statistics methods are allowed")
    return getattr(HistoryBuffer, name)


def mmengine_checkpoint_globals() -> list:
    """The globals an mmengine/mmdet training checkpoint pickles besides tensors and
    builtin containers (found with torch.serialization.get_unsafe_globals_in_checkpoint
    on checkpoints that pisa-train wrote)."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:  # numpy >= 2 moved the pickling helper to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct

    # HistoryBuffer keeps float64 values and int64 counts.
    dtype_classes = [type(np.dtype(np.float64)), type(np.dtype(np.int64))]
    return [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, *dtype_classes,
            (_history_buffer_statistic, "builtins.getattr")]


_registered = False


def allow_mmengine_checkpoints() -> None:
    global _registered
    if _registered:
        return
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
    _registered = True
