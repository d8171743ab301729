"""The progress bar of training, validation and testing (engine/hooks/progress_bar.py, drawn by terminal.py): its text,
the hook on MMEngine's real Runner, and (slow) the real commands in a real pseudo-terminal."""
from __future__ import annotations

import io
import itertools
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid

import pytest
from conftest import DEMO_CONFIG
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from toy_runner import build_toy_runner, toy_cfg

from pisa_train.cli import evaluate, train
from pisa_train.config.build import build_train_config
from pisa_train.engine.hooks.console_streams import ConsoleAboveTheLine
from pisa_train.engine.hooks.progress_bar import ProgressBarHook, _PhaseClock, evaluation_line, training_line
from pisa_train.terminal import TerminalLine, WritesAboveTheLine, fit_to_width, progress_bar


def screen(output: str) -> list[str]:
    """What a terminal shows after ``output``: '\\r\\x1b[K' erases the current line."""
    lines = [""]
    for piece in re.split(r"(\r\x1b\[K|\n)", output):
        if piece == "\n":
            lines.append("")
        elif piece == "\r\x1b[K":
            lines[-1] = ""
        else:
            lines[-1] += piece
    return lines


def test_the_bar_fills_in_proportion():
    assert progress_bar(0, 10, width=10) == "[          ]"
    assert progress_bar(5, 10, width=10) == "[====>     ]"
    assert progress_bar(10, 10, width=10) == "[==========]"
    assert progress_bar(3, 0, width=4) == "[    ]"  # an empty loader does not divide by zero


def test_an_epoch_based_line_shows_the_epoch_the_run_loss_lr_and_both_etas():
    line = training_line(run_done=1032, run_total=3648, seconds_per_iter=2.5, loss=0.81234, lr=0.02,
                         epoch=4, max_epochs=12, epoch_done=120, epoch_length=304)
    assert line.startswith("epoch 4/12 [")
    assert "120/304 ETA 7:40" in line  # (304 - 120) x 2.5 s
    assert "run 1032/3648 28% ETA 1:49:00" in line  # (3648 - 1032) x 2.5 s
    assert "loss 0.8123 lr 0.0200 | 2.50 s/it" in line


def test_an_iteration_based_line_shows_the_run_alone():
    line = training_line(run_done=3, run_total=20, seconds_per_iter=None, loss=float("nan"), lr=1e-5)
    assert line.startswith("train [") and "3/20 15% ETA ?" in line
    assert "loss nan lr 1.00e-05 | ? s/it" in line  # a NaN loss is shown as such, not hidden


def test_evaluation_line():
    assert evaluation_line("val", 20, 60, 0.5) == f"val {progress_bar(20, 60)} 20/60 ETA 0:20 | 0.50 s/it"


def test_a_line_longer_than_the_terminal_is_cut_so_that_it_never_wraps():
    assert fit_to_width("x" * 100, 80) == "x" * 79
    assert fit_to_width("short", 80) == "short"


def test_the_time_per_iteration_leaves_the_first_iteration_out():
    now = iter([0.0, 10.0, 12.0, 14.0])  # start; the first iteration took 10 s, the next ones 2 s
    clock = _PhaseClock(lambda: next(now))
    assert clock.tick() == 10.0
    assert clock.tick() == 2.0
    assert clock.tick() == 2.0


def test_log_records_go_above_the_bar_and_the_bar_comes_back_below():
    stream = io.StringIO()
    line = TerminalLine(stream, columns=lambda: 80)
    console = WritesAboveTheLine(stream, line)
    line.show("train [==>   ] 1/4")
    console.write("an INFO record\n")
    line.show("train [====> ] 2/4")
    line.close("trained 4 iterations")
    assert screen(stream.getvalue()) == ["an INFO record", "trained 4 iterations", ""]


class PrintsEachIteration(Hook):
    """Writes to sys.stdout as pycocotools and other libraries do, mid-run."""

    priority = "LOWEST"  # after the bar is drawn

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        print(f"a plain print at iteration {runner.iter + 1}")


def run_toy_training(tmp_path, interactive: bool, by_epoch: bool, prints=False, terminal=None):
    """MMEngine's real Runner on the toy model, its console log and the hook writing to one stream."""

    cfg = toy_cfg(tmp_path / "work", max_iters=6, by_epoch=by_epoch)
    cfg.log_level = "INFO"
    runner = build_toy_runner(cfg)
    terminal = terminal if terminal is not None else io.StringIO()
    console = [h for h in runner.logger.handlers if type(h) is logging.StreamHandler]
    assert console, "MMEngine's logger no longer logs to a StreamHandler"
    originals = [h.setStream(terminal) for h in console]
    ticks = itertools.count(0.0, 0.5)
    if prints:
        runner.register_hook(PrintsEachIteration())
    try:
        runner.register_hook(ProgressBarHook(stream=terminal, interactive=interactive, clock=lambda: next(ticks),
                                             columns=lambda: 200))
        runner.train()
    finally:
        for handler, original in zip(console, originals):
            handler.setStream(original)
    return terminal.getvalue(), console


