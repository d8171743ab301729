"""Writing files so that a reader never sees half of one, and what counts as an image file.

``publish_atomically`` is the one atomic write of the package: checkpoints,
``last_checkpoint``, metrics JSON, download records and verified downloads all
go through it. The content is written to a hidden temporary name in the same
folder (``os.replace`` is atomic only within one filesystem), fsynced, and
renamed over the final name; the folder is fsynced so that the rename itself
survives a power cut. A kill at any moment leaves the old file or the complete
new one, and at worst a hidden ``.NAME.tmp-PID`` that ``remove_stale_temp_files``
clears.

``hold_exclusive_lock`` is the one "one process at a time" primitive: an advisory lock
(``fcntl.flock``) on a file in the folder a process works in, which the kernel releases when
the process ends, however it ends, so a killed process never blocks the next one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import os.path as osp
import re
from collections.abc import Callable, Iterator

from pisa_train.errors import LockHeld

# What pisa-train treats as an image file (pisa-infer's folders, error messages about images).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

TEMP_NAME = re.compile(r"^\..+\.tmp-\d+$")


def temp_path_for(path: str | os.PathLike) -> str:
    """A hidden name in the same folder, which no checkpoint glob (*.pth) matches."""
    folder, name = osp.split(os.fspath(path))
    return osp.join(folder, f".{name}.tmp-{os.getpid()}")


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(temp_path)``, then make it durable and give it its final name in one step:
    readers see the old file or the complete new one, never a part."""
    path = os.fspath(path)
    temp = temp_path_for(path)
    try:
        write(temp)
        fsync_path(temp)  # fsync through any descriptor flushes the file's data
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    fsync_path(osp.dirname(path) or ".", directory=True)  # makes the rename itself durable


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    def write(temp: str) -> None:
        with open(temp, "w") as file:
            file.write(text)

    publish_atomically(path, write)


def write_json_atomically(path: str | os.PathLike, data, **dump_options) -> None:
    """``data`` as JSON (indented, ending in a newline), atomically; creates the folder."""
    os.makedirs(osp.dirname(os.fspath(path)) or ".", exist_ok=True)
    write_text_atomically(path, json.dumps(data, **{"indent": 2, **dump_options}) + "\n")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[str]:
    """Temporary files of writes that a kill interrupted; never finished files."""
    removed = []
    if not osp.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if TEMP_NAME.match(name):
            try:
                os.unlink(osp.join(folder, name))
                removed.append(name)
            except FileNotFoundError:
                pass  # another process of the run removed it first
    return removed


# The lock descriptors this process opened, by number, with the process that opened them. A forked child (a
# dataloader worker) gets copies of them, and with them the lock: were its parent killed, the lock would be
# held until the child noticed and exited, and a restart would be refused meanwhile. The child closes its
# copies as it starts (closing a copy releases nothing while the parent holds its own).
_LOCK_DESCRIPTORS: dict[int, int] = {}


def _close_inherited_lock_descriptors() -> None:
    for fd in list(_LOCK_DESCRIPTORS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_DESCRIPTORS.clear()


os.register_at_fork(after_in_child=_close_inherited_lock_descriptors)


@contextlib.contextmanager
def hold_exclusive_lock(path: str | os.PathLike, what: str, way_forward: str,
                        on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the ``with`` block, or raise
    LockHeld at once, naming the process that holds it: "``what`` is in use by process PID ...; wait for
    it to finish, or ``way_forward``". With ``on_wait``, wait for the lock instead, after calling
    ``on_wait("process PID")``. The file keeps the holder's process id; it is never deleted, because a
    process that deleted it would let a third one lock a new file while the second still holds the old one."""
    path = os.fspath(path)
    os.makedirs(osp.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    _LOCK_DESCRIPTORS[fd] = os.getpid()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            holder = f"process {holder}" if holder.isdigit() else "another process"
            if on_wait is None:
                raise LockHeld(f"{what} is in use by {holder} (it holds the lock {path}); wait for it to finish, "
                               f"or {way_forward}") from None
            on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if _LOCK_DESCRIPTORS.pop(fd, None) == os.getpid():  # not in a forked child, which closed it at the fork
            os.close(fd)  # closing the last descriptor releases the lock
