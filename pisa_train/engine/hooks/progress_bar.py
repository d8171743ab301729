"""Progress bars for training, validation and testing, on a terminal only.

MMEngine prints a text line every ``default_hooks.logger.interval`` iterations
(50 by default) and nothing in between. On a terminal, ``ProgressBarHook`` keeps
one line at the bottom of the screen, redrawn in place: the epoch's bar, the
whole run's progress, the loss, the learning rate, the time per iteration and
the ETAs (of the epoch and of the run). MMEngine's own log lines still appear,
above the bar: the hook clears the bar before the logger writes and redraws it
after.

In a Jupyter kernel (pisa_train.train from a notebook) the line is a tqdm.auto
bar instead (``NotebookLine``): a widget where ipywidgets is installed, else
tqdm's text line, which a notebook redraws in place.

When stdout is not a terminal (CI, ``| tee``, Slurm's log files) and not a
notebook's, the hook does nothing at all, so logs hold MMEngine's plain lines and no carriage returns or
escape codes; nor does it on any rank but 0 of a distributed run. It changes
nothing that is trained or saved. config/rewrites.py's ``show_progress_bars`` adds
it (``--no-progress`` leaves it out). The line is drawn by terminal.py's
``TerminalLine``, the renderer every pisa-* command uses; the run's other console
output is routed above it by engine/hooks/console_streams.py.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop
from tqdm.auto import tqdm

from pisa_train.engine.hooks.console_streams import ConsoleAboveTheLine
from pisa_train.terminal import REDRAW_SECONDS, TerminalLine, format_duration, is_terminal, progress_bar, write_line


def _eta(remaining: int, seconds_per_iter: float | None) -> str:
    return format_duration(remaining * seconds_per_iter) if seconds_per_iter is not None else "?"


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    if not math.isfinite(value):
        return str(value)  # nan, inf: the NaN guard will say more; the bar should not hide it
    return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.2e}"


def training_line(*, run_done: int, run_total: int, seconds_per_iter: float | None, loss: float | None,
                  lr: float | None, epoch: int | None = None, max_epochs: int | None = None,
                  epoch_done: int | None = None, epoch_length: int | None = None) -> str:
    """The bar's text during training. ``epoch`` (1-based) and the epoch figures are given for
    epoch-based schedules; iteration-based ones show the run alone."""
    speed = f"{seconds_per_iter:.2f} s/it" if seconds_per_iter is not None else "? s/it"
    run_eta = _eta(run_total - run_done, seconds_per_iter)
    scalars = f"loss {_number(loss)} lr {_number(lr)} | {speed}"
    percent = 100.0 * run_done / run_total if run_total else 0.0
    if epoch is None or epoch_length is None or epoch_done is None:
        return (f"train {progress_bar(run_done, run_total)} {run_done}/{run_total} {percent:.0f}% "
                f"ETA {run_eta} | {scalars}")
    epoch_eta = _eta(epoch_length - epoch_done, seconds_per_iter)
    return (f"epoch {epoch}/{max_epochs} {progress_bar(epoch_done, epoch_length)} {epoch_done}/{epoch_length} "
            f"ETA {epoch_eta} | run {run_done}/{run_total} {percent:.0f}% ETA {run_eta} | {scalars}")


def evaluation_line(phase: str, done: int, total: int, seconds_per_iter: float | None) -> str:
    """The bar's text during validation (``phase`` 'val') or testing ('test')."""
    speed = f"{seconds_per_iter:.2f} s/it" if seconds_per_iter is not None else "? s/it"
    return f"{phase} {progress_bar(done, total)} {done}/{total} ETA {_eta(total - done, seconds_per_iter)} | {speed}"


