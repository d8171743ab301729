"""One run per work dir: two runs in one folder delete each other's checkpoints in progress, resume from
files the other one deletes, and write every iteration twice into one log.

A run holds ``files.hold_exclusive_lock`` on ``WORK_DIR/.pisa-train.lock`` from before ``--resume`` picks
a checkpoint until training ends (engine/runner.py); the kernel releases it when the process dies, so a
killed run never blocks the next one. A distributed run takes it once, on rank 0: its other processes
share the work dir on purpose. Cleaning up what an interrupted save left behind happens only under it
(engine/hooks/atomic_checkpoint.py), so a second process can never take a running save for a stale one.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
from collections.abc import Iterator

from pisa_train.files import hold_exclusive_lock

WORK_DIR_LOCK = ".pisa-train.lock"

# The work dirs (real paths) this process holds the lock of: the checkpoint hook takes the lock
# itself only when the run was not started through run_training (a Runner built by hand).
_held_here: set[str] = set()


@contextlib.contextmanager
def one_run_in_work_dir(work_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the work dir's lock for the ``with`` block (re-entrant within one process); LockHeld
    (exit 6, one line naming the process that holds it) if another process holds it."""
    key = osp.realpath(work_dir)
    if key in _held_here:
        yield
        return
    with hold_exclusive_lock(osp.join(work_dir, WORK_DIR_LOCK), f"work dir {work_dir}",
                             "give this run another --work-dir"):
        _held_here.add(key)
        try:
            yield
        finally:
            _held_here.discard(key)
