"""What the checkpoint options of a command point at, checked on disk: ``--resume PATH``, ``--load-from``
and pisa-eval's CHECKPOINT.

These read the file system (is the file there?) and the model zoo (is it a released model's name?),
so they are not rewrites: build.py asks them first and hands what they found to the pure rewrites of
rewrites.py (``apply_resume``, ``apply_load_from``, ``apply_checkpoint_for_testing``).
"""
from __future__ import annotations

import difflib
import os.path as osp

from pisa_train.errors import CheckpointError, UsageError
from pisa_train.fetch.model_zoo import MODEL_ZOO
from pisa_train.fetch.weights import is_remote, weights_reference

# fetch.weights is imported where it is used: it brings in http.client and ssl, which would double the
# time `pisa-train --help` takes (build.py, which imports this module, is imported by the CLI).


def resume_checkpoint_on_disk(resume: str | None) -> str | None:
    """``--resume``: None, "auto" (the newest checkpoint in the work dir, found when the run starts),
    or a checkpoint file that exists."""
    if resume is not None and resume != "auto" and not osp.isfile(resume):
        raise CheckpointError(f"--resume checkpoint {resume} not found; give the path of a .pth file, or "
                              f"--resume alone to continue from the newest checkpoint in the work dir")
    return resume


def load_from_reference(checkpoint: str | None, resume: str | None = None) -> str | None:
    """``--load-from CHECKPOINT|URL|MODEL_NAME``: the file or URL to start from (a released model's name
    becomes its URL, fetched when the run starts); None without it."""
    if checkpoint is None:
        return None
    if resume is not None:
        raise UsageError("--load-from starts a new run from a checkpoint's weights and --resume continues a run "
                         "with its optimizer state and iteration; give one of them")

    reference = weights_reference(checkpoint)
    if reference is None:
        close = difflib.get_close_matches(checkpoint, list(MODEL_ZOO), n=1, cutoff=0.8)
        hint = f"did you mean {close[0]}?" if close else \
            "give a .pth file, an http(s) URL, or a released model's name (`pisa-train --list`)"
        raise CheckpointError(f"--load-from {checkpoint}: no such file, and not a released model or an URL; {hint}")
    return reference


def testing_checkpoint_reference(checkpoint: str) -> str:
    """pisa-eval's CHECKPOINT: a file, or a released model's name or an URL (fetched when the test starts)."""

    reference = checkpoint if osp.isfile(checkpoint) else weights_reference(checkpoint)
    if reference is None or not (osp.isfile(reference) or is_remote(reference)):
        raise CheckpointError(f"checkpoint {checkpoint} not found; give the path of a .pth file written by "
                              f"pisa-train (work_dirs/<config>/epoch_N.pth or iter_N.pth), a released model's "
                              f"name (pisa-train --list) or an URL")
    return reference
