"""Which checkpoint a bare ``--resume`` continues from: the newest one that loads.

MMEngine 0.10.7 (``find_latest_checkpoint``) takes whatever file
``work_dir/last_checkpoint`` names and fails on it if it is truncated (a run
killed while saving with upstream's in-place writes, a disk that filled up, a
copy cut short). Here every ``epoch_N.pth`` / ``iter_N.pth`` in the work dir and
the file ``last_checkpoint`` names are candidates, newest first; each is loaded
(weights-only, as MMEngine will load it) and the first that loads is used. One
that does not load, whatever the reason (truncated, corrupt, a text file named
``epoch_9.pth``, a ``last_checkpoint`` naming something else), is reported in one
line and skipped, never used. A checkpoint refused as unsafe stops the run
instead: someone put it there.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import re
from collections.abc import Callable

from pisa_train.engine.checkpoint_files import load_checkpoint_file
from pisa_train.errors import CheckpointError, UnsafeCheckpointError

CHECKPOINT_NAME = re.compile(r"^(epoch|iter)_(\d+)\.pth$")


def checkpoint_out_dir(cfg) -> str | None:
    """Where the config's checkpoint hook saves when ``default_hooks.checkpoint.out_dir`` is set to a local
    folder: ``out_dir/<work dir name>``, as mmengine 0.10.7's CheckpointHook.before_train decides it."""
    out_dir = ((cfg.get("default_hooks") or {}).get("checkpoint") or {}).get("out_dir")
    work_dir = osp.abspath(cfg.work_dir)  # what the Runner makes of it
    if not out_dir or "://" in str(out_dir) or str(out_dir) == work_dir:
        return None
    return osp.join(str(out_dir), osp.basename(work_dir.rstrip(osp.sep)))


def checkpoint_candidates(work_dir: str, out_dir: str | None = None) -> list[str]:
    """The checkpoints in ``work_dir`` (and the checkpoint hook's ``out_dir``) that --resume may continue
    from, newest first (by modification time, then by the number in the name)."""
    folders = [work_dir] + ([out_dir] if out_dir else [])
    pointer = osp.join(work_dir, "last_checkpoint")
    paths = set()
    if osp.isfile(pointer):
        # Whatever it holds (binary, a folder's name, several lines), it only adds a candidate, never an error.
        with open(pointer, errors="replace") as file:
            named = file.read().strip()
        if named and "\0" not in named and osp.isfile(named):
            paths.add(named)
            folders.append(osp.dirname(named))  # an out_dir of an earlier start: its older checkpoints too
    for folder in folders:
        if osp.isdir(folder):
            paths.update(osp.join(folder, name) for name in os.listdir(folder) if CHECKPOINT_NAME.match(name))

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
        except Exception as error:  # noqa: BLE001 - a loader other than ours: still not a reason to stop
            report(f"skipping checkpoint {path}: it cannot be read ({type(error).__name__}: "
                   f"{(str(error).strip().splitlines() or [''])[0][:200]})")
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
    if not cfg.get("resume") or cfg.get("load_from"):
        return cfg
    chosen = choose_resume_checkpoint(checkpoint_candidates(cfg.work_dir, checkpoint_out_dir(cfg)),
                                      lambda path: load_checkpoint_file(path, map_location="cpu"), report)
    cfg = copy.deepcopy(cfg)
    if chosen is None:
        report(f"no checkpoint in {cfg.work_dir} yet: starting from iteration 0")
        cfg.resume = False
    else:
        report(f"resuming from {chosen}")
        cfg.load_from = chosen
    return cfg
