"""Upstream errors become one line and an exit code (pisa_train.error_reporting), and a checkpoint
for another model is recognised (engine/hooks/checkpoint_compatibility.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from pisa_train import exit_codes
from pisa_train.engine.hooks.checkpoint_compatibility import compare_state_dicts, mismatch_message
from pisa_train.error_reporting import run_reporting_errors
from pisa_train.errors import TrainingStopped


def report(error: BaseException, capsys) -> tuple[int, str]:
    def work():
        raise error

    code = run_reporting_errors("pisa-train", work)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err.strip()


def coco_load(path):
    """Where pycocotools' COCO(annotation_file) fails on a corrupt file (the local is what we read)."""
    annotation_file = path  # noqa: F841 - read from the traceback
    with open(path) as file:
        return json.load(file)


def test_a_corrupt_annotation_file_is_named(tmp_path, capsys):
    broken = tmp_path / "train.json"
    broken.write_text('{"images": [{"id": 1,')
    try:
        coco_load(str(broken))
    except json.JSONDecodeError as error:
        code, err = report(error, capsys)
    assert code == exit_codes.DATA_ERROR
    assert err.startswith(f"pisa-train: error: annotation file {broken} is not valid JSON (Expecting")
    assert "download or export it again" in err


OUT_OF_MEMORY_ADVICE = ("use a smaller batch (--cfg-options train_dataloader.batch_size=N, with --auto-scale-lr to "
                        "keep the learning rate right) or mixed precision (--amp)")


@pytest.mark.parametrize("error, code, expected", [
    (FileNotFoundError(2, "No such file or directory", "data/shapes/train/0007.jpg"), exit_codes.DATA_ERROR,
     "image data/shapes/train/0007.jpg not found, but the annotation file lists it; copy the image there, or check "
     "the config's data_root and data_prefix.img (data/shapes/train/)"),
    # as a DataLoader worker re-raises it: only the text survives
    (FileNotFoundError("Caught FileNotFoundError in DataLoader worker process 0.\nOriginal Traceback ...\n"
                       "FileNotFoundError: [Errno 2] No such file or directory: 'd/train/0003.png'"),
     exit_codes.DATA_ERROR, "image d/train/0003.png not found, but the annotation file lists it; copy the image "
                            "there, or check the config's data_root and data_prefix.img (d/train/)"),
    (AssertionError("failed to load image: data/shapes/train/0002.jpg"), exit_codes.DATA_ERROR,
     "image data/shapes/train/0002.jpg cannot be decoded: it is corrupt or not an image; replace it, or remove it "
     "from the annotation file"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total capacity)"),
     exit_codes.ENVIRONMENT_ERROR, "the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
                                   f"15.7 GiB total capacity)); {OUT_OF_MEMORY_ADVICE}"),
    (RuntimeError("The server socket has failed to listen on any local network address. port: 29500, useIpv6: "
                  "false, code: -98, name: EADDRINUSE, message: address already in use"),
     exit_codes.ENVIRONMENT_ERROR, "the distributed port 29500 is already in use (another training run on this "
                                   "machine?); choose a free one: torchrun --master-port 29510 ..., or set "
                                   "MASTER_PORT=29510"),
])
def test_known_upstream_errors(error, code, expected, capsys):
    assert report(error, capsys) == (code, f"pisa-train: error: {expected}")


def test_out_of_memory_suggests_amp_or_a_smaller_batch(capsys):
    assert report(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), capsys) == (
        exit_codes.ENVIRONMENT_ERROR,
        f"pisa-train: error: the GPU ran out of memory (CUDA out of memory. Tried to allocate 20.00 MiB); "
        f"{OUT_OF_MEMORY_ADVICE}")


def test_a_file_that_is_not_an_image_is_not_called_an_image(capsys):
    code, err = report(FileNotFoundError(2, "No such file or directory", "model.cfg"), capsys)
    assert code == exit_codes.UNEXPECTED_ERROR and "--debug" in err


def test_a_stop_is_reported_as_stopped_not_as_an_error(capsys):
    code, err = report(TrainingStopped("stopped by SIGTERM after iteration 3; ..."), capsys)
    assert code == exit_codes.STOPPED_AND_SAVED == 75
    assert err == "pisa-train: stopped: stopped by SIGTERM after iteration 3; ..."


