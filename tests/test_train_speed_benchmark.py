"""benchmarks/train_speed.py: its data, its config, how it reads MMEngine's logs into figures,
and (slow) a real run of pisa-train and mmdet's tools/train.py on the CPU at a small size."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, X101_PISA_CONFIG

BENCHMARK = REPO_ROOT / "benchmarks" / "train_speed.py"
_spec = importlib.util.spec_from_file_location("train_speed", BENCHMARK)
train_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_speed)


def _load(path):
    from mmengine.config import Config

    return Config.fromfile(str(path)).to_dict()


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_the_benchmark_config_changes_only_what_a_timing_needs(tmp_path, mode):
    config = tmp_path / "bench.py"
    config.write_text(train_speed.benchmark_config_text(X101_PISA_CONFIG, tmp_path / "data", 160, 96, batch=1,
                                                        workers=0, max_iters=3, mode=mode))
    base, bench = _load(X101_PISA_CONFIG), _load(config)

    assert bench["train_cfg"] == dict(type="IterBasedTrainLoop", max_iters=3)
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg", "test_evaluator"):
        assert bench[key] is None, key
    assert bench["default_hooks"]["checkpoint"] is None
    assert bench["default_hooks"]["logger"]["interval"] == 1
    assert bench["log_processor"]["window_size"] == 1
    loader = bench["train_dataloader"]
    assert (loader["batch_size"], loader["num_workers"], loader["persistent_workers"]) == (1, 0, False)
    assert loader["dataset"]["data_root"] == str(tmp_path / "data") + "/"
    assert loader["dataset"]["pipeline"][2] == dict(type="Resize", scale=(160, 96), keep_ratio=True)
    # The model is the X101 PISA model, without the ImageNet download.
    assert bench["model"]["backbone"]["init_cfg"] is None
    assert bench["model"] == dict(base["model"], backbone=dict(base["model"]["backbone"], init_cfg=None))
    assert bench["model"]["roi_head"]["type"] == "PISARoIHead" and bench["model"]["backbone"]["depth"] == 101
    # Everything else is the config's own.
    expected_changes = {"model", "train_pipeline", "train_dataloader", "train_cfg", "val_dataloader", "val_cfg",
                        "val_evaluator", "test_dataloader", "test_cfg", "test_evaluator", "default_hooks",
                        "log_processor", "randomness"}
    if mode == "bf16":
        expected_changes.add("optim_wrapper")
        assert bench["optim_wrapper"] == dict(base["optim_wrapper"], type="AmpOptimWrapper", dtype="bfloat16")
    changed = {key for key in base.keys() | bench.keys() if base.get(key) != bench.get(key)}
    assert changed == expected_changes
    assert bench["train_pipeline"] == [dict(step, scale=(160, 96)) if step["type"] == "Resize" else step
                                       for step in base["train_pipeline"]]


def test_the_generated_images_and_boxes_are_coco_format(tmp_path):
    from mmdet.datasets import CocoDataset
    from PIL import Image

    train_speed.generate_dataset(tmp_path / "data", count=3, width=96, height=64)
    coco = json.loads((tmp_path / "data" / "annotations" / "train.json").read_text())
    assert [image["file_name"] for image in coco["images"]] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    for image in coco["images"]:
        assert Image.open(tmp_path / "data" / "images" / image["file_name"]).size == (96, 64)
    assert len(coco["annotations"]) >= 6  # 2 to 12 boxes per image
    for box in coco["annotations"]:
        x, y, w, h = box["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 96.01 and y + h <= 64.01 and w > 0 and h > 0
    # COCO's own class names, so that CocoDataset (80 classes) keeps every box.
    assert {c["name"] for c in coco["categories"]} <= set(CocoDataset.METAINFO["classes"])


def _scalars(work_dir, entries):
    log = work_dir / "20250101_000000" / "vis_data" / "scalars.json"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))


def test_figures_from_mmengines_log_leave_out_the_warm_up(tmp_path):
    _scalars(tmp_path, [
        {"lr": 2e-5, "data_time": 3.0, "loss": 5.0, "time": 20.0, "iter": 1, "memory": 900, "step": 1},
        {"lr": 6e-5, "data_time": 0.2, "loss": 4.0, "time": 4.0, "iter": 2, "memory": 1200, "step": 2},
        {"lr": 1e-4, "data_time": 0.4, "loss": 3.0, "time": 6.0, "iter": 3, "memory": 1100, "step": 3},
        {"coco/bbox_mAP": 0.1, "step": 3},  # not a training iteration
    ])
    iterations = train_speed.read_iterations(tmp_path)
    assert [entry["step"] for entry in iterations] == [1, 2, 3]
    figures = train_speed.summarize(iterations, warmup=1, batch=2, peak_rss_mib=3000.0)
    assert figures == dict(iterations=2, s_per_iter=5.0, data_s_per_iter=0.3, images_per_s=0.4, losses=[4.0, 3.0],
                           peak_memory_mib=1200.0, peak_memory_kind="torch.cuda.max_memory_allocated",
                           peak_rss_mib=3000.0)
    cpu = [{key: value for key, value in entry.items() if key != "memory"} for entry in iterations]
    assert train_speed.summarize(cpu, 1, 2, 3000.04)["peak_memory_mib"] == 3000.0  # no GPU: the peak RSS
    with pytest.raises(ValueError, match="no iteration after the 3 warm-up iterations"):
        train_speed.summarize(iterations, warmup=3, batch=2, peak_rss_mib=1.0)
    with pytest.raises(ValueError, match="scalars.json"):
        train_speed.read_iterations(tmp_path / "empty")


def test_modes_and_the_refusal_of_amp_without_a_gpu():
    assert train_speed.check_modes(["all"], has_gpu=True) == ["fp32", "amp", "bf16"]
    assert train_speed.check_modes(["amp", "fp32", "amp"], has_gpu=True) == ["amp", "fp32"]
    assert train_speed.check_modes(["fp32"], has_gpu=False) == ["fp32"]
    with pytest.raises(ValueError, match=r"--mode amp and bf16 needs a CUDA GPU .*AmpOptimWrapper.*; run --mode fp32"):
        train_speed.check_modes(["all"], has_gpu=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_amp_on_a_machine_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARK), "--mode", "bf16", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "--mode bf16 needs a CUDA GPU (mmengine 0.10.7's AmpOptimWrapper asserts one) and this machine has none; "
        "run --mode fp32")
    assert not list(tmp_path.iterdir())  # refused before generating anything


def test_the_table_names_the_machine_and_a_failed_run():
    record = dict(machine="Some CPU, 2 cores, no GPU", image_size=[160, 96], batch=1, runs=[dict(
        mode="fp32", ratio_s_per_iter=None,
        **{"pisa-train": dict(s_per_iter=7.0, data_s_per_iter=0.01, images_per_s=0.143, peak_memory_mib=2048.4,
                              peak_memory_kind="peak RSS"),
           "mmdet": dict(error="exit code 1: RuntimeError: boom")})])
    assert train_speed.markdown_table(record)[2:] == [
        "| Some CPU, 2 cores, no GPU | pisa-train | fp32 | 160x96 | 1 | 7.000 | 0.010 | 0.143 | 2048 (peak RSS) | "
        "n/a (mmdet failed) | n/a |",
        "| Some CPU, 2 cores, no GPU | mmdet | fp32 | 160x96 | 1 | failed: exit code 1: RuntimeError: boom | | | | | |"]
    assert train_speed.ratio({"pisa-train": dict(s_per_iter=7.0), "mmdet": dict(s_per_iter=5.0)}) == 1.4


def test_pip_installed_mmdet_ships_its_train_script():
    """The benchmark runs it; mim installs it inside the package, as mmdet's setup.py adds it."""
    script = train_speed.mmdet_train_script()
    assert script is not None and script.name == "train.py" and script.parent.name == "tools"
    assert "runner.train()" in script.read_text()


