"""The one place where errors become a line on stderr and an exit code.

Every console command runs its work through ``run_reporting_errors``. Known
errors (``pisa_train.errors``) print one line; so do the upstream errors that
``translate_upstream_error`` recognises (a corrupt annotation file, a missing or
undecodable image, CUDA out of memory, a distributed port in use), which torch,
mmengine, mmcv and pycocotools raise deep inside a run with messages that do not
say what to do. Anything else prints its type and message with a hint to rerun
with ``--debug``, which shows the traceback.
"""
from __future__ import annotations

import json
import os.path as osp
import re
import sys
import traceback
from collections.abc import Callable

from pisa_train import exit_codes
from pisa_train.errors import CheckpointError, DataError, EnvironmentProblem, PisaError
from pisa_train.files import IMAGE_EXTENSIONS
from pisa_train.terminal import shown, write_line


def run_reporting_errors(prog: str, work: Callable[[], int | None], debug: bool = False) -> int:
    try:
        return work() or exit_codes.SUCCESS
    except PisaError as error:
        if debug:
            traceback.print_exc()
        write_error_line(f"{prog}: {error.label}: {error}")
        if error.after_report is not None:
            try:
                error.after_report()
            except Exception:  # noqa: BLE001 - the line is out; a peer already gone is no reason for a traceback
                pass
        return error.exit_code
    except KeyboardInterrupt:
        write_error_line(f"{prog}: interrupted by user")
        return exit_codes.INTERRUPTED
    except Exception as error:  # noqa: BLE001 - this is the boundary that reports everything
        known = translate_upstream_error(error)
        if known is not None:
            if debug:
                traceback.print_exc()
            write_error_line(f"{prog}: {known.label}: {known}")
            return known.exit_code
        if debug:
            traceback.print_exc()
            write_error_line(f"{prog}: error: {type(error).__name__}: {error}")
        else:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            write_error_line(f"{prog}: error: {type(error).__name__}: {first_line} (rerun with --debug for the "
                             f"traceback)")
        return exit_codes.UNEXPECTED_ERROR


def write_error_line(line: str) -> None:
    """The error's one line on stderr: its newlines and control characters (from a class name, a file
    name, a config path in the message) escaped, so that it stays one line and cannot rewrite the screen."""
    write_line(shown(line), sys.stderr)


# mmcv 2.1's LoadImageFromFile: `assert img is not None, f'failed to load image: {filename}'`
UNDECODABLE_IMAGE = re.compile(r"failed to load image: (\S+)")
# A FileNotFoundError re-raised from a DataLoader worker keeps only the text of the original.
NO_SUCH_FILE = re.compile(r"No such file or directory: '([^']+)'")
PORT_IN_USE = re.compile(r"EADDRINUSE|address already in use", re.IGNORECASE)
PORT_NUMBER = re.compile(r"port: (\d+)")


def _traceback_local(error: BaseException, names: tuple[str, ...]):
    """The innermost string value of a local variable called one of ``names`` in the
    frames the error passed through (e.g. pycocotools' COCO(annotation_file))."""
    found = None
    tb = error.__traceback__
    while tb is not None:
        for name in names:
            value = tb.tb_frame.f_locals.get(name)
            if isinstance(value, str):
                found = value
        tb = tb.tb_next
    return found


def translate_upstream_error(error: BaseException) -> PisaError | None:
    """A PisaError saying what went wrong and what to do, for the upstream errors whose cause
    we know; None for the rest."""
    message = str(error)
    if isinstance(error, json.JSONDecodeError):
        path = _traceback_local(error, ("annotation_file", "ann_file", "local_path"))
        where = f"annotation file {path}" if path else "an annotation file"
        return DataError(f"{where} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                         f"it is truncated or corrupt: download or export it again")
    undecodable = UNDECODABLE_IMAGE.search(message)
    if undecodable:
        return DataError(f"image {undecodable.group(1)} cannot be decoded: it is corrupt or not an image; replace "
                         f"it, or remove it from the annotation file")
    if isinstance(error, FileNotFoundError):
        path = error.filename or (NO_SUCH_FILE.search(message).group(1) if NO_SUCH_FILE.search(message) else None)
        if path and str(path).lower().endswith(IMAGE_EXTENSIONS):
            return DataError(f"image {path} not found, but the annotation file lists it; copy the image there, or "
                             f"check the config's data_root and data_prefix.img ({osp.dirname(str(path))}/)")
    if type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in message:
        first = message.strip().splitlines()[0] if message.strip() else ""
        return EnvironmentProblem(f"the GPU ran out of memory ({first[:160]}); use a smaller batch "
                                  f"(--cfg-options train_dataloader.batch_size=N, with --auto-scale-lr to keep the "
                                  f"learning rate right) or mixed precision (--amp)")
    if PORT_IN_USE.search(message):
        port = PORT_NUMBER.search(message)
        which = f"port {port.group(1)}" if port else "the port"
        return EnvironmentProblem(f"the distributed {which} is already in use (another training run on this "
                                  f"machine?); choose a free one: torchrun --master-port 29510 ..., or set "
                                  f"MASTER_PORT=29510")
    if isinstance(error, RuntimeError) and "size mismatch for" in message:
        return CheckpointError(f"the checkpoint does not fit this model: "
                               f"{message.strip().splitlines()[-1].strip()[:200]}")
    return None