def test_a_checkpoint_for_another_number_of_classes_is_recognised():
    mismatched, missing = compare_state_dicts(
        {"module.roi_head.bbox_head.fc_cls.weight": (4, 256), "backbone.conv1.weight": (64, 3, 7, 7)},
        {"roi_head.bbox_head.fc_cls.weight": (81, 256), "backbone.conv1.weight": (64, 3, 7, 7),
         "backbone.bn1.num_batches_tracked": ()})
    assert mismatched == [("roi_head.bbox_head.fc_cls.weight", (4, 256), (81, 256))] and missing == []
    message = mismatch_message("c.pth", mismatched, missing, ["circle", "square", "triangle"], 80)
    assert message == ("checkpoint c.pth is for another model: roi_head.bbox_head.fc_cls.weight is [4, 256] in the "
                       "checkpoint and [81, 256] in this model; it was trained on 3 classes (circle, square, "
                       "triangle), this config has num_classes=80; use the config it was trained with, or set "
                       "model.roi_head.bbox_head.num_classes (and the dataset classes) to match")
    assert "2 weights of this model are not in it" in mismatch_message("c.pth", [], ["a", "b"], [], None)
    assert mismatch_message("c.pth", [], [], [], None) is None


def test_a_distributed_port_in_use_as_torch_reports_it(tmp_path):
    """torch's real error for a taken rendezvous port (in a subprocess: process groups are global).
    Through the CLI this needs --launcher pytorch, which mmengine 0.10.7 supports on GPUs only."""

    code = textwrap.dedent("""
        import socket, sys
        import torch.distributed as dist
        from pisa_train.error_reporting import run_reporting_errors
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        print("PORT", port, flush=True)
        sys.exit(run_reporting_errors("pisa-train", lambda: dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    port = result.stdout.split()[1]
    assert result.returncode == exit_codes.ENVIRONMENT_ERROR, result.stderr
    assert result.stderr.strip() == (
        f"pisa-train: error: the distributed port {port} is already in use (another training run on this machine?); "
        f"choose a free one: torchrun --master-port 29510 ..., or set MASTER_PORT=29510")


class RecordedWrites:
    """A stream that keeps each write call apart: unbuffered, each would be one write(2)."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass


@pytest.mark.parametrize("error", [TrainingStopped("iteration 3: on rank 1 of 2, loss is nan"), KeyboardInterrupt(),
                                   ValueError("unexpected\nsecond line")], ids=["known", "interrupt", "unexpected"])
def test_an_error_line_is_one_write_so_two_processes_sharing_stderr_never_mix_their_lines(monkeypatch, error):
    """Both processes of a 2-process run report the same error on one stderr; ``print`` wrote the
    newline apart, and with PYTHONUNBUFFERED two messages then shared a line (CI saw it)."""

    stream = RecordedWrites()
    monkeypatch.setattr(sys, "stderr", stream)

    def work():
        raise error

    run_reporting_errors("pisa-train", work)
    assert len(stream.writes) == 1 and stream.writes[0].startswith("pisa-train: ")
    assert stream.writes[0].endswith("\n") and stream.writes[0].count("\n") == 1, stream.writes


def test_an_errors_after_report_runs_once_its_line_is_written(monkeypatch):
    """Where every process raises the same error (training_guards.raised_by_every_process), its
    barrier must come after the line: before it, a process stopped by torchrun has written nothing."""

    stream = RecordedWrites()
    monkeypatch.setattr(sys, "stderr", stream)
    error = TrainingStopped("stopped by SIGTERM after iteration 2")
    error.after_report = lambda: stream.writes.append("<barrier>")

    def work():
        raise error

    assert run_reporting_errors("pisa-train", work) == exit_codes.STOPPED_AND_SAVED
    assert stream.writes == ["pisa-train: stopped: stopped by SIGTERM after iteration 2\n", "<barrier>"]


def test_a_failing_after_report_leaves_the_one_line_and_the_exit_code(monkeypatch):
    """A barrier whose peer is already gone raises (gloo: connection reset); the user still gets
    the error's own line and exit code, not a traceback."""

    stream = RecordedWrites()
    monkeypatch.setattr(sys, "stderr", stream)
    error = TrainingStopped("stopped by SIGTERM after iteration 2")

    def barrier_without_peer():
        raise RuntimeError("Connection reset by peer")

    error.after_report = barrier_without_peer

    def work():
        raise error

    assert run_reporting_errors("pisa-train", work) == exit_codes.STOPPED_AND_SAVED
    assert stream.writes == ["pisa-train: stopped: stopped by SIGTERM after iteration 2\n"]