@pytest.mark.slow
def test_the_benchmark_times_pisa_train_and_mmdet_on_the_cpu(tmp_path):
    """X101 at 160x96, batch 1, one warm-up and two timed iterations per command: 2 to 7 s an
    iteration on 2 CPU cores, plus each process's start (30 s to 2 minutes in all)."""
    out = tmp_path / "record.json"
    result = subprocess.run([sys.executable, str(BENCHMARK), "--size", "160", "96", "--batch", "1", "--warmup", "1",
                             "--iters", "2", "--workers", "0", "--out-dir", str(tmp_path / "runs"),
                             "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    record = json.loads(out.read_text())
    assert record["machine"] and record["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert (record["image_size"], record["batch"], record["timed_iterations"]) == ([160, 96], 1, 2)
    [run] = record["runs"]
    assert run["mode"] == "fp32"
    for tool in ("pisa-train", "mmdet"):
        figures = run[tool]
        assert figures["exit_code"] == 0 and figures["iterations"] == 2, (tool, figures)
        for key in ("s_per_iter", "data_s_per_iter", "images_per_s", "peak_memory_mib"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (tool, key, figures[key])
        assert figures["images_per_s"] == pytest.approx(1 / figures["s_per_iter"], rel=1e-2)
        assert figures["peak_memory_mib"] > 500  # an X101 training process, not the benchmark's own
    if not torch.cuda.is_available():  # the same computation: same seed, config and (mmcv's) kernels
        assert run["pisa-train"]["losses"] == run["mmdet"]["losses"]
    assert run["ratio_s_per_iter"] == pytest.approx(run["pisa-train"]["s_per_iter"] / run["mmdet"]["s_per_iter"],
                                                    rel=1e-2)
    assert json.loads(result.stdout[:result.stdout.rindex("}") + 1]) == record  # the same record on stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {record['machine']} |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["pisa-train", "fp32"], ["mmdet", "fp32"]]
    assert rows[1].endswith("| 1 (reference) | n/a |")  # no MFU without a GPU
