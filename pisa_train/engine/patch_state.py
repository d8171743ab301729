"""What pisa-train's patches have done to this process, in one object.

The patches (engine/patches/) and the checkpoint reader (engine/checkpoint_files.py) change
process-wide things once: mmengine's checkpoint loaders, torch's safe globals. ``PATCH_STATE``
remembers which of them are done and which files the user trusted (``--trust-checkpoint``), so
that applying them again is cheap and a second run in the same process (the Python API, the
tests) sees the same behaviour. ``reset()`` forgets all of it: tests/conftest.py calls it after
each test, once it has given mmengine and torch back their own state, so that the next run
applies every patch again. It sits below the patches so that each of them can use it without
importing another.
"""
from __future__ import annotations


class PatchState:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # Names of the patches applied in this process.
        self.applied: set[str] = set()
        # Real paths of the files named by --trust-checkpoint: unpickled in full.
        self.trusted_files: set[str] = set()

    def was_applied(self, name: str) -> bool:
        return name in self.applied

    def record_applied(self, name: str) -> None:
        """Called once ``name`` is fully applied, so that a patch that failed halfway is tried again."""
        self.applied.add(name)


PATCH_STATE = PatchState()
