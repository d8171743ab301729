"""pisa-train from Python (a script, a notebook): ``train``, ``evaluate`` and ``infer``.

Each takes the positional arguments of its console command and keyword arguments named as the
command's options, with ``_`` for ``-`` (``--max-iters 4`` is ``max_iters=4``, ``--no-progress`` is
``progress=False``, ``--cfg-options a.b=1`` is ``cfg_options={"a.b": 1}`` or ``["a.b=1"]``). It fills
the request the command fills (config/requests.py) and runs the command's own code (cli/train.py,
cli/evaluate.py, cli/infer.py): there is no second path, and a run started here is the run the
command line starts. What they print is what the commands print; in a Jupyter kernel the training
progress bar is tqdm's (engine/hooks/progress_bar.py).

Errors are pisa-train's own (pisa_train.errors), each with the ``exit_code`` the command would exit
with, and the one-line message it would print; upstream errors that the commands translate
(error_reporting.py) are translated here too. Nothing here calls ``sys.exit``. It is not a
distributed launcher: ``pisa-train --nproc`` starts processes, this runs in the caller's.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pisa_train.cli import evaluate as evaluate_command
from pisa_train.cli import infer as infer_command
from pisa_train.cli import train as train_command
from pisa_train.config.requests import InferRequest, TestRequest, TrainRequest
from pisa_train.error_reporting import translate_upstream_error
from pisa_train.errors import PisaError, UnknownOptionError, UsageError
from pisa_train.results.report import RUN_RECORD
from pisa_train.results.training_curves import read_scalars

__all__ = ["TrainingResult", "evaluate", "infer", "train"]

# Options of the commands that have no meaning for a call that returns its result.
COMMAND_LINE_ONLY = {"print_config": "--print-config prints the config and stops; run the command for it"}

Request = TypeVar("Request", TrainRequest, TestRequest, InferRequest)


@dataclass(frozen=True)
class TrainingResult:
    """What ``train`` leaves: where, the checkpoints to go on from, and how the model scored."""

    work_dir: str
    last_checkpoint: str | None  # the newest checkpoint (what --resume continues from)
    best_checkpoint: str | None  # the best validation bbox mAP's checkpoint, if the run validated
    metrics: dict[str, float]  # the last validation's metrics (coco/bbox_mAP, ...); {} without validation


def _plain(value):
    """Paths as strings, lists of them too: the requests hold what the command line would give."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(item) for item in value)
    return value


def _check_value(action: argparse.Action, name: str, value) -> None:
    """What argparse checks on the command line: the option's choices and its number type."""
    values = value if isinstance(value, (list, tuple)) and action.nargs in ("+", "*") else [value]
    for item in values:
        if item is None:
            continue
        if action.type in (int, float) and (isinstance(item, bool) or not isinstance(item, (int, float))
                                             or (action.type is int and not isinstance(item, int))):
            kind = "an integer" if action.type is int else "a number"
            raise UsageError(f"{name}={item!r}: {action.option_strings[0]} takes {kind}")
        if action.choices is not None and item not in action.choices:
            raise UsageError(f"{name}={item!r} is not one of {', '.join(map(str, action.choices))}")


def _request(request_class: type[Request], function: str, command, options: dict[str, Any],
             **positional) -> Request:
    """The request a call makes; an UnknownOptionError naming the option meant, or a UsageError for a value
    the command line would refuse."""
    prog = command.PROG
    fields = request_class.field_names() - set(positional)
    for name, value in options.items():
        if name in COMMAND_LINE_ONLY:
            raise UnknownOptionError(f"pisa_train.{function}() takes no {name}=: {COMMAND_LINE_ONLY[name]} "
                                     f"({prog} --{name.replace('_', '-')})")
        if name not in fields:
            choices = sorted(fields - set(COMMAND_LINE_ONLY))
            close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}=?" if close else f"its options are {', '.join(choices)}"
            raise UnknownOptionError(f"pisa_train.{function}() got an unknown option {name}={value!r}; {hint} "
                                     f"(the options of {prog}, with _ for -)")
    actions = {action.dest: action for action in command.build_parser()._actions}
    for name, value in options.items():
        _check_value(actions[name], name, value)
    if options.get("resume") is True:  # bare --resume: the newest checkpoint in the work dir
        options = {**options, "resume": "auto"}
    return request_class(**{name: _plain(value) for name, value in {**positional, **options}.items()})


def _as_pisa_errors(work: Callable[[], Any]):
    """``work()``, with the upstream errors the commands report as one line raised as those PisaErrors."""
    try:
        return work()
    except PisaError:
        raise
    except Exception as error:
        known = translate_upstream_error(error)
        if known is None:
            raise
        raise known from error


def train(config: str | os.PathLike, **options) -> TrainingResult:
    """``pisa-train CONFIG [options]``: e.g. ``train("pisa_ssd300_coco", data="data/badminton", max_iters=4)``."""
    request = _request(TrainRequest, "train", train_command, options, config=config)
    work_dir = _as_pisa_errors(lambda: train_command.train(request))
    return training_result(work_dir)


def training_result(work_dir: str | os.PathLike) -> TrainingResult:
    """The checkpoints and last validation metrics of the run in ``work_dir``, as it recorded them
    (``last_checkpoint``, run.json, the scalars.json of MMEngine's log)."""
    work_dir = Path(work_dir)
    last = work_dir / "last_checkpoint"
    best = None
    try:
        runs = json.loads((work_dir / RUN_RECORD).read_text()).get("runs") or []
        best = runs[-1].get("best_checkpoint") if runs else None
    except (OSError, ValueError):
        pass
    if isinstance(best, dict):
        best = best.get("path") or (str(work_dir / best["file"]) if best.get("file") else None)
    _, validation = read_scalars(work_dir)
    metrics = ({key: value for key, value in validation[max(validation)].items() if "/" in key}
               if validation else {})
    return TrainingResult(str(work_dir), last.read_text().strip() if last.is_file() else None, best, metrics)


def evaluate(config: str | os.PathLike, checkpoint: str | os.PathLike, **options) -> dict:
    """``pisa-eval CONFIG CHECKPOINT [options]``: the metrics, as ``--out`` writes them."""
    request = _request(TestRequest, "evaluate", evaluate_command, options, config=config,
                       checkpoint=checkpoint)
    return _as_pisa_errors(lambda: evaluate_command.evaluate(request))


def infer(config: str | os.PathLike, checkpoint: str | os.PathLike,
          images: str | os.PathLike | Iterable[str | os.PathLike], **options) -> list[dict]:
    """``pisa-infer CONFIG CHECKPOINT IMAGE_OR_DIR... [options]``: per image, its entry of detections.json
    (``file_name``, ``width``, ``height``, ``detections`` in COCO's result format). With ``out=DIR`` the
    drawn images and detections.json are written there as well; without it, nothing is written."""
    inputs = (images,) if isinstance(images, (str, os.PathLike)) else tuple(images)
    request = _request(InferRequest, "infer", infer_command, options, config=config, checkpoint=checkpoint,
                       inputs=inputs)
    return _as_pisa_errors(lambda: infer_command.infer(request))


# The keyword arguments each function takes, for help() and for tests.
OPTIONS = {function: sorted(request.field_names() - set(positional) - set(COMMAND_LINE_ONLY))
           for function, request, positional in ((train, TrainRequest, {"config"}),
                                                 (evaluate, TestRequest, {"config", "checkpoint"}),
                                                 (infer, InferRequest, {"config", "checkpoint", "inputs"}))}
