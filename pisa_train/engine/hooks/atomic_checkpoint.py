"""Checkpoints that survive a kill, a full disk or a failed write at any moment.

Works around mmengine 0.10.7's ``CheckpointHook._save_checkpoint_with_step``,
which, in this order: (1) deletes the oldest kept checkpoint when
``max_keep_ckpts`` is reached, (2) writes the new one in place through
``Runner.save_checkpoint`` -> ``mmengine.runner.checkpoint.save_checkpoint`` ->
``LocalBackend.put`` (``open(path, 'wb').write(...)``, no fsync), and (3)
rewrites ``work_dir/last_checkpoint`` in place. A SIGKILL or a full disk during
(2) leaves a truncated newest checkpoint, one good checkpoint fewer than asked
for (with ``max_keep_ckpts=1``: none at all), and possibly an empty
``last_checkpoint``, which is what ``--resume`` reads.

``AtomicCheckpointHook`` is that hook with the order and the writes changed, and
nothing else: mmengine still builds the checkpoint dict and serialises it
(``Runner.save_checkpoint``, with its ``before_save_checkpoint`` hooks), but into
a hidden temporary file in the same folder, which is then fsynced and moved over
the final name with ``os.replace`` (atomic on POSIX), and the folder is fsynced
(files.py, ``publish_atomically``); ``last_checkpoint`` is replaced the same way;
old checkpoints are deleted only after the new one is in place, and at least ``MIN_KEPT`` are kept. Before each
save it checks that the disk has room for one more checkpoint, and any failed
write becomes a ``CheckpointSaveError`` that leaves the earlier checkpoints as
they were. config/rewrites.py's ``add_training_safeguards`` swaps it in for the
config's ``CheckpointHook`` by name (engine/hooks/__init__.py registers it in
mmengine's HOOKS registry, which mmdet's registry falls back to).

A local ``out_dir`` (``default_hooks.checkpoint.out_dir``) works as upstream's: checkpoints go to
``out_dir/<work dir name>``, made at the first save, and ``work_dir/last_checkpoint`` names them, so
that ``--resume`` finds them (engine/resume.py also looks in that folder). Remote ``out_dir`` backends
(s3://, petrel://) keep upstream's behaviour.
``save_best`` checkpoints are saved atomically too, and the previous best is deleted
after the new one is in place (``_save_best_checkpoint``); ``--resume`` never picks them. tests/test_checkpoint_saving.py fails if upstream changes the
behaviour this works around.
"""
from __future__ import annotations

import errno
import os
import os.path as osp
import re
import shutil
from collections import deque

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper

from pisa_train.engine.work_dir_lock import one_run_in_work_dir
from pisa_train.errors import CheckpointSaveError
from pisa_train.files import publish_atomically, remove_stale_temp_files, write_text_atomically

MIN_KEPT = 2  # a checkpoint that turns out unreadable must leave one to fall back to
# One checkpoint more must fit: the new one is written before the oldest goes.
SIZE_MARGIN = 1.1
FIRST_SAVE_FACTOR = 3  # weights + optimizer state (momentum: x2; Adam: x3) before a previous size is known


def estimate_checkpoint_bytes(previous_size: int | None, model_bytes: int) -> int:
    if previous_size:
        return int(previous_size * SIZE_MARGIN)
    return int(model_bytes * FIRST_SAVE_FACTOR)


def free_space_problem(folder: str, needed: int, free: int) -> str | None:
    if free >= needed:
        return None
    mib = 1024 * 1024
    return (f"not enough free disk space in {folder} for the next checkpoint: about {needed / mib:.0f} MiB "
            f"needed, {free / mib:.0f} MiB free")


def keep_plan(kept: list[int], step: int, max_keep: int) -> tuple[list[int], list[int]]:
    """(steps kept after saving ``step``, steps whose files to delete afterwards)."""
    if kept and kept[-1] == step:
        return list(kept), []
    steps = list(kept) + [step]
    if max_keep <= 0:
        return steps, []
    return steps[-max_keep:], steps[:-max_keep]


def outdated_checkpoints(names: list[str], filename_tmpl: str, kept: list[int]) -> list[str]:
    """The files named like ``filename_tmpl`` whose step is below every kept step."""
    if not kept:
        return []
    prefix, _, suffix = filename_tmpl.partition("{}")
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")
    return sorted(name for name in names if (match := pattern.match(name)) and int(match.group(1)) < min(kept))


