"""Faults injected into a real pisa-train process, for tests that cannot produce them for real.

Python imports this module at start-up when its folder is on PYTHONPATH; it does nothing unless
one of these environment variables is set. Each fault is faked because producing it for real would
need what a test machine does not have, said per variable:

- PISA_TEST_ENOSPC_AT_SAVE=N: the N-th file that MMEngine's LocalBackend.put writes gets half its
  bytes and then fails with ENOSPC (a disk that fills at that exact write; the real small
  filesystem of tests/test_interrupted_training.py covers what a root mount allows).
- PISA_TEST_ENOSPC_AT=fsync|rename|last-checkpoint with PISA_TEST_ENOSPC_AT_ITER=N: the save of
  ``iter_N.pth`` fails with ENOSPC at that step of files.publish_atomically: the fsync of the
  checkpoint's temporary file, its rename to iter_N.pth, or the write (fsync) of last_checkpoint's
  temporary file once iter_N.pth is in place.
- PISA_TEST_KILL_AT=after-checkpoint-rename|before-last-checkpoint|before-old-checkpoint-deleted with
  PISA_TEST_KILL_AT_ITER=N: the process SIGKILLs itself at that point of the save of iter_N.pth: just
  after iter_N.pth got its name; with last_checkpoint's new text in its temporary file, before the
  rename that publishes it; after last_checkpoint names iter_N.pth, before the checkpoint that
  max_keep_ckpts drops is deleted. (A kill from outside hits such a window only by chance.)
- PISA_TEST_FILL_DISK_AFTER_CHECK_AT_ITER=N: right after the free-space check before the save of
  iter_N.pth, a file ``filler`` in the work dir takes all but PISA_TEST_FILL_LEAVE_BYTES (default
  1 MiB) of the filesystem's free space, as another job writing to the same disk would; the ENOSPC
  that follows is the filesystem's own.
- PISA_TEST_NAN_LOSS_AT_ITER=N: the loss term PISA_TEST_NAN_LOSS_TERM (default loss_cls) of the
  N-th training step becomes PISA_TEST_NAN_LOSS_VALUE (nan, or inf), as after a divergence; with
  PISA_TEST_NAN_LOSS_RANK=R only in the process of that rank (a divergence on one GPU).
- PISA_TEST_SLOW_ITER_SECONDS=S: every training step takes S seconds more (a sleep as its losses are
  summed), as a real model's iteration does: a test that signals the process twice within one iteration
  then wins the race on a loaded machine too, where the tiny test model's iterations of a fraction of a
  second end before the second signal arrives.
- PISA_TEST_SLOW_ERROR_LINE_RANK=R: the process of rank R waits PISA_TEST_SLOW_ERROR_LINE_SECONDS
  (default 3) before it writes its one-line error, as a process on a loaded machine may: the other
  processes of the run have then long written theirs and, without a wait for it, exited (a race
  that real timing loses only now and then).
"""
import os
import re


def _iter_of(path) -> int | None:
    match = re.search(r"iter_(\d+)\.pth", os.path.basename(str(path)))
    return int(match.group(1)) if match else None


def _path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _enospc(path) -> OSError:
    import errno

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


