"""Atomic checkpoints (engine/hooks/atomic_checkpoint.py) on a real MMEngine Runner with a toy model:
what upstream does, what the wrapper does instead, and failing saves."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from mmengine.fileio import LocalBackend
from tiny_training import tiny_demo
from toy_runner import build_toy_runner, toy_cfg

from pisa_train.engine.checkpoint_files import load_checkpoint_file
from pisa_train.engine.hooks import atomic_checkpoint as checkpoint_saving
from pisa_train.engine.hooks.atomic_checkpoint import keep_plan, outdated_checkpoints
from pisa_train.engine.resume import resolve_auto_resume
from pisa_train.errors import CheckpointSaveError
from pisa_train.files import publish_atomically, remove_stale_temp_files, temp_path_for, write_text_atomically


def load(path):
    return load_checkpoint_file(str(path), map_location="cpu")


def checkpoints(work_dir):
    return sorted(p.name for p in work_dir.glob("*.pth"))


def record_writes(monkeypatch, fail_at=None):
    """Record, for each file LocalBackend.put writes, its name and the checkpoints present then;
    the ``fail_at``-th write writes half its bytes and fails as a full disk does."""
    writes = []
    original_put = LocalBackend.put

    def put(self, obj, filepath):
        folder = os.path.dirname(str(filepath))
        writes.append((os.path.basename(str(filepath)), sorted(n for n in os.listdir(folder) if n.endswith(".pth"))))
        if fail_at is not None and len(writes) == fail_at:
            with open(filepath, "wb") as file:
                file.write(obj[: len(obj) // 2])
            # Faked: a really full filesystem needs a small mount, which needs root.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))
        return original_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", put)
    return writes


def test_upstream_deletes_the_oldest_checkpoint_first_and_writes_in_place(tmp_path, monkeypatch):
    """Fails when mmengine's CheckpointHook stops doing what checkpoint_saving works around:
    then AtomicCheckpointHook may be unnecessary."""
    cfg = toy_cfg(tmp_path, max_iters=3, max_keep_ckpts=1)
    cfg.default_hooks.checkpoint.type = "CheckpointHook"  # upstream's own
    writes = record_writes(monkeypatch)
    build_toy_runner(cfg).train()
    # iter_3.pth is written under its final name, after iter_2.pth (the only good one) was deleted.
    assert ("iter_3.pth", []) in writes
    assert checkpoints(tmp_path) == ["iter_3.pth"]


def test_atomic_hook_writes_a_temp_file_and_deletes_old_checkpoints_last(tmp_path, monkeypatch):
    writes = record_writes(monkeypatch)
    runner = build_toy_runner(toy_cfg(tmp_path, max_iters=4, max_keep_ckpts=1))  # 1 is raised to 2
    assert type(runner.hooks[[type(h).__name__ for h in runner.hooks].index("AtomicCheckpointHook")]) \
        is checkpoint_saving.AtomicCheckpointHook
    runner.train()
    assert [name for name, _ in writes] == [f".iter_{i}.pth.tmp-{os.getpid()}" for i in range(1, 5)]
    assert writes[3][1] == ["iter_2.pth", "iter_3.pth"]  # both still there while iter_4 is written
    assert checkpoints(tmp_path) == ["iter_3.pth", "iter_4.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_4.pth")
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    assert load(tmp_path / "iter_4.pth")["message_hub"]["runtime_info"]["keep_ckpt_ids"] == [3, 4]


def test_a_failing_save_keeps_earlier_checkpoints_and_says_so(tmp_path, monkeypatch):
    """ENOSPC is injected at the write (faked: a full filesystem cannot be made without root)."""
    record_writes(monkeypatch, fail_at=3)
    runner = build_toy_runner(toy_cfg(tmp_path, max_iters=6))
    with pytest.raises(CheckpointSaveError) as raised:
        runner.train()
    message = str(raised.value)
    assert f"could not save checkpoint {tmp_path / 'iter_3.pth'}: the disk is full" in message
    assert "earlier checkpoints" in message and "intact" in message and "--resume" in message
    assert checkpoints(tmp_path) == ["iter_1.pth", "iter_2.pth"]
    assert [load(tmp_path / n)["meta"]["iter"] for n in checkpoints(tmp_path)] == [1, 2]
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_2.pth")
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_too_little_free_space_stops_before_writing(tmp_path, monkeypatch):
    runner = build_toy_runner(toy_cfg(tmp_path, max_iters=6))
    real_usage = checkpoint_saving.shutil.disk_usage
    calls = []

    def usage(path):
        calls.append(path)
        total, used, free = real_usage(path)
        return type(real_usage(path))(total, used, free if len(calls) < 3 else 1000)

    monkeypatch.setattr(checkpoint_saving.shutil, "disk_usage", usage)
    with pytest.raises(CheckpointSaveError, match="not enough free disk space .* MiB needed, 0 MiB free"):
        runner.train()
    assert checkpoints(tmp_path) == ["iter_1.pth", "iter_2.pth"]


def test_publish_atomically_leaves_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "iter_1.pth"
    target.write_bytes(b"old")

    def broken(temp):
        with open(temp, "wb") as file:
            file.write(b"new but only ha")
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError):
        publish_atomically(str(target), broken)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["iter_1.pth"]
    write_text_atomically(str(tmp_path / "last_checkpoint"), "x")
    assert (tmp_path / "last_checkpoint").read_text() == "x"


def test_temp_names_are_hidden_and_cleaned_up(tmp_path):
    temp = temp_path_for(str(tmp_path / "iter_3.pth"))
    assert os.path.basename(temp).startswith(".iter_3.pth.tmp-")
    open(temp, "w").close()
    (tmp_path / "iter_2.pth").write_bytes(b"x")
    assert remove_stale_temp_files(str(tmp_path)) == [os.path.basename(temp)]
    assert os.listdir(tmp_path) == ["iter_2.pth"]


def test_stale_temp_files_are_removed_when_training_starts(tmp_path):
    (tmp_path / ".iter_9.pth.tmp-4242").write_bytes(b"half a checkpoint")
    (tmp_path / ".last_checkpoint.tmp-4242").write_text("half")
    build_toy_runner(toy_cfg(tmp_path, max_iters=1)).train()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


@pytest.mark.parametrize("kept, step, max_keep, expected", [
    ([], 1, 2, ([1], [])),
    ([1, 2], 3, 2, ([2, 3], [1])),
    ([2, 3], 3, 2, ([2, 3], [])),  # the same step saved twice (a best checkpoint, then the regular one)
    ([1, 2], 3, -1, ([1, 2, 3], [])),
])
def test_keep_plan(kept, step, max_keep, expected):
    assert keep_plan(kept, step, max_keep) == expected


def test_saved_checkpoints_hold_a_complete_training_state(tmp_path):
    build_toy_runner(toy_cfg(tmp_path, max_iters=2)).train()
    state = load(tmp_path / "iter_2.pth")
    assert state["meta"]["iter"] == 2 and "optimizer" in state
    assert torch.isfinite(state["state_dict"]["linear.weight"]).all()


def test_outdated_checkpoints_are_those_older_than_every_kept_one():
    names = ["iter_3.pth", "iter_4.pth", "iter_5.pth", "iter_12.pth", "epoch_1.pth", "iter_2.pth.bak"]
    assert outdated_checkpoints(names, "iter_{}.pth", [4, 5]) == ["iter_3.pth"]
    assert outdated_checkpoints(names, "iter_{}.pth", []) == []


# default_hooks.checkpoint.out_dir, as mmengine 0.10.7's tests/test_hooks/test_checkpoint_hook.py checks it
# for CheckpointHook (test_before_train, test_with_runner): the same behaviour from both hooks.
@pytest.mark.parametrize("hook", ["CheckpointHook", "AtomicCheckpointHook"])
def test_out_dir_is_out_dir_slash_the_work_dir_name_and_made_only_at_the_first_save(tmp_path, hook):
    work_dir, out_dir = tmp_path / "run", tmp_path / "shared" / "checkpoints"
    cfg = toy_cfg(work_dir, max_iters=1)
    cfg.default_hooks.checkpoint.type = hook
    cfg.default_hooks.checkpoint.out_dir = str(out_dir)
    runner = build_toy_runner(cfg)
    checkpoint_hook = next(h for h in runner.hooks if type(h).__name__ == hook)
    checkpoint_hook.before_train(runner)  # AtomicCheckpointHook listed this folder and died here (issue 20)
    assert checkpoint_hook.out_dir == str(out_dir / "run")
    assert not out_dir.exists()


@pytest.mark.parametrize("by_epoch", [False, True])
def test_out_dir_holds_the_same_checkpoints_as_upstreams_and_last_checkpoint_names_them(tmp_path, by_epoch):
    saved = {}
    for hook in ("CheckpointHook", "AtomicCheckpointHook"):
        work_dir, out_dir = tmp_path / hook / "run", tmp_path / hook / "out"
        cfg = toy_cfg(work_dir, max_iters=5, by_epoch=by_epoch, max_keep_ckpts=2)
        cfg.default_hooks.checkpoint.type = hook
        cfg.default_hooks.checkpoint.out_dir = str(out_dir)
        build_toy_runner(cfg).train()
        last = "epoch_2.pth" if by_epoch else "iter_5.pth"
        assert (work_dir / "last_checkpoint").read_text() == str(out_dir / "run" / last)
        assert not list(work_dir.glob("*.pth"))
        saved[hook] = checkpoints(out_dir / "run")
        assert load(out_dir / "run" / last)["meta"]["epoch" if by_epoch else "iter"] == (2 if by_epoch else 5)
    assert saved["AtomicCheckpointHook"] == saved["CheckpointHook"]


def test_a_run_with_an_out_dir_resumes_from_there(tmp_path):
    """--resume (engine/resume.py) finds out_dir's checkpoints: through last_checkpoint, and, when the newest
    is unreadable, the older one beside it."""

    work_dir, out_dir = tmp_path / "run", tmp_path / "out"
    cfg = toy_cfg(work_dir, max_iters=4, max_keep_ckpts=2)
    cfg.default_hooks.checkpoint.out_dir = str(out_dir)
    build_toy_runner(cfg).train()
    assert checkpoints(out_dir / "run") == ["iter_3.pth", "iter_4.pth"]
    (out_dir / "run" / "iter_4.pth").write_bytes(b"cut short")
    lines = []
    resumed = toy_cfg(work_dir, max_iters=6, max_keep_ckpts=2)
    resumed.default_hooks.checkpoint.out_dir = str(out_dir)
    resumed.resume = True
    resumed = resolve_auto_resume(resumed, lines.append)
    assert resumed.load_from == str(out_dir / "run" / "iter_3.pth")
    assert lines[0].startswith(f"skipping checkpoint {out_dir / 'run' / 'iter_4.pth'}: checkpoint ")
    runner = build_toy_runner(resumed)
    runner.train()
    assert runner.iter == 6
    assert load(out_dir / "run" / "iter_6.pth")["meta"]["iter"] == 6


@pytest.mark.slow
def test_a_config_with_out_dir_set_to_a_new_folder_trains_saves_there_and_resumes(tmp_path, run_cli):
    """Issue 20, point 9: checkpoints on a shared disk (default_hooks.checkpoint.out_dir), through the real
    command; AtomicCheckpointHook crashed in before_train on the folder upstream makes at the first save."""

    work_dir, out_dir = tmp_path / "work", tmp_path / "shared-disk" / "checkpoints"
    out_dir_option = f"default_hooks.checkpoint.out_dir={out_dir}"  # after tiny_demo's --cfg-add: a new key
    first = run_cli("train", [*tiny_demo(work_dir, 2), out_dir_option], tmp_path, timeout=600)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    saved = out_dir / "work"
    assert sorted(p.name for p in saved.glob("*.pth")) == ["iter_1.pth", "iter_2.pth"]
    assert not list(work_dir.glob("*.pth"))
    assert (work_dir / "last_checkpoint").read_text() == str(saved / "iter_2.pth")

    resumed = run_cli("train", [*tiny_demo(work_dir, 3, "--resume"), out_dir_option], tmp_path, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"resuming from {saved / 'iter_2.pth'}" in resumed.stdout + resumed.stderr
    assert load(saved / "iter_3.pth")["meta"]["iter"] == 3