def _why(error: OSError) -> str:
    reason = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    return f"the disk is full ({reason})" if error.errno in (errno.ENOSPC, errno.EDQUOT) else reason


def save_failure_message(path: str, error: OSError, work_dir: str) -> str:
    return (f"could not save checkpoint {path}: {_why(error)}; the earlier checkpoints in "
            f"{work_dir} are intact; free some space (or fix the folder), then continue with --resume")


def pointer_failure_message(path: str, pointer: str, error: OSError, work_dir: str) -> str:
    return (f"saved checkpoint {path}, but could not update {pointer}: {_why(error)}; the checkpoints in "
            f"{work_dir} are intact; free some space (or fix the folder), then continue with --resume, which "
            f"takes the newest checkpoint that loads")


class AtomicCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, saving atomically and deleting old checkpoints last."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if 0 < self.max_keep_ckpts < MIN_KEPT:
            self.max_keep_ckpts = MIN_KEPT

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._atomic = isinstance(self.file_backend, LocalBackend)
        if self._atomic and is_main_process():
            # Only under the work dir's lock (held since run_training; taken here for a Runner built by
            # hand): another run's save in progress is not a stale file (engine/work_dir_lock.py).
            with one_run_in_work_dir(runner.work_dir):
                for folder in {self.out_dir, runner.work_dir}:
                    for name in remove_stale_temp_files(folder):
                        runner.logger.info(f"removed {osp.join(folder, name)}, left by a save that was interrupted")
                kept = list(getattr(self, "keep_ckpt_ids", []))
                # A config's out_dir/<work dir name> exists only from the first save on, as upstream makes it.
                existing = os.listdir(self.out_dir) if osp.isdir(self.out_dir) else []
                for name in outdated_checkpoints(existing, self.filename_tmpl, kept):
                    # Older than every kept one: a kill came between a save and the deletion it allowed.
                    os.unlink(osp.join(self.out_dir, name))
                    runner.logger.info(f"removed {name}: older than the {len(kept)} checkpoints kept")

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not getattr(self, "_atomic", False):
            return super()._save_checkpoint_with_step(runner, step, meta)
        old_kept = list(getattr(self, "keep_ckpt_ids", []))
        kept, dropped = keep_plan(old_kept, step, self.max_keep_ckpts)
        if self.max_keep_ckpts > 0:
            # Recorded before saving, as upstream does, so the checkpoint knows which files it keeps.
            runner.message_hub.update_info("keep_ckpt_ids", kept)
        filename = self.filename_tmpl.format(step)
        path = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", path)
        try:
            self.save_checkpoint_file(runner, filename, meta, by_epoch=self.by_epoch)
        except BaseException:
            if self.max_keep_ckpts > 0:
                runner.message_hub.update_info("keep_ckpt_ids", old_kept)
            if self.last_ckpt is not None:
                runner.message_hub.update_info("last_ckpt", self.last_ckpt)
            raise
        self.last_ckpt = path
        if self.max_keep_ckpts > 0:
            self.keep_ckpt_ids = deque(kept, self.max_keep_ckpts)
        if not is_main_process():
            return
        for old_step in dropped:
            old = osp.join(self.out_dir, self.filename_tmpl.format(old_step))
            if osp.isfile(old):
                os.unlink(old)
            elif osp.isdir(old):  # deepspeed saves folders
                shutil.rmtree(old)

    def save_checkpoint_file(self, runner, filename: str, meta: dict, by_epoch: bool) -> str:
        """Save the runner's state as ``out_dir/filename`` atomically and point last_checkpoint at it."""
        path = osp.join(self.out_dir, filename)
        if not is_main_process():
            return path  # Runner.save_checkpoint is master_only
        try:  # out_dir/<work dir name> is made at the first save, as upstream's LocalBackend.put makes it
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as error:
            raise CheckpointSaveError(save_failure_message(path, error, self.out_dir)) from error
        self._check_free_space(runner)

        def write(temp: str) -> None:
            runner.save_checkpoint(self.out_dir, osp.basename(temp), self.file_client_args,
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=by_epoch, backend_args=self.backend_args, **self.args)

        try:
            publish_atomically(path, write)
        except OSError as error:
            raise CheckpointSaveError(save_failure_message(path, error, self.out_dir)) from error
        pointer = osp.join(runner.work_dir, "last_checkpoint")
        try:
            write_text_atomically(pointer, path)
        except OSError as error:
            raise CheckpointSaveError(pointer_failure_message(path, pointer, error, self.out_dir)) from error
        self._last_size = osp.getsize(path)
        return path

    def _check_free_space(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        previous = getattr(self, "_last_size", None)
        if previous is None and self.last_ckpt and osp.isfile(self.last_ckpt):
            previous = osp.getsize(self.last_ckpt)
        needed = estimate_checkpoint_bytes(previous, model_bytes)
        problem = free_space_problem(self.out_dir, needed, shutil.disk_usage(self.out_dir).free)
        if problem:
            raise CheckpointSaveError(f"{problem}; the earlier checkpoints in {self.out_dir} are intact; free some "
                                      f"space, then continue with --resume")

    def save_for_stop(self, runner) -> str:
        """Save at this iteration boundary for a stop request (SIGTERM/SIGINT), unless the
        regular schedule has just saved it. Epoch-based runs get ``iter_N.pth``: MMEngine 0.10.7
        resumes them at the start of the interrupted epoch, with the iteration count kept."""
        step = runner.iter + 1
        if not self.by_epoch:
            if self.last_ckpt == self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step)):
                return self.last_ckpt
            self._save_checkpoint(runner)
            return self.last_ckpt
        filename = f"iter_{step}.pth"
        path = self.save_checkpoint_file(runner, filename, dict(epoch=runner.epoch, iter=step), by_epoch=False)
        self.last_ckpt = path
        return path

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """The best checkpoint (``save_best``, kept by default: config/rewrites.py's ``keep_best_checkpoint``),
        saved atomically and replacing the previous best only once it is in place. Upstream (mmengine 0.10.7)
        deletes the previous best, then writes the new one in place through ``runner.save_checkpoint``: a kill
        in between leaves no best checkpoint, or a truncated one. Here upstream's code still decides whether
        and under which name to save, with the previous best hidden from it and ``runner.save_checkpoint``
        writing through files.py; tests/test_run_features.py's
        ``test_upstream_save_best_deletes_the_previous_best_then_saves_in_place`` fails if upstream changes."""
        if not getattr(self, "_atomic", False):
            return super()._save_best_checkpoint(runner, metrics)
        previous = dict(getattr(self, "best_ckpt_path_dict", None) or {})
        single = getattr(self, "best_ckpt_path", None)
        if hasattr(self, "best_ckpt_path"):
            self.best_ckpt_path = None
        if previous:
            self.best_ckpt_path_dict = dict.fromkeys(previous)
        save, own = runner.save_checkpoint, "save_checkpoint" in vars(runner)

        def save_atomically(out_dir, filename, *args, **kwargs):
            best = {osp.basename(path) for path in [getattr(self, "best_ckpt_path", None),
                                                     *(getattr(self, "best_ckpt_path_dict", None) or {}).values()]
                    if path}
            # Upstream saves the regular checkpoint again after a new best: that one is atomic already.
            if not is_main_process() or filename not in best:
                return save(out_dir, filename, *args, **kwargs)
            path = osp.join(out_dir, filename)
            try:
                publish_atomically(path, lambda temp: save(out_dir, osp.basename(temp), *args, **kwargs))
            except OSError as error:
                raise CheckpointSaveError(save_failure_message(path, error, out_dir)) from error

        runner.save_checkpoint = save_atomically  # an instance attribute: the Runner's method is untouched
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            if own:
                runner.save_checkpoint = save
            else:
                del runner.save_checkpoint
            replaced = []
            if hasattr(self, "best_ckpt_path"):
                if self.best_ckpt_path is None:
                    self.best_ckpt_path = single
                elif single and single != self.best_ckpt_path:
                    replaced.append(single)
            for key, path in previous.items():
                if self.best_ckpt_path_dict.get(key) is None:
                    self.best_ckpt_path_dict[key] = path
                elif path and path != self.best_ckpt_path_dict[key]:
                    replaced.append(path)
        for path in replaced if is_main_process() else ():
            if osp.isfile(path):
                os.unlink(path)
                runner.logger.info(f"The previous best checkpoint {path} is removed")
