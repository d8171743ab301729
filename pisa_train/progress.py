"""Progress display for long transfers and extractions.

On a terminal the line is redrawn in place (bytes, rate, ETA). When the stream
is not a terminal (CI logs, ``| tee``), a plain line is written every tenth of
the way instead, with no carriage returns or escape codes, so logs stay
readable.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

# Redrawing faster than this only burns CPU and flickers.
_TERMINAL_REDRAW_SECONDS = 0.2
# Log lines come every tenth of the way, but not more often than this (a
# small task only prints its final line); without a known total, at this pace.
_LOG_MIN_SECONDS = 5.0
_LOG_EVERY_SECONDS_WITHOUT_TOTAL = 30.0


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


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
    """Shows the progress of one task on ``stream`` (stdout by default)."""

    def __init__(self, label: str, total: int | None, *, done: int = 0, unit: str = "bytes",
                 stream: TextIO | None = None, interactive: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stdout
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive
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

    def update(self, done: int) -> None:
        self._done = done
        now = self._clock()
        if self.interactive:
            if now - self._last_shown >= _TERMINAL_REDRAW_SECONDS:
                self._last_shown = now
                self.stream.write("\r\x1b[K" + format_progress(self.label, done, self.total, self.rate(now), self.unit))
                self.stream.flush()
            return
        tenth = self._tenth(done)
        due_by_time = not self.total and now - self._last_shown >= _LOG_EVERY_SECONDS_WITHOUT_TOTAL
        due_by_tenth = tenth > self._last_tenth and now - self._last_shown >= _LOG_MIN_SECONDS
        if due_by_tenth or due_by_time:
            self._last_tenth = tenth
            self._last_shown = now
            self.stream.write(format_progress(self.label, done, self.total, self.rate(now), self.unit) + "\n")
            self.stream.flush()

    def finish(self) -> None:
        line = format_progress(self.label, self._done, self.total, self.rate(), self.unit)
        if self.interactive:
            self.stream.write("\r\x1b[K" + line + "\n")
        elif self._last_tenth < 10 or not self.total:  # the 100% line was not written yet
            self.stream.write(line + "\n")
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