def test_on_a_terminal_the_hook_draws_the_bar_under_mmengines_log_lines(tmp_path):
    output, console = run_toy_training(tmp_path, interactive=True, by_epoch=False)
    assert "\r\x1b[K" in output
    drawn = re.findall(r"\r\x1b\[K(train \[[^\r\n]*)", output)
    assert any(line.split("] ", 1)[1].startswith("6/6 100% ETA 0:00") for line in drawn), drawn
    assert all("loss " in line and " lr 0.1000" in line for line in drawn), drawn
    shown = screen(output)
    # Every one of MMEngine's iteration lines is whole on the screen: the bar was erased before each.
    logged = [line for line in shown if "(train) [" in line]
    assert len(logged) == 6, logged
    # No bar text in front of a log line, and none after it.
    assert all(re.fullmatch(r"\d\d/\d\d \d\d:\d\d:\d\d - mmengine - INFO - \w+\(train\) .* loss_zero: 0\.0000", line)
               for line in logged), logged
    assert re.fullmatch(r"trained 6 iterations in 0:\d\d \(\d+\.\d\d s/it, validation included\)", shown[-2])
    assert shown[-1] == ""
    # The logger writes to its own stream again after the run.
    assert all(not isinstance(handler.stream, WritesAboveTheLine) for handler in console)


def test_plain_prints_to_the_same_terminal_go_above_the_bar_too(tmp_path, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)  # the hook's stream and sys.stdout are one terminal
    output, _ = run_toy_training(tmp_path, interactive=True, by_epoch=False, prints=True, terminal=terminal)
    shown = screen(output)
    assert [line for line in shown if "plain print" in line] == [f"a plain print at iteration {i}"
                                                                 for i in range(1, 7)]
    assert sys.stdout is terminal  # given back after the run


def test_an_epoch_based_run_shows_the_epoch(tmp_path):
    output, _ = run_toy_training(tmp_path, interactive=True, by_epoch=True)
    assert "epoch 2/2 [====================] 4/4 ETA 0:00 | run 8/8 100%" in output


def test_off_a_terminal_the_hook_writes_nothing(tmp_path):
    output, _ = run_toy_training(tmp_path, interactive=False, by_epoch=False)
    assert "\r" not in output and "\x1b" not in output
    assert "Epoch(train) [1][6/4]" in output  # MMEngine's plain lines, as before


def test_the_commands_add_the_hook_unless_told_not_to():
    args = train.parse_request([str(DEMO_CONFIG)])
    cfg, _ = build_train_config(args, "cpu")
    assert [hook["type"] for hook in cfg.custom_hooks].count("ProgressBarHook") == 1
    args = train.parse_request([str(DEMO_CONFIG), "--no-progress"])
    cfg, _ = build_train_config(args, "cpu")
    assert "ProgressBarHook" not in [hook["type"] for hook in cfg.custom_hooks]
    assert evaluate.build_parser().parse_args(["c.py", "w.pth", "--no-progress"]).progress is False


def run_in_a_terminal(args: list[str], cwd, timeout: float = 900) -> tuple[int, str]:
    """Run ``python -m pisa_train.cli.<args>`` with its stdout and stderr on a real pseudo-terminal."""
    controller, terminal = pty.openpty()
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="250", TERM="xterm")
    process = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: every process that held it has exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    os.close(controller)
    try:
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    # A terminal turns '\n' into '\r\n'; give the lines back as the program wrote them.
    return code, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.slow
def test_in_a_real_terminal_training_and_evaluation_show_their_bars(tmp_path, shapes_dataset):
    work_dir = tmp_path / "work"
    common = ["--device", "cpu", "--data", shapes_dataset, "--work-dir", work_dir]
    code, output = run_in_a_terminal(["pisa_train.cli.train", DEMO_CONFIG, *common, "--max-iters", "3"],
                                     cwd=tmp_path)
    assert code == 0, output[-3000:]
    assert re.search(r"\r\x1b\[Ktrain \[=+\] 3/3 100% ETA 0:00 \| loss \d", output), output[-3000:]
    assert "trained 3 iterations in " in output

    checkpoint = work_dir / "iter_3.pth"
    one_image_batches = ["--cfg-options", "test_dataloader.batch_size=1"]
    code, output = run_in_a_terminal(["pisa_train.cli.evaluate", DEMO_CONFIG, checkpoint, *common,
                                      *one_image_batches], cwd=tmp_path)
    assert code == 0, output[-3000:]
    assert re.search(r"\r\x1b\[Ktest \[=+\] 4/4 ETA 0:00", output), output[-3000:]  # 4 validation images
    assert "AP50" in output  # the metrics table follows the bar

    code, output = run_in_a_terminal(["pisa_train.cli.evaluate", DEMO_CONFIG, checkpoint, *common,
                                      *one_image_batches, "--no-progress"],
                                     cwd=tmp_path)
    assert code == 0, output[-3000:]
    assert "test [" not in output and "\x1b[K" not in output


def test_upstream_logger_writes_through_a_plain_stream_handler(monkeypatch):
    """Guard of engine/hooks/console_streams.py: mmengine's MMLogger writes its console lines
    through a plain logging.StreamHandler holding the sys.stdout of the moment it was made. If
    that changes, the progress bar's console routing finds no handler and log lines would be
    drawn over the bar."""

    fake_stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdout", fake_stdout)
    logger = MMLogger.get_instance(f"guard_{uuid.uuid4().hex[:8]}", log_level="INFO")
    console = [handler for handler in logger.handlers if type(handler) is logging.StreamHandler]
    assert len(console) == 1 and console[0].stream is fake_stdout


def test_console_routing_writes_above_the_line_and_gives_every_stream_back(monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    logger = logging.getLogger("console-routing-test")
    handler = logging.StreamHandler(terminal)
    logger.addHandler(handler)
    try:
        line = TerminalLine(terminal, columns=lambda: 80)
        console = ConsoleAboveTheLine(line, terminal)
        console.install(logger)
        line.show("bar 1/2")
        logger.warning("a log line")
        print("a print")
        assert screen(terminal.getvalue()) == ["a log line", "a print", "bar 1/2"]
        console.restore()
        assert handler.stream is terminal and sys.stdout is terminal
    finally:
        logger.removeHandler(handler)
