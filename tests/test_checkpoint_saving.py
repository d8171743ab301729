"""Atomic checkpoints (engine/hooks/atomic_checkpoint.py) on a real MMEngine Runner with a toy model:
what upstream does, what the wrapper does instead, and failing saves."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from mmengine.fileio import LocalBackend

from pisa_train.engine.hooks import atomic_checkpoint as checkpoint_saving
from pisa_train.engine.hooks.atomic_checkpoint import keep_plan
from pisa_train.files import publish_atomically, remove_stale_temp_files, temp_path_for, write_text_atomically
from pisa_train.errors import CheckpointSaveError
from toy_runner import build_toy_runner, toy_cfg


def load(path):
    from pisa_train.engine.patches.checkpoint_loading import load_checkpoint_file

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
    from pisa_train.engine.hooks.atomic_checkpoint import outdated_checkpoints

    names = ["iter_3.pth", "iter_4.pth", "iter_5.pth", "iter_12.pth", "epoch_1.pth", "iter_2.pth.bak"]
    assert outdated_checkpoints(names, "iter_{}.pth", [4, 5]) == ["iter_3.pth"]
    assert outdated_checkpoints(names, "iter_{}.pth", []) == []
