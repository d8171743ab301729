"""pisa-train's one checkpoint reader: weights only, through an allowlist, unless the user trusts the file.

Every checkpoint pisa-train reads goes through ``load_checkpoint_file``: --resume's choice
(engine/resume.py), pisa-infer's ``load_detector`` (engine/runner.py), and, once the patches are
applied, everything mmengine loads: local files (patches/checkpoint_loading.py) and downloads
(patches/checkpoint_downloads.py). It sits below the patches so that both use it without importing
each other.

Why an allowlist: torch >= 2.6 loads ``weights_only=True`` by default, and every checkpoint
mmengine 0.10.7 writes holds its MessageHub state: HistoryBuffer objects with numpy arrays, whose
pickle also refers to HistoryBuffer's statistics methods through ``builtins.getattr``
(open-mmlab/mmengine#1655). ``allow_mmengine_checkpoints`` registers exactly those globals with
``torch.serialization.add_safe_globals``; ``builtins.getattr`` is bound to a function that only
looks up HistoryBuffer's statistics methods. Everything else is still refused by torch, and the
one way around it is ``--trust-checkpoint FILE``: that file, and only that file, is unpickled in full.

Before torch reads a file, its zip entries are checked against the file itself: torch.save writes
every entry uncompressed, so an entry that is compressed, or that declares more bytes than the
file holds, was crafted (a few MB that torch would inflate into GBs of memory) or damaged, and is
refused before anything is allocated.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle
import re
import zipfile

import numpy as np

from pisa_train.engine.patch_state import PATCH_STATE
from pisa_train.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError

try:  # numpy >= 2 moved the pickling helpers to numpy._core
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

TRUST_FLAG = "--trust-checkpoint"


def _history_buffer_statistic(owner, name: str):
    """Stands in for ``builtins.getattr`` while unpickling: mmengine pickles the
    HistoryBuffer class's statistics methods as getattr(HistoryBuffer, 'mean')."""
    from mmengine.logging.history_buffer import HistoryBuffer

    # HistoryBuffer.__init__ registers these four in _statistics_methods, so in a process that
    # has not made a HistoryBuffer yet (a fresh pisa-eval, a resume) the registry is still empty.
    allowed = set(HistoryBuffer._statistics_methods) | {"min", "max", "current", "mean"}
    if owner is not HistoryBuffer or name not in allowed:
        raise pickle.UnpicklingError(
            f"checkpoint asks for getattr({getattr(owner, '__name__', type(owner).__name__)}, {name!r}); "
            f"only HistoryBuffer's statistics methods are allowed")
    return getattr(HistoryBuffer, name)


def mmengine_checkpoint_globals() -> list:
    """The globals an mmengine/mmdet training checkpoint pickles besides tensors and
    builtin containers (found with torch.serialization.get_unsafe_globals_in_checkpoint
    on checkpoints that pisa-train wrote)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    # HistoryBuffer keeps float64 values and int64 counts. IterTimerHook stores the run's
    # ETA in the runtime info as a numpy float64 scalar (pickled as multiarray.scalar).
    dtype_classes = [type(np.dtype(np.float64)), type(np.dtype(np.int64))]
    return [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar, *dtype_classes,
            (_history_buffer_statistic, "builtins.getattr")]


def allow_mmengine_checkpoints() -> None:
    if PATCH_STATE.was_applied("mmengine checkpoint globals"):
        return
    import torch

    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
    PATCH_STATE.record_applied("mmengine checkpoint globals")


def _real(path: str) -> str:
    return osp.realpath(osp.expanduser(str(path)))


def trust_checkpoints(files) -> None:
    """Unpickle these files in full (``--trust-checkpoint``): the user vouches for where they came from."""
    for file in files or ():
        if not osp.isfile(file):
            raise CheckpointError(f"{TRUST_FLAG} {file}: no such file; give the path of the .pth file you trust")
        PATCH_STATE.trusted_files.add(_real(file))


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


def inflated_entry_problem(path: str) -> str | None:
    """Why the zip entries of the checkpoint at ``path`` cannot be what torch.save wrote (None when
    they can, or when it is no zip file at all: torch reports those itself). torch.save stores every
    entry uncompressed, so each entry's bytes lie in the file as they are; a compressed entry, or
    one reaching past the end of the file, declares memory the file does not hold."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    file_size = os.path.getsize(path)
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            return (f"its entry {entry.filename} declares {entry.file_size} bytes in {entry.compress_size} "
                    f"compressed ones, and torch.save writes entries uncompressed")
        if entry.file_size != entry.compress_size or entry.header_offset + entry.file_size > file_size:
            return f"its entry {entry.filename} declares {entry.file_size} bytes, more than the file's {file_size}"
    return None


def load_checkpoint_file(filename, map_location=None):
    """Read a local checkpoint the one way pisa-train does: weights only (through the
    allowlist), unless the user trusted this very file; a CheckpointError otherwise
    (CheckpointNotFoundError, also a FileNotFoundError, when there is no such file)."""
    import torch

    allow_mmengine_checkpoints()
    path = osp.expanduser(str(filename))
    if not osp.isfile(path):
        raise CheckpointNotFoundError(
            f"checkpoint {filename} not found; give the path of a .pth file written by pisa-train")
    inflated = inflated_entry_problem(path)
    if inflated:
        raise CheckpointError(f"checkpoint {filename} was refused before loading: {inflated}; the file was crafted "
                              f"or damaged; use a checkpoint written by pisa-train or torch.save")
    trusted = _real(path) in PATCH_STATE.trusted_files
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
    except MemoryError:
        raise
    # Whatever else torch's readers raise on bytes that are no checkpoint (a text file starting with
    # '(' gives IndexError from the unpickler's stack): the file is corrupt, which is one line.
    except Exception as error:  # noqa: BLE001
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
    named = re.search(r"Unsupported global: GLOBAL (.+?) was not an allowed global", refusal)
    return bool(named) and re.fullmatch(r"[A-Za-z_][\w.]*", named.group(1)) is None


def _corrupt_message(filename, error: Exception) -> str:
    detail = _weights_unpickler_reason(error) or (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (f"checkpoint {filename} cannot be read; it is truncated or corrupt ({detail[:200]}); use an earlier "
            f"checkpoint, or --resume alone, which skips unreadable checkpoints")
