"""One run per work dir (engine/work_dir_lock.py): a second pisa-train, or a --resume, started in the work dir
of a running one is refused in one line that names the running process, before it reads or deletes anything;
the lock goes with the process that held it, however it ends. Real processes, real training."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_training import tiny_demo

from pisa_train import exit_codes
from pisa_train.cli import train
from pisa_train.engine.patches.checkpoint_loading import load_checkpoint_file
from pisa_train.engine.work_dir_lock import WORK_DIR_LOCK, one_run_in_work_dir
from pisa_train.errors import LockHeld

FAULT_INJECTION = Path(__file__).parent / "fault_injection"


def refusal(work_dir: Path, pid: int) -> str:
    return (f"pisa-train: error: work dir {work_dir} is in use by process {pid} (it holds the lock "
            f"{work_dir / WORK_DIR_LOCK}); wait for it to finish, or give this run another --work-dir\n")


def hold_the_lock(work_dir: Path) -> subprocess.Popen:
    """A real process that holds the work dir's lock until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pisa_train.engine.work_dir_lock import one_run_in_work_dir\n"
         "with one_run_in_work_dir(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n",
         str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_start_in_a_work_dir_in_use_is_refused_in_one_line_and_touches_nothing(tmp_path, capsys):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    stale = work_dir / ".iter_3.pth.tmp-99999"  # the running process's save in progress, for all the second knows
    stale.write_bytes(b"partial")
    holder = hold_the_lock(work_dir)
    try:
        assert train.main(tiny_demo(work_dir, 2, "--resume")) == exit_codes.ENVIRONMENT_ERROR == 6
        assert capsys.readouterr().err == refusal(work_dir, holder.pid)
        assert stale.read_bytes() == b"partial"  # not taken for a save that was interrupted
        assert sorted(path.name for path in work_dir.iterdir()) == sorted([stale.name, WORK_DIR_LOCK])
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the lock with the killed process: the next start is not blocked by it.
    with one_run_in_work_dir(work_dir):
        pass


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with one_run_in_work_dir(tmp_path), one_run_in_work_dir(tmp_path / "."):  # the hook inside run_training
        pass
    holder = hold_the_lock(tmp_path)
    try:
        with pytest.raises(LockHeld), one_run_in_work_dir(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_forked_children_do_not_keep_its_lock(tmp_path):
    """A dataloader worker is a forked child, with a copy of every descriptor: of the lock too. Killed with
    kill -9, a run's workers outlive it a few seconds, and the next start was refused meanwhile, naming a
    process that no longer ran. The child here sleeps on after its parent is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom pisa_train.engine.work_dir_lock import one_run_in_work_dir\n"
         "with one_run_in_work_dir(sys.argv[1]):\n    child = os.fork()\n    if child == 0:\n"
         "        time.sleep(600)\n        os._exit(0)\n    print(child, flush=True)\n    time.sleep(600)\n",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the child still runs
        with one_run_in_work_dir(tmp_path):
            pass
    finally:
        os.kill(child, 9)


@pytest.mark.slow
def test_two_real_runs_in_one_work_dir_the_second_is_refused_and_the_first_finishes_with_every_checkpoint(tmp_path):
    work_dir = tmp_path / "work"
    log = tmp_path / "first.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PISA_TEST_SLOW_ITER_SECONDS="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(FAULT_INJECTION), os.environ.get("PYTHONPATH")])))
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "pisa_train.cli.train", *tiny_demo(work_dir, 6)], cwd=tmp_path,
                                 env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not list(work_dir.glob("iter_*.pth")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(work_dir.glob("iter_*.pth")), log.read_text()[-3000:]
        for second_args in (tiny_demo(work_dir, 6), tiny_demo(work_dir, 6, "--resume")):
            second = subprocess.run([sys.executable, "-m", "pisa_train.cli.train", *second_args], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=300)
            assert second.returncode == exit_codes.ENVIRONMENT_ERROR, second.stderr[-3000:]
            assert second.stderr == refusal(work_dir, first.pid)
        assert first.poll() is None, "the first run should still be training"
        assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    iterations = {path.name: load_checkpoint_file(str(path), map_location="cpu")["meta"]["iter"]
                  for path in sorted(work_dir.glob("*.pth"))}
    assert iterations and max(iterations.values()) == 6, iterations
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / "iter_6.pth")
    assert len([path for path in work_dir.iterdir() if path.is_dir() and (path / "vis_data").is_dir()]) == 1
    assert "left by a save that was interrupted" not in log.read_text()  # nobody took its saves for stale ones
