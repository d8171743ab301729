"""A bare --resume continues from the newest checkpoint that loads (engine/resume.py)."""
from __future__ import annotations

import os
import time

import pytest
from toy_runner import toy_cfg

from pisa_train.engine import runner as engine
from pisa_train.engine.checkpoint_files import load_checkpoint_file
from pisa_train.engine.resume import checkpoint_candidates, choose_resume_checkpoint, resolve_auto_resume
from pisa_train.errors import CheckpointError, UnsafeCheckpointError


@pytest.fixture
def three_checkpoints(tmp_path):
    engine.run_training(toy_cfg(tmp_path, max_iters=3, max_keep_ckpts=-1))
    return tmp_path


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_candidates_are_checkpoints_newest_first(tmp_path):
    for index, name in enumerate(["iter_10.pth", "iter_9.pth", "best_coco_bbox_mAP_iter_8.pth", ".iter_11.pth.tmp-7",
                                  "iter_11.pth"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (time.time() + index, time.time() + index))
    assert [os.path.basename(p) for p in checkpoint_candidates(str(tmp_path))] == \
           ["iter_11.pth", "iter_9.pth", "iter_10.pth"]
    assert checkpoint_candidates(str(tmp_path / "missing")) == []


def test_a_truncated_newest_checkpoint_is_reported_and_skipped(three_checkpoints, capsys):
    work_dir = three_checkpoints
    truncate(work_dir / "iter_3.pth")
    lines = []
    cfg = toy_cfg(work_dir, max_iters=4, max_keep_ckpts=-1)
    cfg.resume = True
    resolved = resolve_auto_resume(cfg, lines.append)
    assert resolved.load_from == str(work_dir / "iter_2.pth") and resolved.resume
    assert len(lines) == 2
    assert lines[0].startswith(f"skipping checkpoint {work_dir / 'iter_3.pth'}: checkpoint ")
    assert "cannot be read; it is truncated or corrupt" in lines[0] and "\n" not in lines[0]
    assert lines[1] == f"resuming from {work_dir / 'iter_2.pth'}"

    engine.run_training(cfg)  # continues from iteration 2 and writes a good iter_3.pth over the broken one
    out = capsys.readouterr().out
    assert f"skipping checkpoint {work_dir / 'iter_3.pth'}" in out
    assert load_checkpoint_file(str(work_dir / "iter_3.pth"))["meta"]["iter"] == 3
    assert load_checkpoint_file(str(work_dir / "iter_4.pth"))["meta"]["iter"] == 4


def test_nothing_to_resume_from_starts_at_iteration_zero(tmp_path):
    lines = []
    cfg = toy_cfg(tmp_path)
    cfg.resume = True
    resolved = resolve_auto_resume(cfg, lines.append)
    assert resolved.resume is False and resolved.get("load_from") is None
    assert lines == [f"no checkpoint in {tmp_path} yet: starting from iteration 0"]


def test_only_broken_checkpoints_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "iter_1.pth").write_bytes(b"garbage")
    (tmp_path / "iter_2.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints .* can be resumed from"):
        choose_resume_checkpoint(checkpoint_candidates(str(tmp_path)), load_checkpoint_file, lambda line: None)


def test_an_unsafe_checkpoint_stops_the_search(tmp_path):
    def load(path):
        raise UnsafeCheckpointError("refused")

    (tmp_path / "iter_1.pth").write_bytes(b"x")
    with pytest.raises(UnsafeCheckpointError):
        choose_resume_checkpoint(checkpoint_candidates(str(tmp_path)), load, lambda line: None)


def test_a_checkpoint_without_training_state_is_skipped(tmp_path):
    (tmp_path / "iter_1.pth").write_bytes(b"x")
    lines = []
    assert choose_resume_checkpoint([], lambda p: {}, lines.append) is None  # nothing to resume from: start over
    with pytest.raises(CheckpointError):
        choose_resume_checkpoint([str(tmp_path / "iter_1.pth")], lambda p: {"state_dict": {}}, lines.append)
    assert lines == [f"skipping checkpoint {tmp_path / 'iter_1.pth'}: it has no training state "
                     f"(meta.epoch, meta.iter, state_dict)"]


def test_a_file_that_does_not_load_for_any_reason_is_skipped_and_named(tmp_path):
    """Issue 20, point 8: whatever a loader raises (IndexError from torch's unpickler on a text file starting
    with '(' was one), the file is skipped in a line and the next one tried."""
    for step, age in ((1, 100), (2, 50), (3, 0)):
        (tmp_path / f"iter_{step}.pth").write_bytes(b"x")
        os.utime(tmp_path / f"iter_{step}.pth", (time.time() - age,) * 2)
    (tmp_path / "last_checkpoint").write_bytes(b"\xff\xfe not text \x00")  # no candidate, and no error

    def load(path):
        if path.endswith("iter_3.pth"):
            raise IndexError("pop from empty list")
        if path.endswith("iter_2.pth"):
            raise CheckpointError(f"checkpoint {path} cannot be read")
        return {"state_dict": {}, "meta": {"epoch": 0, "iter": 1}}

    lines = []
    assert choose_resume_checkpoint(checkpoint_candidates(str(tmp_path)), load, lines.append) == \
        str(tmp_path / "iter_1.pth")
    assert lines == [f"skipping checkpoint {tmp_path / 'iter_3.pth'}: it cannot be read (IndexError: pop from "
                     f"empty list)",
                     f"skipping checkpoint {tmp_path / 'iter_2.pth'}: checkpoint {tmp_path / 'iter_2.pth'} cannot "
                     f"be read"]
