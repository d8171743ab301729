"""Patch: checkpoints load weights-only, mmengine's own training checkpoints included.

Upstream: mmengine 0.10.7 (open-mmlab/mmengine#1655): torch 2.6 made
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
refused by torch. Guard tests: tests/test_safe_checkpoint_loading.py::test_upstream_still_needs_the_wrapper
and tests/test_safe_checkpoint_loading.py::test_upstream_loads_local_checkpoints_with_torchs_default
fail if upstream starts loading these checkpoints without us.

Weights-only must hold on every path by which mmengine 0.10.7 reads a file in
train, resume and eval, not only by torch's default: ``load_from_local`` calls
``torch.load`` without ``weights_only``, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
in the environment would turn it off. ``guard_checkpoint_loading`` therefore
replaces mmengine's loader for local files (the ``''`` scheme of
``CheckpointLoader``, mmengine's own extension point) with
``load_checkpoint_file``, which passes ``weights_only=True`` explicitly and turns
torch's failures into a CheckpointError that says why and what to do; and it
has checkpoint_downloads.py replace mmengine's loaders of downloads (``https://``,
``open-mmlab://``, ``torchvision://``, ``mmcls://``), which unpickle in full, so that a
downloaded file is read by ``load_checkpoint_file`` too. The one way around it is
``--trust-checkpoint FILE``: that file, and only that file, is unpickled in full.
"""
from __future__ import annotations


def _history_buffer_statistic(owner, name: str):
    """Stands in for ``builtins.getattr`` while unpickling: mmengine pickles the
    HistoryBuffer class's statistics methods as getattr(HistoryBuffer, 'mean')."""
    from mmengine.logging.history_buffer import HistoryBuffer

    # HistoryBuffer.__init__ registers these four in _statistics_methods, so in a process that
    # has not made a HistoryBuffer yet (a fresh pisa-eval, a resume) the registry is still empty.
    allowed = set(HistoryBuffer._statistics_methods) | {"min", "max", "current", "mean"}
    if owner is not HistoryBuffer or name not in allowed:
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

    try:  # numpy >= 2 moved the pickling helpers to numpy._core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar

    # HistoryBuffer keeps float64 values and int64 counts. IterTimerHook stores the run's
    # ETA in the runtime info as a numpy float64 scalar (pickled as multiarray.scalar).
    dtype_classes = [type(np.dtype(np.float64)), type(np.dtype(np.int64))]
    return [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar, *dtype_classes,
            (_history_buffer_statistic, "builtins.getattr")]


_registered = False


def allow_mmengine_checkpoints() -> None:
    global _registered
    if _registered:
        return
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
    _registered = True


TRUST_FLAG = "--trust-checkpoint"
_trusted_files: set[str] = set()


def _real(path: str) -> str:
    import os.path as osp

    return osp.realpath(osp.expanduser(str(path)))


def trust_checkpoints(files) -> None:
    """Unpickle these files in full (``--trust-checkpoint``): the user vouches for where they came from."""
    from pisa_train.errors import CheckpointError

    for file in files or ():
        import os.path as osp

        if not osp.isfile(file):
            raise CheckpointError(f"{TRUST_FLAG} {file}: no such file; give the path of the .pth file you trust")
        _trusted_files.add(_real(file))


def _unsafe_globals(path: str) -> list[str]:
    """The globals a checkpoint pickles that the allowlist does not cover ([] when it is not
    a readable zip checkpoint, so that the caller reports it as corrupt)."""
    import torch

    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - unreadable: reported as corrupt by the caller
        return []
    allowed = {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
               for entry in mmengine_checkpoint_globals()}
    return sorted(set(found) - allowed)


def load_checkpoint_file(filename, map_location=None):
    """Read a local checkpoint the one way pisa-train does: weights only (through the
    allowlist), unless the user trusted this very file; a CheckpointError otherwise."""
    import os.path as osp
    import pickle

    import torch

    from pisa_train.errors import CheckpointError, UnsafeCheckpointError

    allow_mmengine_checkpoints()
    path = osp.expanduser(str(filename))
    if not osp.isfile(path):
        raise CheckpointError(f"checkpoint {filename} not found; give the path of a .pth file written by pisa-train")
    trusted = _real(path) in _trusted_files
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as error:
        unsafe = [] if trusted else _unsafe_globals(path)
        refusal = _weights_unpickler_reason(error)
        if not unsafe and not trusted and refusal and ("Unsupported global" in refusal or "getattr" in refusal) \
                and not _garbage_global(refusal):
            unsafe = [refusal]
        if unsafe:
            raise UnsafeCheckpointError(
                f"checkpoint {filename} was refused: it pickles {', '.join(unsafe[:3])}"
                f"{' and more' if len(unsafe) > 3 else ''}, which is not among the weights and mmengine "
                f"training state that pisa-train loads, and unpickling it could run arbitrary code; if you "
                f"trust where this file came from, load it anyway with {TRUST_FLAG} {filename}") from error
        raise CheckpointError(_corrupt_message(filename, error)) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, ImportError) as error:
        raise CheckpointError(_corrupt_message(filename, error)) from error


def _weights_unpickler_reason(error: Exception) -> str | None:
    """The line of torch's 'Weights only load failed' message that says what was refused."""
    text = str(error)
    if "WeightsUnpickler error:" not in text:
        return None
    rest = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
    return rest[0] if rest else None


def _garbage_global(refusal: str) -> bool:
    """Whether the global torch refused is no importable name at all: bytes that are not a checkpoint
    (a file that starts with 'c', pickle's GLOBAL opcode, reads as one), so corrupt, not unsafe."""
    import re

    named = re.search(r"Unsupported global: GLOBAL (.+?) was not an allowed global", refusal)
    return bool(named) and re.fullmatch(r"[A-Za-z_][\w.]*", named.group(1)) is None


def _corrupt_message(filename, error: Exception) -> str:
    detail = _weights_unpickler_reason(error) or (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (f"checkpoint {filename} cannot be read; it is truncated or corrupt ({detail[:200]}); use an earlier "
            f"checkpoint, or --resume alone, which skips unreadable checkpoints")


_guarded = False


def guard_checkpoint_loading(trusted_files=(), say=print) -> None:
    """Make every checkpoint mmengine reads in this process go through weights-only loading."""
    global _guarded
    trust_checkpoints(trusted_files)
    allow_mmengine_checkpoints()
    import os

    # Would make torch.load unpickle everything wherever mmengine leaves weights_only unset.
    if os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None) is not None:
        say(f"ignoring TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: checkpoints load weights-only; "
            f"use {TRUST_FLAG} FILE for a file that needs more")
    if _guarded:
        return
    from mmengine.runner.checkpoint import CheckpointLoader

    from pisa_train.engine.patches.checkpoint_downloads import register_remote_checkpoint_loaders

    CheckpointLoader.register_scheme(prefixes="", loader=_load_from_local, force=True)
    register_remote_checkpoint_loaders()
    _guarded = True


def _load_from_local(filename, map_location):
    """mmengine's CheckpointLoader calls this for local paths (replacing load_from_local)."""
    return load_checkpoint_file(filename, map_location)
