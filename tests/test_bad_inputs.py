"""The rows of the bad-input table (docs/cli.md) that need a real run: broken data, broken or foreign
checkpoints, a checkpoint whose pickle runs code. Each is one line on stderr and
its exit code. Slow (a real process each); CI runs them. The other rows are tested in
test_cli.py, test_config_options.py, test_error_reporting.py and test_interrupted_training.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from crafted_checkpoints import INFLATED_BYTES, write_inflating_checkpoint
from tiny_training import tiny_demo, tiny_eval

from pisa_train import exit_codes

pytestmark = pytest.mark.slow


def run(module: str, args: list, cwd: Path, env: dict | None = None) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", f"pisa_train.cli.{module}", *map(str, args)], cwd=cwd,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stderr


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder holding the tiny dataset (data/demo_shapes) and one checkpoint of the tiny model."""
    cwd = tmp_path_factory.mktemp("trained")
    code, err = run("train", tiny_demo(cwd / "work", 1), cwd)
    assert code == 0, err[-3000:]
    return cwd


@pytest.fixture
def dataset_copy(trained, tmp_path) -> Path:
    shutil.copytree(trained / "data", tmp_path / "data")
    return tmp_path / "data" / "demo_shapes"


def test_corrupt_annotation_json(dataset_copy, tmp_path):
    annotations = dataset_copy / "annotations" / "train.json"
    annotations.write_text(annotations.read_text()[:200])
    code, err = run("train", tiny_demo(tmp_path / "work", 1), tmp_path)
    assert code == exit_codes.DATA_ERROR
    line = one_line(err)
    assert line.startswith("pisa-train: error: annotation file data/demo_shapes/annotations/train.json is not valid "
                           "JSON (") and line.endswith("); it is truncated or corrupt: download or export it again")
    assert re.search(r"JSON \(.+ at line \d+ column \d+\); it is", line), line  # where json found the fault


def test_missing_image(dataset_copy, tmp_path):
    for image in (dataset_copy / "train").iterdir():
        image.unlink()
    code, err = run("train", tiny_demo(tmp_path / "work", 1), tmp_path)
    assert code == exit_codes.DATA_ERROR
    assert re.fullmatch(r"pisa-train: error: image data/demo_shapes/train/\d+\.jpg " + re.escape(
        "not found, but the annotation file lists it; copy the image there, or check the config's data_root and "
        "data_prefix.img (data/demo_shapes/train/)"), one_line(err)), err


def test_corrupt_image(dataset_copy, tmp_path):
    for image in (dataset_copy / "train").iterdir():
        image.write_bytes(b"not a jpeg")
    code, err = run("train", tiny_demo(tmp_path / "work", 1), tmp_path)
    assert code == exit_codes.DATA_ERROR
    assert re.fullmatch(r"pisa-train: error: image data/demo_shapes/train/\d+\.jpg " + re.escape(
        "cannot be decoded: it is corrupt or not an image; replace it, or remove it from the annotation file"),
        one_line(err)), err


def test_corrupt_checkpoint(trained, tmp_path):
    broken = tmp_path / "iter_1.pth"
    data = (trained / "work" / "iter_1.pth").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    code, err = run("evaluate", tiny_eval(broken, tmp_path / "work"), trained)
    assert code == exit_codes.CHECKPOINT_ERROR
    line = one_line(err)
    assert line.startswith(f"pisa-eval: error: checkpoint {broken} cannot be read; it is truncated or corrupt "
                           f"(PytorchStreamReader failed reading zip archive: "), line
    assert line.endswith("); use an earlier checkpoint, or --resume alone, which skips unreadable checkpoints"), line


