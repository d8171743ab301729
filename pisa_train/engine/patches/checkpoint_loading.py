"""Patch: checkpoints mmengine reads from local files load weights-only, mmengine's own training checkpoints included.

Upstream: mmengine 0.10.7 (open-mmlab/mmengine#1655): torch 2.6 made
``torch.load(..., weights_only=True)`` the default, and mmengine's
``load_from_local`` calls ``torch.load(filename, map_location)``. Every
checkpoint mmengine writes holds its MessageHub state: HistoryBuffer objects
with numpy arrays, whose pickle also refers to HistoryBuffer's statistics
methods through ``builtins.getattr``. So resume fails with "Unsupported global:
GLOBAL mmengine.logging.history_buffer.HistoryBuffer".

The fix is not ``weights_only=False`` (which runs any code a .pth file holds)
but pisa-train's checkpoint reader, engine/checkpoint_files.py: an allowlist of
exactly the globals those checkpoints contain. Guard tests:
tests/test_safe_checkpoint_loading.py::test_upstream_still_needs_the_wrapper
and tests/test_safe_checkpoint_loading.py::test_upstream_loads_local_checkpoints_with_torchs_default
fail if upstream starts loading these checkpoints without us.

Weights-only must hold on every path by which mmengine 0.10.7 reads a local file in
train, resume and eval, not only by torch's default: ``load_from_local`` calls
``torch.load`` without ``weights_only``, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
in the environment would turn it off. ``guard_checkpoint_loading`` therefore
replaces mmengine's loader for local files (the ``''`` scheme of
``CheckpointLoader``, mmengine's own extension point) with
checkpoint_files.load_checkpoint_file, which passes ``weights_only=True`` explicitly
and turns torch's failures into a CheckpointError that says why and what to do.
Downloads are the business of checkpoint_downloads.py; engine/runner.py's
``install_into_mmengine`` applies both, side by side.
"""
from __future__ import annotations

import os

from pisa_train.engine.checkpoint_files import (
    TRUST_FLAG,
    allow_mmengine_checkpoints,
    load_checkpoint_file,
    trust_checkpoints,
)
from pisa_train.engine.patch_state import PATCH_STATE


def guard_checkpoint_loading(trusted_files=(), say=print) -> None:
    """Make every local checkpoint mmengine reads in this process go through weights-only loading."""
    trust_checkpoints(trusted_files)
    allow_mmengine_checkpoints()
    # Would make torch.load unpickle everything wherever mmengine leaves weights_only unset.
    if os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None) is not None:
        say(f"ignoring TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: checkpoints load weights-only; "
            f"use {TRUST_FLAG} FILE for a file that needs more")
    if PATCH_STATE.was_applied("local checkpoint loader"):
        return
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=_load_from_local, force=True)
    PATCH_STATE.record_applied("local checkpoint loader")


def _load_from_local(filename, map_location):
    """mmengine's CheckpointLoader calls this for local paths (replacing load_from_local)."""
    return load_checkpoint_file(filename, map_location)
