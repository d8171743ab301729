"""Which checkpoint a bare ``--resume`` continues from: the newest one that loads.

MMEngine 0.10.7 (``find_latest_checkpoint``) takes whatever file
``work_dir/last_checkpoint`` names and fails on it if it is truncated (a run
killed while saving with upstream's in-place writes, a disk that filled up, a
copy cut short). Here every ``epoch_N.pth`` / ``iter_N.pth`` in the work dir and
the file ``last_checkpoint`` names are candidates, newest first; each is loaded
(weights-only, as MMEngine will load it) and the first that loads is used. An
unreadable one is reported in one line and skipped, never used. A checkpoint
refused as unsafe stops the run instead: someone put it there.
"""
from __future__ import annotations

import os
import os.path as osp
import re
from typing import Callable

from pisa_train.errors import CheckpointError, UnsafeCheckpointError

CHECKPOINT_NAME = re.compile(r"^(epoch|iter)_(\d+)\.pth$")


def checkpoint_candidates(work_dir: str) -> list[str]:
    """The checkpoints in ``work_dir`` that --resume may continue from, newest first
    (by modification time, then by the number in the name)."""
    if not osp.isdir(work_dir):
        return []
    paths = {osp.join(work_dir, name) for name in os.listdir(work_dir) if CHECKPOINT_NAME.match(name)}
    pointer = osp.join(work_dir, "last_checkpoint")
    if osp.isfile(pointer):
        with open(pointer) as file:
            named = file.read().strip()
        if named and osp.isfile(named):
            paths.add(named)

    def newest_first(path: str):
        match = CHECKPOINT_NAME.match(osp.basename(path))
        return -osp.getmtime(path), -(int(match.group(2)) if match else 0), path

    return sorted((p for p in paths if osp.isfile(p)), key=newest_first)


def is_resumable(checkpoint) -> bool:
    return isinstance(checkpoint, dict) and "state_dict" in checkpoint and \
        {"epoch", "iter"} <= set(checkpoint.get("meta") or {})


def choose_resume_checkpoint(candidates: list[str], load: Callable[[str], object],
                             report: Callable[[str], None]) -> str | None:
    """The first candidate that loads and holds a training state; None if there are none."""
    skipped = []
    for path in candidates:
        try:
            checkpoint = load(path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as error:
            report(f"skipping checkpoint {path}: {error}")
            skipped.append(path)
            continue
        if not is_resumable(checkpoint):
            report(f"skipping checkpoint {path}: it has no training state (meta.epoch, meta.iter, state_dict)")
            skipped.append(path)
            continue
        return path
    if skipped:
        raise CheckpointError(f"none of the {len(skipped)} checkpoints in {osp.dirname(skipped[0])} can be resumed "
                              f"from ({', '.join(osp.basename(p) for p in skipped)}); move them away to start "
                              f"over, or train without --resume")
    return None


def resolve_auto_resume(cfg, report: Callable[[str], None]):
    """For a bare --resume (``resume=True``, no ``load_from``): set ``load_from`` to the newest
    checkpoint in the work dir that loads, or start from scratch when there is none."""
    import copy

    from pisa_train.engine.patches.checkpoint_loading import load_checkpoint_file

    if not cfg.get("resume") or cfg.get("load_from"):
        return cfg
    chosen = choose_resume_checkpoint(checkpoint_candidates(cfg.work_dir),
                                      lambda path: load_checkpoint_file(path, map_location="cpu"), report)
    cfg = copy.deepcopy(cfg)
    if chosen is None:
        report(f"no checkpoint in {cfg.work_dir} yet: starting from iteration 0")
        cfg.resume = False
    else:
        report(f"resuming from {chosen}")
        cfg.load_from = chosen
    return cfg
