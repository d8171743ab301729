"""Level (c) for issue 4: real pisa-train processes on a tiny dataset, killed, stopped, starved of
disk and fed a NaN loss, then resumed. Slow (minutes on 2 CPU cores); CI runs them.

The runs use tiny_training's shrunk demo config, with a checkpoint every iteration, so that a
process reaches its first save within seconds of starting."""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pisa_train import exit_codes
from tiny_training import tiny_demo

pytestmark = pytest.mark.slow

FAULT_INJECTION = Path(__file__).parent / "fault_injection"


def logged_iteration(log: str, iteration: int, max_iters: int) -> bool:
    return re.search(rf"Iter\(train\) \[\s*{iteration}/{max_iters}\]", log) is not None


def start(args: list[str], cwd: Path, log: Path, faults: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if faults:
        env.update(faults, PYTHONPATH=os.pathsep.join(filter(None, [str(FAULT_INJECTION), env.get("PYTHONPATH")])))
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "pisa_train.cli.train", *args], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def run(args: list[str], cwd: Path, faults: dict | None = None, timeout: float = 300) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if faults:
        env.update(faults, PYTHONPATH=os.pathsep.join(filter(None, [str(FAULT_INJECTION), env.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "pisa_train.cli.train", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def load(path: Path) -> dict:
    from pisa_train.engine.patches.checkpoint_loading import load_checkpoint_file

    return load_checkpoint_file(str(path), map_location="cpu")


def saved_iterations(work_dir: Path) -> dict[str, int]:
    """Every checkpoint in the work dir, loaded (a failure to load fails the test)."""
    return {path.name: load(path)["meta"]["iter"] for path in sorted(work_dir.glob("*.pth"))}


def saving_now(work_dir: Path) -> bool:
    return work_dir.is_dir() and any(name.startswith(".iter_") and ".tmp-" in name for name in os.listdir(work_dir))


def wait_for(condition, proc: subprocess.Popen, timeout: float, poll: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(poll)
    return False


def test_sigkill_at_20_random_moments_loses_at_most_the_work_since_the_last_checkpoint(tmp_path):
    rng = random.Random(4)  # the moments are random, and the same on every run of the test
    work_dir, max_iters = tmp_path / "work", 30
    args = tiny_demo(work_dir, max_iters, "--resume")
    newest = 0  # the newest iteration saved so far, by a process that has since been killed
    kills_during_saves = 0
    for attempt in range(20):
        log = tmp_path / f"run{attempt}.log"
        proc = start(args, tmp_path, log)
        if attempt % 2 == 0:
            # Aim at a save: kill while a temporary checkpoint is being written (a 7 MB write
            # takes some tens of milliseconds).
            wait_for(lambda: saving_now(work_dir), proc, timeout=60, poll=0.002)
            time.sleep(rng.uniform(0, 0.02))
        else:
            # Anywhere: during start-up (resuming), an iteration or a save.
            time.sleep(rng.uniform(2, 16))
        was_saving = saving_now(work_dir)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills_during_saves += was_saving
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        if newest and "resuming from" in text:  # resumed from the newest checkpoint a killed process left
            assert f"resuming from {work_dir / f'iter_{newest}.pth'}" in text, text[-3000:]
        saved = saved_iterations(work_dir)  # every checkpoint left loads
        # Two kept (max_keep_ckpts=2), and a third when the kill came between a save and the deletion.
        assert len(saved) <= 3, saved
        newest = max([newest, *saved.values()])
        pointer = work_dir / "last_checkpoint"
        if pointer.exists():
            assert load(Path(pointer.read_text().strip()))["meta"]["iter"] >= newest - 1
    print(f"{kills_during_saves} of 20 kills came during a save; iteration {newest} reached by killed processes")
    assert kills_during_saves >= 4, kills_during_saves
    assert newest < max_iters

    code, out, err = run(args, tmp_path)
    assert code == 0, (out + err)[-3000:]
    assert f"resuming from {work_dir / f'iter_{newest}.pth'}" in out
    assert logged_iteration(out, newest + 1, max_iters) and not logged_iteration(out, newest, max_iters)
    assert saved_iterations(work_dir) == {f"iter_{max_iters - 1}.pth": max_iters - 1,
                                          f"iter_{max_iters}.pth": max_iters}
    assert not [name for name in os.listdir(work_dir) if ".tmp-" in name]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_exits_75_and_the_run_resumes_from_it(tmp_path, signal_name):
    work_dir = tmp_path / "work"
    log = tmp_path / "run.log"
    # Checkpoints every 100 iterations: the one after the signal is the stop's own.
    args = tiny_demo(work_dir, 100, options=["default_hooks.checkpoint.interval=100"])
    proc = start(args, tmp_path, log)
    assert wait_for(lambda: logged_iteration(log.read_text(), 3, 100), proc, timeout=120), log.read_text()[-3000:]
    proc.send_signal(getattr(signal, signal_name))
    assert proc.wait(timeout=120) == exit_codes.STOPPED_AND_SAVED == 75, log.read_text()[-3000:]
    last_line = log.read_text().strip().splitlines()[-1]
    stopped_at = int(re.search(rf"pisa-train: stopped: stopped by {signal_name} after iteration (\d+); "
                               rf"checkpoint saved to \S+iter_\1\.pth; continue with --resume$", last_line).group(1))
    assert saved_iterations(work_dir) == {f"iter_{stopped_at}.pth": stopped_at}

    code, out, err = run(tiny_demo(work_dir, stopped_at + 2, "--resume"), tmp_path)
    assert code == 0, (out + err)[-3000:]
    assert f"resuming from {work_dir / f'iter_{stopped_at}.pth'}" in out
    assert logged_iteration(out, stopped_at + 1, stopped_at + 2)


def test_a_full_disk_keeps_the_earlier_checkpoints_and_stops_with_a_clear_error(tmp_path):
    work_dir = tmp_path / "work"
    # ENOSPC is injected at the 3rd checkpoint write (faked: a full filesystem needs a root mount).
    code, out, err = run(tiny_demo(work_dir, 5), tmp_path, faults={"PISA_TEST_ENOSPC_AT_SAVE": "3"})
    assert code == exit_codes.SAVE_ERROR == 7, (out + err)[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"pisa-train: error: could not save checkpoint {work_dir / 'iter_3.pth'}: the disk is full (No space left "
        f"on device); the earlier checkpoints in {work_dir} are intact; free some space (or fix the folder), then "
        f"continue with --resume")
    assert len(err.strip().splitlines()) == 1
    assert saved_iterations(work_dir) == {"iter_1.pth": 1, "iter_2.pth": 2}
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / "iter_2.pth")
    assert not [name for name in os.listdir(work_dir) if ".tmp-" in name]


def test_a_nan_loss_stops_with_the_iteration_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    work_dir = tmp_path / "work"
    code, out, err = run(tiny_demo(work_dir, 6), tmp_path, faults={"PISA_TEST_NAN_LOSS_AT_ITER": "3"})
    assert code == exit_codes.NONFINITE_LOSS == 8, (out + err)[-3000:]
    assert err.strip().startswith(f"pisa-train: error: iteration 3: loss term 'loss_cls' is nan, 'loss' is nan; "
                                  f"training stopped, and this step was not saved: the last good checkpoint is "
                                  f"{work_dir / 'iter_2.pth'}")
    assert saved_iterations(work_dir) == {"iter_1.pth": 1, "iter_2.pth": 2}

    skipped = tmp_path / "skip"
    code, out, err = run(tiny_demo(skipped, 4, options=["nonfinite_loss=skip"]), tmp_path,
                         faults={"PISA_TEST_NAN_LOSS_AT_ITER": "3"})
    assert code == 0, (out + err)[-3000:]
    assert "iteration 3: loss term 'loss_cls' is nan, 'loss' is nan; step skipped (nonfinite_loss='skip')" in out
    assert saved_iterations(skipped) == {"iter_3.pth": 3, "iter_4.pth": 4}
