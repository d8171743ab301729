"""tools/gpu_check: what can be checked without a GPU. The plan it would run, its refusal on a machine
without one, how a step's process is run and judged, the report's format, and the benchmark's FLOPs
count and model FLOPs utilisation. No GPU result is made up here: the report test renders a record
built in the test, and says so in its machine name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, X101_PISA_CONFIG

GPU_CHECK = REPO_ROOT / "tools" / "gpu_check.py"
sys.path.insert(0, str(REPO_ROOT / "tools"))
import gpu_check  # noqa: E402

train_speed = gpu_check.train_speed_module()


def test_the_plan_runs_every_check_in_order_within_the_budget(tmp_path):
    steps = gpu_check.plan(tmp_path, "/venv/bin/python", offline=tmp_path / "house")
    assert [step.name for step in steps] == ["gpu-kernels", "cpu-mmcv-venv", "ops-backend-auto", "generate-data",
                                             "amp-float16", "amp-bfloat16", "nccl", "pisa-eval", "train-speed"]
    by_name = {step.name: step for step in steps}
    assert by_name["gpu-kernels"].command[-1] == "tests/test_gpu_kernels.py"
    assert by_name["cpu-mmcv-venv"].command[1:] == ["tools/setup_env.py", "--venv", str(gpu_check.CPU_MMCV_VENV),
                                                     "--use-system-torch", "--offline", str(tmp_path / "house")]
    assert by_name["cpu-mmcv-venv"].env == {"PISA_MMCV_CUDA": "0"}
    auto = by_name["ops-backend-auto"].command
    assert auto[0] == str(gpu_check.CPU_MMCV_VENV / "bin" / "python")
    assert auto[auto.index("--ops-backend") + 1] == "auto" and auto[auto.index("--device") + 1] == "cuda"
    for name, extra in (("amp-float16", ["--amp"]), ("amp-bfloat16", ["--amp", "--amp-dtype", "bfloat16"]),
                        ("nccl", ["--nproc", "1"])):
        command = by_name[name].command
        assert command[:3] == ["/venv/bin/python", "-m", "pisa_train.cli.train"]
        assert command[3] == "configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"
        assert command[command.index("--max-iters") + 1] == "2"
        assert command[command.index("--data") + 1] == str(tmp_path / "data")
        assert all(flag in command for flag in extra), (name, command)
        assert ("--amp" in command) == name.startswith("amp")
    evaluate = by_name["pisa-eval"].command
    assert evaluate[1:3] == ["-m", "pisa_train.cli.evaluate"]
    assert evaluate[4] == str(tmp_path / "runs" / "amp-float16" / "iter_2.pth") and "--amp" in evaluate
    speed = by_name["train-speed"].command
    assert speed[1] == "benchmarks/train_speed.py" and speed[speed.index("--mode") + 1] == "all"
    assert "--flops" in speed
    assert sum(step.estimate_min for step in steps) < gpu_check.BUDGET_MINUTES
    # Without a wheelhouse the CPU-only mmcv venv comes from the index.
    assert "--offline" not in gpu_check.plan(tmp_path, "/venv/bin/python", offline=None)[1].command


def test_the_generated_data_is_at_the_x101_training_size_with_a_val_split(tmp_path):
    gpu_check.generate_data(tmp_path / "data")
    train = json.loads((tmp_path / "data" / "annotations" / "train.json").read_text())
    assert len(train["images"]) == gpu_check.DATA_IMAGES
    assert {(image["width"], image["height"]) for image in train["images"]} == {(1333, 800)}
    assert json.loads((tmp_path / "data" / "annotations" / "val.json").read_text()) == train


def test_plan_prints_the_steps_and_runs_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--plan", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpu-kernels (about 1 min, at most 10 min): mmcv's CUDA RoIAlign")
    assert lines[-1] == (f"about 18.3 min in all on one H100-class GPU with 16 cores (budget 25 min); report: "
                         f"{tmp_path / 'out'}/gpu_check.md and gpu_check.json")
    assert not (tmp_path / "out").exists()
    only = subprocess.run([sys.executable, str(GPU_CHECK), "--plan", "--only", "nccl", "--only", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert only.returncode == 2
    assert only.stderr.splitlines()[-1] == (
        "tools/gpu_check.sh: error: --only nope: no such step; the steps are gpu-kernels, cpu-mmcv-venv, "
        "ops-backend-auto, generate-data, amp-float16, amp-bfloat16, nccl, pisa-eval, train-speed")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_without_a_gpu_it_refuses_in_one_line_and_writes_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(GPU_CHECK), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == (
        "gpu_check: error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False), and these checks "
        "only mean something on one; run it on the GPU machine, or see what it would run with "
        "tools/gpu_check.sh --plan\n")
    assert not (tmp_path / "out").exists()


def test_a_step_runs_in_its_own_process_and_is_judged_by_exit_code_and_output(tmp_path):
    python = sys.executable
    steps = [gpu_check.Step("ok", "passes", [python, "-c", "print('3 passed in 1.0s')"], 0.1, 60,
                            expect_in_log=r"\d+ passed(?!.*skipped)"),
             gpu_check.Step("skipped", "all skipped", [python, "-c", "print('2 passed, 3 skipped in 1.0s')"], 0.1, 60,
                            expect_in_log=r"\d+ passed(?!.*skipped)"),
             gpu_check.Step("crash", "exits 3", [python, "-c", "print('starting'); raise SystemExit('boom')"], 0.1, 60),
             gpu_check.Step("slow", "too slow", [python, "-c", "import time; time.sleep(30)"], 0.1, 1),
             gpu_check.Step("env", "sees its env", [python, "-c", "import os; print(os.environ['STEP_VAR'])"], 0.1, 60,
                            env={"STEP_VAR": "seen"}, expect_in_log="^seen$")]
    results = {step.name: gpu_check.run_step(step, tmp_path) for step in steps}
    assert (results["ok"]["status"], results["ok"]["detail"], results["ok"]["exit_code"]) == \
        ("passed", "3 passed in 1.0s", 0)
    assert results["skipped"]["status"] == "failed"
    assert results["skipped"]["detail"] == r"exit code 0, but its output lacks /\d+ passed(?!.*skipped)/"
    assert (results["crash"]["status"], results["crash"]["detail"]) == ("failed", "exit code 1: boom")
    assert (results["slow"]["status"], results["slow"]["detail"]) == ("failed", "stopped after its 1 s limit")
    assert results["env"]["status"] == "passed"
    assert (tmp_path / "crash.log").read_text() == "starting\nboom\n"


def test_the_report_format(tmp_path):
    """A record built here (not measured: the machine says so) rendered as gpu_check.md renders it."""
    speed = dict(machine="TEST RECORD, NOT A MEASUREMENT", image_size=[1333, 800], batch=2,
                 flops=dict(forward_flops_per_image=5.0e11, image_size=[1333, 800], rois_per_image=512,
                            counted_by="mmengine.analysis.get_model_complexity_info (x2)"),
                 runs=[dict(mode="bf16", ratio_s_per_iter=1.02,
                            **{"pisa-train": dict(s_per_iter=0.51, data_s_per_iter=0.01, images_per_s=3.922,
                                                  peak_memory_mib=9000.0,
                                                  peak_memory_kind="torch.cuda.max_memory_allocated"),
                               "mmdet": dict(s_per_iter=0.5, data_s_per_iter=0.01, images_per_s=4.0,
                                             peak_memory_mib=9100.0,
                                             peak_memory_kind="torch.cuda.max_memory_allocated")})])
    train_speed.add_utilisation(speed, "NVIDIA H100 80GB HBM3")
    report = dict(machine="TEST RECORD, NOT A MEASUREMENT", versions="Python 3.11.7, torch 2.14.1 (CUDA 13.0)",
                  started_at="2026-01-01 00:00:00 UTC", total_minutes=17.25,
                  mmcv_build=dict(minutes=9.44, with_cuda=True, arch_list="9.0", max_jobs=16),
                  steps=[dict(name="gpu-kernels", checks="kernels", status="passed", detail="5 passed in 3.1s",
                              minutes=0.52),
                         dict(name="nccl", checks="nccl", status="failed", detail="exit code 1: a | b", minutes=1.0)],
                  train_speed=speed)
    assert gpu_check.render_markdown(report) == [
        "# pisa-train GPU check", "",
        "Machine: TEST RECORD, NOT A MEASUREMENT; Python 3.11.7, torch 2.14.1 (CUDA 13.0); 2026-01-01 00:00:00 UTC; "
        "17.2 min in all.", "",
        "mmcv build (CPU and CUDA ops, TORCH_CUDA_ARCH_LIST=9.0, 16 jobs): 9.4 min", "",
        "1 of 2 steps passed.", "",
        "| step | what it checks | result | minutes |", "| --- | --- | --- | --- |",
        "| gpu-kernels | kernels | passed: 5 passed in 3.1s | 0.5 |",
        "| nccl | nccl | failed: exit code 1: a \\| b | 1.0 |", "",
        "## Training speed: pisa-train against mmdet's tools/train.py", "",
        "| machine | command | mode | image | batch | s/iter | data s/iter | images/s | peak memory (MiB) "
        "| s/iter vs mmdet | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        "| TEST RECORD, NOT A MEASUREMENT | pisa-train | bf16 | 1333x800 | 2 | 0.510 | 0.010 | 3.922 | 9000 "
        "(torch.cuda.max_memory_allocated) | 1.020 | 0.6% of 989.5 bf16 TFLOPS (H100 SXM) |",
        "| TEST RECORD, NOT A MEASUREMENT | mmdet | bf16 | 1333x800 | 2 | 0.500 | 0.010 | 4.000 | 9100 "
        "(torch.cuda.max_memory_allocated) | 1 (reference) | 0.6% of 989.5 bf16 TFLOPS (H100 SXM) |", "",
        "Model FLOPs per training image: 500.0 GFLOPs forward at 1333x800 with 512 RoIs "
        "(mmengine.analysis.get_model_complexity_info (x2)), x3 for training; MFU = that x images/s over the peak "
        "dense rate of the mode's precision (benchmarks/train_speed.py, PEAK_DENSE_TFLOPS).", ""]
    assert speed["runs"][0]["mmdet"]["mfu"] == pytest.approx(3 * 5.0e11 * 4.0 / 989.5e12, abs=1e-4)
    report.update(mmcv_build=None, train_speed=None)
    assert gpu_check.render_markdown(report)[4] == (
        "mmcv build: not recorded (its wheel was built before the set-up recorded build times)")


def test_mmcv_build_time_is_read_from_what_the_set_up_recorded_beside_the_wheel(tmp_path):
    wheel_dir = tmp_path / "cache" / "mmcv-2.1.0_torch-2.14.1_cu130-sm90_cp311_x86_64"
    wheel_dir.mkdir(parents=True)
    (wheel_dir / "build.json").write_text(json.dumps(dict(minutes=9.4, with_cuda=True, arch_list="9.0",
                                                          max_jobs=16)))
    venv = tmp_path / "venv"
    venv.mkdir()
    assert gpu_check.mmcv_build_record(venv) is None
    (venv / ".pisa-train-setup.json").write_text(json.dumps(dict(mmcv_wheel=str(wheel_dir / "mmcv-2.1.0.whl"))))
    assert gpu_check.mmcv_build_record(venv)["minutes"] == 9.4


@pytest.mark.parametrize("name, mode, expected", [
    ("NVIDIA H100 80GB HBM3", "bf16", (989.5, "H100 SXM")),
    ("NVIDIA H100 80GB HBM3", "fp32", (494.5, "H100 SXM")),
    ("NVIDIA H100 PCIe", "amp", (756.0, "H100 PCIe")),
    ("NVIDIA H100 NVL", "bf16", (835.5, "H100 NVL")),
    ("NVIDIA H200", "bf16", (989.5, "H200 SXM")),
    ("NVIDIA A100-SXM4-80GB", "amp", (312.0, "A100")),
    ("NVIDIA A10", "fp32", (62.5, "A10")),
    ("NVIDIA L40S", "bf16", (362.05, "L40S")),
    ("NVIDIA L4", "bf16", (121.0, "L4")),
])
def test_peak_dense_rates_by_gpu_name_and_precision(name, mode, expected):
    assert train_speed.peak_dense_tflops(name, mode)[:2] == expected


def test_an_unlisted_gpu_has_no_mfu_rather_than_a_wrong_one():
    assert train_speed.peak_dense_tflops("Tesla T4", "amp") is None
    assert train_speed.peak_dense_tflops(None, "fp32") is None
    record = dict(flops=dict(forward_flops_per_image=1e11), runs=[dict(mode="amp", **{
        "pisa-train": dict(images_per_s=10.0), "mmdet": dict(error="boom")})])
    train_speed.add_utilisation(record, "Tesla T4")
    assert "mfu" not in record["runs"][0]["pisa-train"]
    train_speed.add_utilisation(record, "NVIDIA A100 80GB PCIe")
    assert record["runs"][0]["pisa-train"]["mfu"] == pytest.approx(3 * 1e11 * 10 / 312e12, abs=1e-4)
    assert "mfu" not in record["runs"][0]["mmdet"]


def test_the_x101_training_flops_are_counted_the_same_each_time_and_grow_with_the_image():
    """Real counts on the CPU at small sizes (the GPU run counts at 1333x800)."""
    small = train_speed.training_forward_flops(X101_PISA_CONFIG, 160, 96)
    again = train_speed.training_forward_flops(X101_PISA_CONFIG, 160, 96)
    larger = train_speed.training_forward_flops(X101_PISA_CONFIG, 320, 192)
    assert small == again  # fixed RoIs: no dependence on what an untrained RPN proposes
    assert small["rois_per_image"] == 512
    # 4x the pixels: the backbone, neck and RPN cost about 4x, the RoI head's 512 RoIs the same.
    assert 1.5 * small["forward_flops_per_image"] < larger["forward_flops_per_image"] \
        < 4 * small["forward_flops_per_image"]


@pytest.mark.slow
def test_the_cpu_only_mmcv_venv_sees_this_environment_but_has_its_own_mmcv(tmp_path):
    """gpu_check's cpu-mmcv-venv step, as it runs on the GPU machine, here on the CPU: a venv made by this
    environment's Python with --use-system-torch sees this environment's packages (torch, mmdet) and gets
    the CPU-only mmcv wheel in front of the one it sees. About a minute with the cached mmcv wheel."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import setup_env

    torch_info = {"torch": torch.__version__.split("+")[0], "cuda": None, "gpu": False, "capabilities": [],
                  "python": "cp%d%d" % sys.version_info[:2]}
    if setup_env.cached_wheel(setup_env.mmcv_build_plan(torch_info)) is None:
        pytest.skip("no cached CPU-only mmcv wheel for this torch: the step would build mmcv (5 to 25 minutes)")
    step = next(step for step in gpu_check.plan(tmp_path, sys.executable, None) if step.name == "cpu-mmcv-venv")
    venv = tmp_path / "cpu-mmcv"
    command = [venv if part == str(gpu_check.CPU_MMCV_VENV) else part for part in step.command]
    result = subprocess.run(list(map(str, command)), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                            env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **step.env})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    where = json.loads(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import json, mmcv, mmdet, torch; print(json.dumps({m.__name__: "
         "m.__file__ for m in (mmcv, mmdet, torch)}))"], cwd=tmp_path, capture_output=True, text=True,
        check=True).stdout)
    assert where["mmcv"].startswith(str(venv))
    here = Path(torch.__file__).parents[1]
    assert where["torch"].startswith(str(here)) and where["mmdet"].startswith(str(here))
