"""benchmarks/train_speed.py: its data, its config, how it reads MMEngine's logs into figures, which
Python runs each command and which mmcv kernels each uses, and (slow) a real run of pisa-train and
mmdet's tools/train.py on the CPU at a small size: mmdet's with .venv-mmcv-compiled's Python (compiled
mmcv) when that venv exists, else with the same Python as pisa-train."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, X101_PISA_CONFIG
from mmdet.datasets import CocoDataset
from mmengine.config import Config
from PIL import Image

BENCHMARK = REPO_ROOT / "benchmarks" / "train_speed.py"
COMPILED_MMCV_PYTHON = REPO_ROOT / ".venv-mmcv-compiled" / "bin" / "python"
_spec = importlib.util.spec_from_file_location("train_speed", BENCHMARK)
train_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_speed)


def _load(path):
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


def test_the_table_names_the_machine_the_kernels_and_a_failed_run():
    record = dict(machine="Some CPU, 2 cores, no GPU", image_size=[160, 96], batch=1, runs=[dict(
        mode="fp32", ratio_s_per_iter=None,
        **{"pisa-train": dict(kernels="torchvision/torch (pisa-train, mmcv-lite)", s_per_iter=7.0,
                              data_s_per_iter=0.01, images_per_s=0.143, peak_memory_mib=2048.4,
                              peak_memory_kind="peak RSS"),
           "mmdet": dict(kernels="none (mmcv-lite)", error="exit code 1: RuntimeError: boom")})])
    assert train_speed.markdown_table(record)[0].startswith("| machine | command | mmcv kernels | mode |")
    assert train_speed.markdown_table(record)[2:] == [
        "| Some CPU, 2 cores, no GPU | pisa-train | torchvision/torch (pisa-train, mmcv-lite) | fp32 | 160x96 | 1 "
        "| 7.000 | 0.010 | 0.143 | 2048 (peak RSS) | n/a (mmdet failed) | n/a |",
        "| Some CPU, 2 cores, no GPU | mmdet | none (mmcv-lite) | fp32 | 160x96 | 1 "
        "| failed: exit code 1: RuntimeError: boom | | | | | |"]
    assert train_speed.ratio({"pisa-train": dict(s_per_iter=7.0), "mmdet": dict(s_per_iter=5.0)}) == 1.4
    # Every row has as many cells as the header.
    assert {line.count("|") for line in train_speed.markdown_table(record)} == {13}


def test_mmdet_runs_with_the_compiled_mmcv_venv_when_there_is_one(tmp_path):
    """mmdet's tools/train.py cannot run on mmcv-lite: by default it gets the repository's compiled venv."""
    repo = tmp_path / "repo"
    assert train_speed.choose_mmdet_python(None, repo, fallback="/usr/bin/python3") == (
        "/usr/bin/python3", "default: the Python running this benchmark, as there is no .venv-mmcv-compiled/ "
                            "in the repository")
    compiled = repo / ".venv-mmcv-compiled" / "bin" / "python"
    compiled.parent.mkdir(parents=True)
    compiled.symlink_to(sys.executable)  # as in a venv: not resolved to the base interpreter
    assert train_speed.choose_mmdet_python(None, repo, fallback="/usr/bin/python3") == (
        str(compiled), "default: .venv-mmcv-compiled/bin/python in the repository (compiled mmcv)")
    os.chdir(repo)
    assert train_speed.choose_mmdet_python(Path("other/bin/python"), repo) == (
        os.path.join(os.getcwd(), "other", "bin", "python"), "--mmdet-python")


@pytest.mark.parametrize("facts, label", [
    (dict(tool="pisa-train", device="cpu", compiled_mmcv_devices=[], ops_backend="torchvision"),
     "torchvision/torch (pisa-train, mmcv-lite)"),
    (dict(tool="pisa-train", device="cpu", compiled_mmcv_devices=["cpu"], ops_backend="mmcv"), "compiled mmcv (CPU)"),
    (dict(tool="pisa-train", device="cuda", compiled_mmcv_devices=["cpu"], ops_backend="torchvision"),
     "torchvision RoIAlign and NMS, compiled mmcv (CPU) otherwise"),
    (dict(tool="mmdet", device="cpu", compiled_mmcv_devices=["cpu"]), "compiled mmcv (CPU)"),
    (dict(tool="mmdet", device="cuda", compiled_mmcv_devices=["cpu", "cuda"]), "compiled mmcv (CPU, CUDA)"),
    (dict(tool="mmdet", device="cuda", compiled_mmcv_devices=["cpu"]), "compiled mmcv (CPU): no CUDA kernels"),
    (dict(tool="mmdet", device="cpu", compiled_mmcv_devices=[]), "none (mmcv-lite)"),
    (dict(executable="/nowhere/python", error="cannot run /nowhere/python"), "unknown"),
])
def test_the_kernels_each_command_uses_in_words(facts, label):
    assert train_speed.kernels_label(facts) == label


def test_versions_that_differ_between_the_two_pythons_are_named():
    same = dict(python="3.11.7", torch="2.14.1", torchvision="0.29.1", mmdet="3.3.0", mmengine="0.10.7")
    pythons = {"pisa-train": dict(same, mmcv=None, **{"mmcv-lite": "2.1.0"}),
               "mmdet": dict(same, mmcv="2.1.0", **{"mmcv-lite": None})}
    assert train_speed.version_differences(pythons) == {}  # mmcv-lite 2.1.0 and mmcv 2.1.0: the same code
    pythons["mmdet"].update(torch="2.5.1", mmcv="2.2.0")
    assert train_speed.version_differences(pythons) == {"torch": {"pisa-train": "2.14.1", "mmdet": "2.5.1"},
                                                        "mmcv": {"pisa-train": "2.1.0", "mmdet": "2.2.0"}}
    assert train_speed.version_differences({"pisa-train": pythons["pisa-train"], "mmdet": dict(error="x")}) == {}


def _pythons_here():
    """The Pythons a benchmark can be given here: this one, and the compiled-mmcv venv when it exists."""
    compiled = [str(COMPILED_MMCV_PYTHON)] if COMPILED_MMCV_PYTHON.exists() else []
    return list(dict.fromkeys([sys.executable, *compiled]))


def _fresh(python, code):
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    return result.returncode, (result.stdout + result.stderr).strip()


@pytest.mark.parametrize("python", _pythons_here())
def test_each_python_says_which_kernels_its_command_will_use(python):
    """Checked against what a fresh process of that Python does: mmdet's script imports mmcv.ops without
    pisa_train, so it runs only where that import works; pisa-train's kernels are the ones its own
    mmcv_ext_is_compiled() finds after `import pisa_train`."""
    mmdet = train_speed.ask_python(python, "mmdet", "cpu")
    pisa = train_speed.ask_python(python, "pisa-train", "cpu")
    assert "error" not in mmdet and "error" not in pisa, (mmdet, pisa)
    assert mmdet["executable"] == pisa["executable"] == python  # the venv's python, not the base interpreter
    assert mmdet["imported_pisa_train"] is False
    assert mmdet["train_script"] and mmdet["train_script"].endswith("mmdet/.mim/tools/train.py")
    imports_mmcv_ops, output = _fresh(python, "import mmcv.ops")
    assert bool(mmdet["compiled_mmcv_devices"]) == (imports_mmcv_ops == 0), output
    if imports_mmcv_ops:
        assert "mmcv._ext" in output and train_speed.kernels_label(mmdet) == "none (mmcv-lite)"
    else:
        assert train_speed.kernels_label(mmdet).startswith("compiled mmcv (CPU")
    code, compiled = _fresh(python, "import pisa_train; from pisa_train.engine.patches.mmcv_ext_from_torchvision "
                                    "import mmcv_ext_is_compiled; print(mmcv_ext_is_compiled())")
    assert code == 0 and compiled in ("True", "False"), compiled
    assert (compiled == "True") == bool(mmdet["compiled_mmcv_devices"])  # one mmcv, however asked
    assert pisa["ops_backend"] == ("mmcv" if compiled == "True" else "torchvision")
    assert train_speed.kernels_label(pisa) == ("compiled mmcv (CPU)" if compiled == "True"
                                                else "torchvision/torch (pisa-train, mmcv-lite)")


def test_an_mmdet_python_that_does_not_exist_is_refused_before_anything_runs(tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARK), "--mmdet-python", str(tmp_path / "no" / "python"),
                             "--out-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"--mmdet-python {tmp_path / 'no' / 'python'}: no such executable; give the path of a Python with mmdet "
        f"and compiled mmcv, such as .venv-mmcv-compiled/bin/python")
    assert not (tmp_path / "runs").exists()


def test_pip_installed_mmdet_ships_its_train_script():
    """The benchmark runs it; mim installs it inside the package, as mmdet's setup.py adds it."""
    script = train_speed.mmdet_train_script()
    assert script is not None and script.name == "train.py" and script.parent.name == "tools"
    assert "runner.train()" in script.read_text()