if os.environ.get("PISA_TEST_ENOSPC_AT_SAVE"):
    from mmengine.fileio.backends.local_backend import LocalBackend

    _fail_at = int(os.environ["PISA_TEST_ENOSPC_AT_SAVE"])
    _original_put = LocalBackend.put
    _writes = []

    def _put(self, obj, filepath):
        _writes.append(str(filepath))
        if len(_writes) == _fail_at:
            with open(filepath, "wb") as file:
                file.write(obj[: len(obj) // 2])
            raise _enospc(filepath)
        return _original_put(self, obj, filepath)

    LocalBackend.put = _put

# The saves of files.publish_atomically call os.fsync and os.replace, and the checkpoint hook
# os.unlink, through the os module: wrapping them here reaches every step of a save.
_last_published_iter = []  # the iteration of the checkpoint most recently renamed into place

if os.environ.get("PISA_TEST_ENOSPC_AT") or os.environ.get("PISA_TEST_KILL_AT"):
    import signal

    _enospc_at = os.environ.get("PISA_TEST_ENOSPC_AT")
    _enospc_iter = int(os.environ.get("PISA_TEST_ENOSPC_AT_ITER", "0"))
    _kill_at = os.environ.get("PISA_TEST_KILL_AT")
    _kill_iter = int(os.environ.get("PISA_TEST_KILL_AT_ITER", "0"))
    _original_fsync, _original_replace, _original_unlink = os.fsync, os.replace, os.unlink

    def _kill_self():
        os.kill(os.getpid(), signal.SIGKILL)

    def _saving_iter(n: int) -> bool:
        return bool(_last_published_iter) and _last_published_iter[-1] == n

    def _fsync(fd):
        try:
            path = _path_of(fd)
        except OSError:
            path = ""
        name = os.path.basename(path)
        if _enospc_at == "fsync" and name.startswith(".") and _iter_of(name) == _enospc_iter:
            raise _enospc(path)
        if (_enospc_at == "last-checkpoint" and name.startswith(".last_checkpoint.tmp-")
                and _saving_iter(_enospc_iter)):
            raise _enospc(path)
        return _original_fsync(fd)

    def _replace(source, target, *args, **kwargs):
        target_iter = _iter_of(target)
        if _enospc_at == "rename" and target_iter == _enospc_iter and not os.path.basename(str(target)).startswith("."):
            raise _enospc(target)
        if (_kill_at == "before-last-checkpoint" and os.path.basename(str(target)) == "last_checkpoint"
                and _saving_iter(_kill_iter)):
            _kill_self()
        result = _original_replace(source, target, *args, **kwargs)
        if target_iter is not None and not os.path.basename(str(target)).startswith("."):
            _last_published_iter.append(target_iter)
            if _kill_at == "after-checkpoint-rename" and target_iter == _kill_iter:
                _kill_self()
        return result

    def _unlink(path, *args, **kwargs):
        if (_kill_at == "before-old-checkpoint-deleted" and _iter_of(path) is not None
                and not os.path.basename(str(path)).startswith(".") and _saving_iter(_kill_iter)):
            _kill_self()
        return _original_unlink(path, *args, **kwargs)

    os.fsync, os.replace, os.unlink = _fsync, _replace, _unlink

if os.environ.get("PISA_TEST_FILL_DISK_AFTER_CHECK_AT_ITER"):
    import shutil

    from pisa_train.engine.hooks.atomic_checkpoint import AtomicCheckpointHook

    _fill_iter = int(os.environ["PISA_TEST_FILL_DISK_AFTER_CHECK_AT_ITER"])
    _leave = int(os.environ.get("PISA_TEST_FILL_LEAVE_BYTES", str(1 << 20)))
    _original_check = AtomicCheckpointHook._check_free_space

    def _check_then_fill(self, runner):
        _original_check(self, runner)
        if runner.iter + 1 == _fill_iter:
            filler = os.path.join(runner.work_dir, "filler")
            with open(filler, "wb") as file:
                while shutil.disk_usage(runner.work_dir).free > _leave:
                    file.write(b"\0" * min(1 << 20, shutil.disk_usage(runner.work_dir).free - _leave))
                    file.flush()

    AtomicCheckpointHook._check_free_space = _check_then_fill

if os.environ.get("PISA_TEST_NAN_LOSS_AT_ITER") and os.environ.get(
        "PISA_TEST_NAN_LOSS_RANK", os.environ.get("RANK", "0")) == os.environ.get("RANK", "0"):
    from mmengine.model import BaseModel

    _nan_at = int(os.environ["PISA_TEST_NAN_LOSS_AT_ITER"])
    _term = os.environ.get("PISA_TEST_NAN_LOSS_TERM", "loss_cls")
    _value = float(os.environ.get("PISA_TEST_NAN_LOSS_VALUE", "nan"))
    _original_parse = BaseModel.parse_losses
    _steps = []

    def _parse_losses(self, losses):
        _steps.append(1)
        if len(_steps) == _nan_at:
            losses = dict(losses)
            losses[_term] = losses[_term] * _value
        return _original_parse(self, losses)

    BaseModel.parse_losses = _parse_losses


if os.environ.get("PISA_TEST_SLOW_ITER_SECONDS"):
    import time

    from mmengine.model import BaseModel

    _iteration_seconds = float(os.environ["PISA_TEST_SLOW_ITER_SECONDS"])
    _parse_before_sleep = BaseModel.parse_losses

    def _slow_parse_losses(self, losses):
        if self.training:
            time.sleep(_iteration_seconds)
        return _parse_before_sleep(self, losses)

    BaseModel.parse_losses = _slow_parse_losses


if os.environ.get("PISA_TEST_SLOW_ERROR_LINE_RANK", "-") == os.environ.get("RANK", "0"):
    import time

    import pisa_train.error_reporting

    _original_write_line = pisa_train.error_reporting.write_line
    _delay = float(os.environ.get("PISA_TEST_SLOW_ERROR_LINE_SECONDS", "3"))

    def _slow_write_line(text, stream=None):
        time.sleep(_delay)
        _original_write_line(text, stream)

    pisa_train.error_reporting.write_line = _slow_write_line
