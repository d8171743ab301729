"""The one renderer of progress lines, for every pisa-* command.

On a terminal a progress line sits on the bottom line and is redrawn in place
(``TerminalLine``); whatever else is written to that terminal goes above it
(``WritesAboveTheLine``). When the stream is not a terminal (CI logs, ``| tee``,
Slurm's log files, ``TERM=dumb``) nothing is redrawn: ``ProgressReporter``
writes a plain line every tenth of the way instead, and the training progress
bar (engine/hooks/progress_bar.py) draws nothing at all, so logs hold no
carriage returns or escape codes.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

CLEAR_LINE = "\r\x1b[K"
# Redrawing faster than this only burns CPU and flickers.
REDRAW_SECONDS = 0.2
BAR_WIDTH = 20
# Log lines come every tenth of the way, but not more often than this (a
# small task only prints its final line); without a known total, at this pace.
_LOG_MIN_SECONDS = 5.0
_LOG_EVERY_SECONDS_WITHOUT_TOTAL = 30.0


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal that can redraw a line in place."""
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def shown(text: str, keep_newlines: bool = False) -> str:
    """``text`` with its control characters (and every other character ``str.isprintable`` rejects:
    C1 controls, bidi overrides) escaped the way ``repr`` shows them: ``\\x1b]52;...`` instead of an
    escape sequence that sets the window title, writes the clipboard, moves the cursor or erases a line.
    Text from data (class names, file names, archive entries, checkpoint meta) reaches a terminal only
    through here; our own control codes (the progress line's) are added after it."""
    if text.isprintable():
        return text
    if keep_newlines:
        return "\n".join(shown(line) for line in text.split("\n"))
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def write_line(text: str, stream: TextIO | None = None) -> None:
    """Write ``text`` (control characters escaped by ``shown``; a multi-line table keeps its
    newlines) and its newline in one write, then flush. ``print`` writes the newline
    separately, and unbuffered (PYTHONUNBUFFERED=1, ``python -u``) that is a second write(2): the
    processes of a distributed run, which share one stderr, then put two messages on one line."""
    stream = stream if stream is not None else sys.stdout
    stream.write(shown(text, keep_newlines=True) + "\n")
    stream.flush()


def announcer(prog: str, stream: TextIO | None = None) -> Callable[[str], None]:
    """A function that prints ``[prog] line``: how the commands say what they do. Each is one line: a newline
    from data is escaped too, so no text can print a line that looks like one of ours."""
    def say(line: str) -> None:
        write_line(shown(f"[{prog}] {line}"), stream)

    return say


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def byte_size(text: str) -> int:
    """A size as people write it, read back: ``500M``, ``2G``, ``1.5GiB`` or a number of bytes (K, M, G, T are
    powers of 1024, as format_bytes writes them); ValueError otherwise (argparse names the flag)."""
    match = re.match(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", text.strip(), re.IGNORECASE)
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[=======>        ]``: ``done`` of ``total`` as a bar of ``width`` cells."""
    filled = min(width, int(width * done / total)) if total > 0 else 0
    head = ">" if 0 < filled < width else ""
    return "[" + "=" * (filled - len(head)) + head + " " * (width - filled) + "]"


def fit_to_width(text: str, columns: int) -> str:
    """Cut the line to the terminal's width: a line that wraps cannot be redrawn in place."""
    return text if len(text) < columns else text[:max(columns - 1, 0)]


class TerminalLine:
    """One line at the bottom of a terminal, redrawn in place."""

    def __init__(self, stream: TextIO, columns: Callable[[], int] = lambda: shutil.get_terminal_size().columns):
        self.stream = stream
        self._columns = columns
        self.text = ""
        self._shown = False

    def show(self, text: str) -> None:
        self.text = text
        self.redraw()

    def redraw(self) -> None:
        if self.text:
            self.stream.write(CLEAR_LINE + fit_to_width(shown(self.text), self._columns()))
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Erase the line from the screen (it is drawn again by the next redraw)."""
        if self._shown:
            self.stream.write(CLEAR_LINE)
            self._shown = False

    def close(self, last_line: str | None = None) -> None:
        """Erase the line for good, leaving ``last_line`` in its place if given."""
        self.clear()
        if last_line:
            self.stream.write(shown(last_line) + "\n")
        self.stream.flush()
        self.text = ""


class WritesAboveTheLine:
    """A stream that writes above a ``TerminalLine``: the line is erased before each write
    and drawn again after each completed line, so the two do not overwrite each other."""

    def __init__(self, stream: TextIO, line: TerminalLine):
        self.wrapped = stream
        self._line = line

    def write(self, text: str) -> int:
        self._line.clear()
        written = self.wrapped.write(text)
        if text.endswith("\n"):
            self._line.redraw()
        return written

    def flush(self) -> None:
        self.wrapped.flush()

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


def format_progress(label: str, done: int, total: int | None, rate: float, unit: str = "bytes") -> str:
    """One progress line: what, how much of how much, the rate and the ETA."""
    if unit == "bytes":
        amount = f"{format_bytes(done)} of {format_bytes(total)}" if total else format_bytes(done)
        rate_text = f"{format_bytes(rate)}/s"
    else:
        amount = f"{done} of {total} {unit}" if total else f"{done} {unit}"
        rate_text = f"{rate:.0f} {unit}/s"
    if total:
        percent = 100.0 * done / total
        eta = format_duration((total - done) / rate) if rate > 0 else "?"
        return f"{label}: {percent:5.1f}% {amount}, {rate_text}, ETA {eta}"
    return f"{label}: {amount}, {rate_text}"


class ProgressReporter:
    """The progress of one task (a download, an extraction, images checked) on ``stream``
    (stdout by default): a ``TerminalLine`` on a terminal, plain lines every tenth elsewhere."""

    def __init__(self, label: str, total: int | None, *, done: int = 0, unit: str = "bytes",
                 stream: TextIO | None = None, interactive: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stdout
        self.interactive = is_terminal(self.stream) if interactive is None else interactive
        self._line = TerminalLine(self.stream) if self.interactive else None
        self._clock = clock
        self._started = clock()
        # The rate counts only what this run moved: a resumed download should
        # not report the bytes it already had as instantly transferred.
        self._first_done = done
        self._done = done
        self._last_shown = float("-inf") if self.interactive else self._started
        self._last_tenth = self._tenth(done)

    def _tenth(self, done: int) -> int:
        return int(10 * done / self.total) if self.total else 0

    def rate(self, now: float | None = None) -> float:
        elapsed = (self._clock() if now is None else now) - self._started
        return (self._done - self._first_done) / elapsed if elapsed > 0 else 0.0

    def _text(self, now: float | None = None) -> str:
        return format_progress(self.label, self._done, self.total, self.rate(now), self.unit)

    def update(self, done: int) -> None:
        self._done = done
        now = self._clock()
        if self._line is not None:
            if now - self._last_shown >= REDRAW_SECONDS:
                self._last_shown = now
                self._line.show(self._text(now))
            return
        tenth = self._tenth(done)
        due_by_time = not self.total and now - self._last_shown >= _LOG_EVERY_SECONDS_WITHOUT_TOTAL
        due_by_tenth = tenth > self._last_tenth and now - self._last_shown >= _LOG_MIN_SECONDS
        if due_by_tenth or due_by_time:
            self._last_tenth = tenth
            self._last_shown = now
            self.stream.write(shown(self._text(now)) + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self._line is not None:
            self._line.clear()
            self._line.close(self._text())
            return
        if self._last_tenth < 10 or not self.total:  # the 100% line was not written yet
            self.stream.write(shown(self._text()) + "\n")
        self.stream.flush()
