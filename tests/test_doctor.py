"""pisa-train --doctor: the environment report, and a non-zero exit when a config's needs are missing."""
from __future__ import annotations

import hashlib
import platform

import mmcv
import mmdet
import mmengine
import pytest
import torch
from conftest import DEMO_CONFIG, X101_PISA_CONFIG
from mmcv.ops import get_compiling_cuda_version

from pisa_train import exit_codes
from pisa_train.cli.train import main
from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled


@pytest.fixture(autouse=True)
def _restore_visible_gpus(monkeypatch):
    # --device cpu hides the GPUs by setting CUDA_VISIBLE_DEVICES in this process.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def test_doctor_without_a_config_reports_the_environment(capsys, tmp_path):
    assert main(["--doctor", "--work-dir", str(tmp_path / "not" / "yet")]) == 0
    out = capsys.readouterr().out
    assert f"python: {platform.python_version()}" in out
    assert f"torch: {torch.__version__}" in out
    for name, module in (("mmcv", mmcv), ("mmdet", mmdet), ("mmengine", mmengine)):
        assert f"{name}: {module.__version__}" in out
    if mmcv_ext_is_compiled():
        has_cuda_kernels = get_compiling_cuda_version() != "not available"
        assert f"mmcv ops: compiled; CPU kernels: yes; CUDA kernels: {'yes' if has_cuda_kernels else 'no'}" in out
    else:
        assert ("ok      mmcv ops: mmcv-lite, without compiled ops: RoIAlign, NMS and nms_match run on torchvision's "
                "and torch's kernels") in out
        assert "RoIAlign/NMS kernels: --ops-backend auto uses torchvision's on cpu" in out or torch.cuda.is_available()
    assert ("GPU 0:" in out) == (torch.cuda.device_count() > 0)
    assert f"at {tmp_path}" in out and "GiB free" in out  # the nearest existing folder of the work dir
    assert "MISSING" not in out


def test_doctor_with_a_config_checks_its_dataset_and_weights(capsys, tmp_path, monkeypatch, shapes_dataset):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    args = ["--doctor", str(X101_PISA_CONFIG), "--device", "cpu", "--work-dir", str(tmp_path / "w")]

    # COCO is not there, nor the backbone's weights.
    monkeypatch.chdir(tmp_path)
    assert main(args) == exit_codes.ENVIRONMENT_ERROR
    captured = capsys.readouterr()
    assert "MISSING dataset: train_dataloader.dataset.ann_file = data/coco/annotations/instances_train2017.json" \
        in captured.out
    weights = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnext101_32x4d-a5af3160.pth"
    assert f"MISSING pretrained weights: open-mmlab://resnext101_32x4d -> {weights} -- not downloaded yet" \
        in captured.out
    assert "thing(s) this run needs are missing" in captured.err

    # With the data (--data) but still without the weights: only the weights are missing.
    assert main([*args, "--data", str(shapes_dataset)]) == exit_codes.ENVIRONMENT_ERROR
    captured = capsys.readouterr()
    assert captured.out.count("MISSING") == 1 and "MISSING pretrained weights" in captured.out

    # A file of that name that is not those weights (an error page, a cut download) is not "ok":
    # the doctor checks it by the SHA-256 prefix in its name, as the downloader does.
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"placeholder")
    assert main([*args, "--data", str(shapes_dataset)]) == exit_codes.ENVIRONMENT_ERROR
    captured = capsys.readouterr()
    assert (f"MISSING pretrained weights: open-mmlab://resnext101_32x4d -> {weights} -- it is not the file its "
            f"name promises (its SHA-256 {hashlib.sha256(b'placeholder').hexdigest()[:16]}... does not start with "
            f"the a5af3160 in its name); delete it and run `pisa-data weights --only open-mmlab://resnext101_32x4d`"
            ) in captured.out
    assert weights.read_bytes() == b"placeholder"  # the doctor changes nothing

    # The right bytes under their name are "ok": a backbone whose name carries its own SHA-256 prefix.
    payload = b"backbone weights"
    name = f"backbone-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    (weights.parent / name).write_bytes(payload)
    url = f"https://download.openmmlab.com/pretrain/third_party/{name}"
    assert main([*args, "--data", str(shapes_dataset), "--cfg-options",
                 f"model.backbone.init_cfg.checkpoint={url}"]) == 0
    captured = capsys.readouterr()
    assert "MISSING" not in captured.out
    assert (f"ok      pretrained weights: {url} -> {weights.parent / name}, SHA-256 starts with the {name[-12:-4]} in "
            f"its name (catches corruption, not a forged file: pin it with PISA_TRAIN_WEIGHTS_SHA256)") in captured.out
    # Pinned by its full SHA-256 (PISA_TRAIN_WEIGHTS_SHA256), the doctor says so.
    pins = tmp_path / "pins.sha256"
    pins.write_text(f"{hashlib.sha256(payload).hexdigest()}  {name}\n")
    monkeypatch.setenv("PISA_TRAIN_WEIGHTS_SHA256", str(pins))
    assert main([*args, "--data", str(shapes_dataset), "--cfg-options",
                 f"model.backbone.init_cfg.checkpoint={url}"]) == 0
    assert (f"ok      pretrained weights: {url} -> {weights.parent / name}, full SHA-256 pinned in {pins}"
            ) in capsys.readouterr().out
    assert f"dataset: train_dataloader.dataset.ann_file = {shapes_dataset}" in captured.out


def test_doctor_with_the_demo_config_needs_nothing_downloaded(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--doctor", str(DEMO_CONFIG), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "synthetic, generated into" in out and "trains from scratch" in out


def test_train_without_a_config_or_doctor_is_a_usage_error(capsys):
    assert main([]) == exit_codes.USAGE_ERROR
    assert capsys.readouterr().err.strip() == \
        "pisa-train: error: the following arguments are required: config (or --doctor)"