def test_checkpoint_for_another_number_of_classes(trained, tmp_path):
    checkpoint = trained / "work" / "iter_1.pth"
    code, err = run("evaluate", tiny_eval(checkpoint, tmp_path / "work",
                                          options=["model.roi_head.bbox_head.num_classes=5"]), trained)
    assert code == exit_codes.CHECKPOINT_ERROR
    assert one_line(err) == (
        f"pisa-eval: error: checkpoint {checkpoint} is for another model: roi_head.bbox_head.fc_cls.weight is "
        f"[4, 64] in the checkpoint and [6, 64] in this model (and 3 more weights differ in shape); it was trained "
        f"on 3 classes (circle, square, triangle), this config has num_classes=5; use the config it was trained "
        f"with, or set model.roi_head.bbox_head.num_classes (and the dataset classes) to match")


def write_checkpoint_that_runs_code(path: Path, marker: Path) -> None:
    code = ("import os, torch\n"
            "class Payload:\n"
            "    def __reduce__(self):\n"
            f"        return (os.system, ('touch {marker}',))\n"
            f"torch.save({{'meta': {{'epoch': 0, 'iter': 1, 'x': Payload()}}, 'state_dict': {{}}}}, {str(path)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("command", ["evaluate", "train --resume"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_runs_nothing(trained, tmp_path, command):
    evil, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    write_checkpoint_that_runs_code(evil, marker)
    if command == "evaluate":
        code, err = run("evaluate", tiny_eval(evil, tmp_path / "work"), trained)
        prog = "pisa-eval"
    else:
        code, err = run("train", tiny_demo(tmp_path / "work", 2, "--resume", evil), trained)
        prog = "pisa-train"
    assert code == exit_codes.CHECKPOINT_ERROR
    assert one_line(err) == (
        f"{prog}: error: checkpoint {evil} was refused: it pickles posix.system, which is not among the weights "
        f"and mmengine training state that pisa-train loads, and unpickling it could run arbitrary code; if you "
        f"trust where this file came from, load it anyway with --trust-checkpoint {evil}")
    assert not marker.exists()


def test_a_checkpoint_declaring_far_more_than_it_holds_is_refused_before_loading(trained, tmp_path):
    """Issue 20, point 7: a real crafted 1.9 MB checkpoint whose one storage record inflates to 2 GB."""

    crafted = write_inflating_checkpoint(tmp_path / "iter_1.pth")
    code, err = run("evaluate", tiny_eval(crafted, tmp_path / "work"), trained)
    assert code == exit_codes.CHECKPOINT_ERROR
    assert re.fullmatch(re.escape(
        f"pisa-eval: error: checkpoint {crafted} was refused before loading: its entry archive/data/0 declares "
        f"{INFLATED_BYTES} bytes in ") + r"\d+" + re.escape(
        " compressed ones, and torch.save writes entries uncompressed; the file was crafted or damaged; use a "
        "checkpoint written by pisa-train or torch.save"), one_line(err)), err


def test_resume_skips_every_file_that_does_not_load_and_names_it(trained, tmp_path):
    """Issue 20, point 8: a text file named epoch_9.pth (its '(' made torch raise IndexError) and a
    last_checkpoint naming a file that is no checkpoint are skipped, each in a line; the run resumes."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    shutil.copy(trained / "work" / "iter_1.pth", work_dir / "iter_1.pth")
    text, notes = work_dir / "epoch_9.pth", tmp_path / "notes.txt"
    text.write_text("(not a checkpoint, just notes\n")
    notes.write_text("lr 0.02 looked better\n")
    (work_dir / "last_checkpoint").write_text(str(notes))
    os.utime(work_dir / "iter_1.pth", (1, 1))  # the oldest: the others are tried first
    result = subprocess.run([sys.executable, "-m", "pisa_train.cli.train",
                             *map(str, tiny_demo(work_dir, 2, "--resume"))], cwd=trained, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    for skipped in (text, notes):
        assert re.search(rf"skipping checkpoint {re.escape(str(skipped))}: checkpoint {re.escape(str(skipped))} "
                         r"cannot be read; it is truncated or corrupt \(", output), output[-3000:]
    assert f"resuming from {work_dir / 'iter_1.pth'}" in output
    assert (work_dir / "iter_2.pth").is_file()