@pytest.mark.slow
def test_the_benchmark_times_pisa_train_and_mmdet_on_the_cpu(tmp_path):
    """X101 at 160x96, batch 1, one warm-up and two timed iterations per command: 2 to 7 s an
    iteration on 2 CPU cores, plus each process's start (1 to 3 minutes in all). mmdet's command
    runs with the default --mmdet-python: .venv-mmcv-compiled's when it exists; else this Python,
    where mmdet's script runs only if its mmcv is compiled, and otherwise must fail saying so."""
    out = tmp_path / "record.json"
    result = subprocess.run([sys.executable, str(BENCHMARK), "--size", "160", "96", "--batch", "1", "--warmup", "1",
                             "--iters", "2", "--workers", "0", "--out-dir", str(tmp_path / "runs"),
                             "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert out.is_file(), (result.stdout + result.stderr)[-5000:]
    record = json.loads(out.read_text())
    assert record["machine"] and record["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert (record["image_size"], record["batch"], record["timed_iterations"]) == ([160, 96], 1, 2)
    pythons = record["pythons"]
    assert pythons["pisa-train"]["executable"] == sys.executable
    assert record["version_differences"] == {}  # the two Pythons differ in mmcv's kernels only
    if COMPILED_MMCV_PYTHON.exists():
        assert record["mmdet_python"] == pythons["mmdet"]["executable"] == str(COMPILED_MMCV_PYTHON)
        assert record["mmdet_python_chosen_by"].startswith("default: .venv-mmcv-compiled/bin/python")
        assert pythons["mmdet"]["compiled_mmcv_devices"], pythons["mmdet"]  # the venv it is named after
    else:
        assert record["mmdet_python"] == pythons["mmdet"]["executable"] == sys.executable
        assert record["mmdet_python_chosen_by"].startswith("default: the Python running this benchmark")
    [run] = record["runs"]
    assert run["mode"] == "fp32"
    for tool in ("pisa-train", "mmdet"):
        assert run[tool]["python"] == pythons[tool]["executable"]
        assert run[tool]["kernels"] == pythons[tool]["kernels"] == train_speed.kernels_label(pythons[tool])
    # What pisa-train's log says it ran on is what its Python said it would.
    assert run["pisa-train"]["logged_ops_backend"] == pythons["pisa-train"]["ops_backend"]
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {record['machine']} |")]
    assert [row.split(" | ")[1:4] for row in rows] == [["pisa-train", run["pisa-train"]["kernels"], "fp32"],
                                                       ["mmdet", run["mmdet"]["kernels"], "fp32"]]
    assert json.loads(result.stdout[:result.stdout.rindex("}") + 1]) == record  # the same record on stdout
    timed = ["pisa-train"]
    if pythons["mmdet"]["compiled_mmcv_devices"]:
        assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
        timed.append("mmdet")
    else:  # mmcv-lite and no compiled venv: mmdet's script cannot import mmcv.ops, and the record says why
        assert result.returncode == 1
        assert run["mmdet"]["exit_code"] != 0 and "mmcv._ext" in run["mmdet"]["error"], run["mmdet"]
        assert "needs mmcv compiled with CPU ops: create .venv-mmcv-compiled/ with `python3 tools/setup_env.py " \
               "--mmcv compiled --venv .venv-mmcv-compiled`" in run["mmdet"]["error"]
        assert run["ratio_s_per_iter"] is None and "| failed: exit code" in rows[1]
    for tool in timed:
        figures = run[tool]
        assert figures["exit_code"] == 0 and figures["iterations"] == 2, (tool, figures)
        for key in ("s_per_iter", "data_s_per_iter", "images_per_s", "peak_memory_mib"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (tool, key, figures[key])
        assert figures["images_per_s"] == pytest.approx(1 / figures["s_per_iter"], rel=1e-2)
        assert figures["peak_memory_mib"] > 500  # an X101 training process, not the benchmark's own
    if timed == ["pisa-train", "mmdet"]:
        # The same computation, compiled mmcv or pisa-train's torchvision/torch kernels: same seed and config,
        # and on the CPU those kernels give mmcv's results.
        if not torch.cuda.is_available():
            assert run["pisa-train"]["losses"] == run["mmdet"]["losses"]
        assert run["ratio_s_per_iter"] == pytest.approx(
            run["pisa-train"]["s_per_iter"] / run["mmdet"]["s_per_iter"], rel=1e-2)
        assert rows[1].endswith("| 1 (reference) | n/a |")  # no MFU without a GPU
