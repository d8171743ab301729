"""The console output of a run written above the progress bar, not over it.

Not a patch of upstream code (nothing of mmengine's is replaced): for the length of a run, the progress
bar's hook hands the streams of mmengine's console handlers a wrapper, and gives them back after.

Upstream: mmengine 0.10.7's ``MMLogger`` writes its console lines through a
``logging.StreamHandler`` made with the ``sys.stdout`` of the moment the logger
was created (``mmengine/logging/logger.py``), and pycocotools and others
``print`` to ``sys.stdout``. None of them knows about a line being redrawn at
the bottom of the terminal, so their text would land in the middle of it.

For the length of a run, ``ConsoleAboveTheLine`` replaces the stream of each of
the logger's console handlers that writes to the bar's terminal (with
``logging.StreamHandler.setStream``, public since Python 3.7) and
``sys.stdout``/``sys.stderr`` when they are that terminal, by
``terminal.WritesAboveTheLine`` wrappers; ``restore`` gives every one back.
engine/hooks/progress_bar.py installs it; engine/runner.py restores it when a
run fails, since MMEngine calls ``after_run`` only after a run that succeeded.

Guard test: tests/test_training_progress.py::test_upstream_logger_writes_through_a_plain_stream_handler
fails if mmengine's logger stops writing through a plain StreamHandler on stdout.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from pisa_train.terminal import TerminalLine, WritesAboveTheLine


def same_terminal(one: TextIO, other: TextIO) -> bool:
    """Whether two streams write to the same place (one object, or one terminal device)."""
    if one is other:
        return True
    try:
        return os.path.samestat(os.fstat(one.fileno()), os.fstat(other.fileno())) and one.isatty()
    except (AttributeError, OSError, ValueError):
        return False


class ConsoleAboveTheLine:
    """Routes a logger's console handlers and sys.stdout/stderr above ``line`` while installed."""

    def __init__(self, line: TerminalLine, terminal: TextIO):
        self.line = line
        self.terminal = terminal
        self._handlers: list[tuple[logging.StreamHandler, TextIO]] = []
        self._streams: list[tuple[str, TextIO]] = []

    def install(self, logger: logging.Logger) -> None:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and same_terminal(handler.stream, self.terminal):
                self._handlers.append((handler, handler.setStream(WritesAboveTheLine(handler.stream, self.line))))
        for name in ("stdout", "stderr"):
            if same_terminal(getattr(sys, name), self.terminal):
                self._streams.append((name, getattr(sys, name)))
                setattr(sys, name, WritesAboveTheLine(getattr(sys, name), self.line))

    def restore(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        for name, stream in self._streams:
            setattr(sys, name, stream)
        self._handlers, self._streams = [], []