class _PhaseClock:
    """Seconds per iteration of the current phase, from the iterations this process ran
    (a resumed run does not count the iterations it skipped as instant)."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.start()

    def start(self) -> None:
        self._started = self._clock()
        self._first_done_at = None
        self._count = 0

    def tick(self) -> float | None:
        now = self._clock()
        self._count += 1
        if self._first_done_at is None:  # the first iteration (warm-up, dataloader start) is timed on its own
            self._first_done_at = now
            return now - self._started
        return (now - self._first_done_at) / (self._count - 1)


def in_jupyter_kernel() -> bool:
    """Whether this process is a Jupyter kernel (a notebook, or nbclient running one)."""
    return "ipykernel" in sys.modules and not is_terminal(sys.stdout)


class NotebookLine:
    """The progress line in a notebook: tqdm.auto's bar with the hook's text beside it. It has
    TerminalLine's methods, so the hook draws it as it draws a terminal's line."""

    def __init__(self):
        self.text = ""
        self._bar = tqdm(total=1, bar_format="{bar}| {desc}", dynamic_ncols=True, leave=False)

    def show(self, text: str, done: int | None = None, total: int | None = None) -> None:
        self.text = text
        if total is not None and total != self._bar.total:
            self._bar.reset(total=total)
        if done is not None:
            self._bar.n = done
        self._bar.set_description_str(text, refresh=True)

    def clear(self) -> None:
        pass  # the notebook keeps the bar and the printed lines apart

    def redraw(self) -> None:
        self._bar.refresh()

    def close(self, last_line: str | None = None) -> None:
        self._bar.close()
        if last_line:
            write_line(last_line, sys.stdout)
        self.text = ""


class ProgressBarHook(Hook):
    """Draws the progress bar of training, validation and testing on rank 0's terminal."""

    priority = "VERY_LOW"  # after the logger hook has logged this iteration

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, columns: Callable[[], int] | None = None):
        self._stream = stream
        self._interactive = interactive
        self._clock = clock
        self._columns = columns
        self.line: TerminalLine | None = None
        self._console: ConsoleAboveTheLine | None = None
        self._last_drawn = float("-inf")
        self._train_clock = _PhaseClock(clock)
        self._eval_clock = _PhaseClock(clock)

    # --- set-up and tear-down -------------------------------------------------------------------
    def before_run(self, runner) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        interactive = is_terminal(stream) if self._interactive is None else self._interactive
        if not is_main_process():
            return
        if not interactive and self._interactive is None and in_jupyter_kernel():
            self.line = NotebookLine()  # a notebook shows MMEngine's lines and the widget apart: no rerouting
            return
        if not interactive:
            return
        self.line = TerminalLine(stream, *(() if self._columns is None else (self._columns,)))
        # Everything else that writes to this terminal during the run goes above the bar too:
        # MMEngine's console log, and plain prints (pycocotools prints its summary).
        self._console = ConsoleAboveTheLine(self.line, stream)
        self._console.install(runner.logger)

    def after_run(self, runner) -> None:
        self.restore()

    def restore(self) -> None:
        """Erase the bar and give the streams back; also called when a run fails (engine)."""
        if self.line is None:
            return
        self.line.close()
        if self._console is not None:
            self._console.restore()
            self._console = None
        self.line = None

    def _draw(self, text: str, last: bool, done: int | None = None, total: int | None = None) -> None:
        now = self._clock()
        if last or now - self._last_drawn >= REDRAW_SECONDS:
            self._last_drawn = now
            if isinstance(self.line, NotebookLine):
                self.line.show(text, done, total)
            else:
                self.line.show(text)

    # --- training -------------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        if self.line is not None:
            self._train_clock.start()
            self._train_started = self._clock()
            self._first_iter = runner.iter

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.line is None:
            return

        seconds_per_iter = self._train_clock.tick()
        run_done, run_total = runner.iter + 1, runner.max_iters
        figures = dict(run_done=run_done, run_total=run_total, seconds_per_iter=seconds_per_iter,
                       loss=_smoothed_loss(runner, outputs), lr=_learning_rate(runner))
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            figures.update(epoch=runner.epoch + 1, max_epochs=runner.max_epochs, epoch_done=batch_idx + 1,
                           epoch_length=len(runner.train_dataloader))
        last = run_done == run_total or batch_idx + 1 == figures.get("epoch_length")
        self._draw(training_line(**figures), last, run_done, run_total)

    def after_train(self, runner) -> None:
        if self.line is None:
            return
        done = runner.iter - self._first_iter
        elapsed = self._clock() - self._train_started
        self.line.close(f"trained {done} iterations in {format_duration(elapsed)}"
                        + (f" ({elapsed / done:.2f} s/it, validation included)" if done else ""))

    # --- validation and testing -----------------------------------------------------------------
    def _before_evaluation(self) -> None:
        if self.line is not None:
            self._saved_text = self.line.text
            self._eval_clock.start()

    def _after_evaluation_iter(self, phase: str, batch_idx: int, total: int) -> None:
        if self.line is not None:
            self._draw(evaluation_line(phase, batch_idx + 1, total, self._eval_clock.tick()), batch_idx + 1 == total,
                       batch_idx + 1, total)

    def _after_evaluation(self) -> None:
        if self.line is not None:
            self.line.clear()
            self.line.text = self._saved_text  # training's bar comes back with the next log line or iteration

    def before_val_epoch(self, runner) -> None:
        self._before_evaluation()

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._after_evaluation_iter("val", batch_idx, len(runner.val_dataloader))

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._after_evaluation()

    def before_test_epoch(self, runner) -> None:
        self._before_evaluation()

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._after_evaluation_iter("test", batch_idx, len(runner.test_dataloader))

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._after_evaluation()


def _scalar(value) -> float | None:
    try:
        return float(value.detach() if hasattr(value, "detach") else value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _smoothed_loss(runner, outputs) -> float | None:
    """The loss averaged as MMEngine's log lines average it (over log_processor.window_size
    iterations): a single iteration's loss jumps too much to read."""
    window = getattr(getattr(runner, "log_processor", None), "window_size", 10)
    try:
        return float(runner.message_hub.get_scalar("train/loss").mean(window if isinstance(window, int) else 10))
    except (KeyError, AttributeError, TypeError, ValueError):
        return _scalar((outputs or {}).get("loss"))


def _learning_rate(runner) -> float | None:
    try:
        rates = runner.optim_wrapper.get_lr()
    except (AttributeError, NotImplementedError):
        return None
    first = next(iter(rates.values()), None) if isinstance(rates, dict) else None
    return _scalar(first[0]) if first else None
