"""tools/gpu_check: what can be checked without a GPU. The plan it would run (and that it compiles
nothing), the optional compiled-mmcv steps, its refusals, how a step's process is run and judged, the
report's format, and the benchmark's FLOPs count and model FLOPs utilisation. No GPU result is made up
here: the report test renders a record built in the test, and says so in its machine name."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import gpu_check  # tools/, on sys.path for the tests (pyproject.toml's pytest pythonpath)
import pytest
import torch
from conftest import REPO_ROOT, X101_PISA_CONFIG
from pisa_setup import compiled_mmcv
from pisa_setup.pins import read_pins

from pisa_train.engine import device
from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled

GPU_CHECK = REPO_ROOT / "tools" / "gpu_check.py"

train_speed = gpu_check.train_speed_module()
DEFAULT_STEPS = ["gpu-kernels", "generate-data", "amp-float16", "amp-bfloat16", "nccl", "pisa-eval", "train-speed"]
WHEEL_NAME = "mmcv-2.1.0-cp312-cp312-linux_x86_64.whl"


def run_gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GPU_CHECK), *args], capture_output=True, text=True, timeout=120)


def test_the_plan_runs_every_check_in_order_within_the_budget_and_compiles_nothing(tmp_path):
    steps = gpu_check.plan(tmp_path, "/venv/bin/python")
    assert [step.name for step in steps] == DEFAULT_STEPS
    assert not any(step.optional for step in steps)
    # Nothing builds: no set-up, no mmcv build switches, every step on .venv's Python.
    for step in steps:
        assert step.command[0] == "/venv/bin/python" and "tools/setup_env.py" not in step.command, step.name
        assert not {"PISA_MMCV_CUDA", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS"} & set(step.env), step.name
    by_name = {step.name: step for step in steps}
    assert by_name["gpu-kernels"].command[-3:] == ["-k", "not compiled_mmcv", "tests/test_gpu_kernels.py"]
    assert by_name["gpu-kernels"].expect_in_log == r"\d+ passed(?!.*skipped)"
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
    assert "--flops" in speed and "--mmdet-python" not in speed
    assert (speed[speed.index("--warmup") + 1], speed[speed.index("--iters") + 1]) == ("2", "10")
    assert speed[speed.index("--json") + 1] == str(tmp_path / "train_speed.json")
    assert by_name["train-speed"].judge is not None
    assert gpu_check.BUDGET_MINUTES <= 8
    assert sum(step.estimate_min for step in steps) <= gpu_check.BUDGET_MINUTES
    for step in steps:  # a hang costs minutes, not the lease: each step's limit is a few times its estimate
        assert 2 * step.estimate_min * 60 <= step.timeout_s <= 10 * 60, step.name


def test_with_a_compiled_mmcv_wheel_the_plan_adds_its_two_steps_and_mmdets_side_of_the_benchmark(tmp_path):
    wheel = tmp_path / WHEEL_NAME
    default = {step.name: step for step in gpu_check.plan(tmp_path, "/venv/bin/python")}
    steps = gpu_check.plan(tmp_path, "/venv/bin/python", wheel)
    assert [step.name for step in steps] == ["gpu-kernels", "compiled-mmcv-venv", "compiled-mmcv-kernels",
                                             *DEFAULT_STEPS[1:]]
    by_name = {step.name: step for step in steps}
    assert {step.name for step in steps if step.optional} == {"compiled-mmcv-venv", "compiled-mmcv-kernels"}
    venv = tmp_path / "venv-mmcv-compiled"
    assert by_name["compiled-mmcv-venv"].command == ["/venv/bin/python", str(GPU_CHECK), "--compiled-mmcv-venv",
                                                     str(wheel), str(venv)]
    kernels = by_name["compiled-mmcv-kernels"].command
    assert kernels[0] == str(venv / "bin" / "python") and kernels[-1] == "tests/test_gpu_kernels.py"
    assert "-k" not in kernels  # every test, compiled mmcv's included; a skipped one fails the step
    assert by_name["compiled-mmcv-kernels"].expect_in_log == r"\d+ passed(?!.*skipped)"
    speed = by_name["train-speed"]
    assert speed.command == [*default["train-speed"].command, "--mmdet-python", str(venv / "bin" / "python")]
    assert speed.judge is None and speed.estimate_min > default["train-speed"].estimate_min
    for name in DEFAULT_STEPS[:-1]:
        assert by_name[name].command == default[name].command, name


def test_the_default_kernel_step_leaves_out_exactly_the_tests_that_need_compiled_mmcv(tmp_path):
    """Collected as the gpu-kernels step runs them: every test deselected by its -k is one that would be
    skipped without compiled mmcv, and every other test runs (a skipped one would fail the step on the GPU)."""
    (tmp_path / "record_marks.py").write_text(
        "import json, os\n"
        "import pytest\n"
        "seen = {}\n"
        "@pytest.hookimpl(tryfirst=True)\n"  # before -k deselects
        "def pytest_collection_modifyitems(items):\n"
        "    for item in items:\n"
        "        seen[item.name] = any(mark.kwargs.get('reason') == item.module.NO_COMPILED_CUDA\n"
        "                              for mark in item.iter_markers('skipif'))\n"
        "def pytest_deselected(items):\n"
        "    for item in items:\n"
        "        seen[item.name] = ('deselected', seen[item.name])\n"
        "def pytest_collection_finish(session):\n"
        "    open(os.environ['MARKS_OUT'], 'w').write(json.dumps(seen))\n")
    step = next(step for step in gpu_check.plan(tmp_path, sys.executable) if step.name == "gpu-kernels")
    command = [*step.command[:-1], "--collect-only", "-p", "record_marks", step.command[-1]]
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MARKS_OUT": str(tmp_path / "marks.json")}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads((tmp_path / "marks.json").read_text())
    left_out = {name for name, state in seen.items() if isinstance(state, list)}
    kept = set(seen) - left_out
    assert all(seen[name][1] for name in left_out), "a test left out that runs without compiled mmcv"
    assert not any(seen[name] for name in kept), "a test that needs compiled mmcv is not left out: it would skip"
    assert len(left_out) >= 5 and len(kept) >= 10
    assert "test_compiled_mmcv_cuda_kernels_give_what_pisa_trains_give" in left_out


def test_the_generated_data_is_at_the_x101_training_size_with_a_val_split(tmp_path):
    gpu_check.generate_data(tmp_path / "data")
    train = json.loads((tmp_path / "data" / "annotations" / "train.json").read_text())
    assert len(train["images"]) == gpu_check.DATA_IMAGES
    assert {(image["width"], image["height"]) for image in train["images"]} == {(1333, 800)}
    assert json.loads((tmp_path / "data" / "annotations" / "val.json").read_text()) == train


def test_plan_prints_the_steps_and_their_total_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    result = run_gpu_check("--plan", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("gpu-kernels (about 0.5 min, at most 2 min): mmcv.ops on CUDA with pisa-train's kernels "
                        "(torchvision and torch): RoIAlign forward and backward, NMS, batched_nms and the sigmoid "
                        "focal loss against torchvision's ops, mmdet's Python focal loss and the CPU")
    assert lines[1] == (f"    {sys.executable} -m pytest -q -rA -p no:cacheprovider -k 'not compiled_mmcv' "
                        f"tests/test_gpu_kernels.py")
    assert [line.split(" ", 1)[0] for line in lines[0:-1:2]] == DEFAULT_STEPS
    assert lines[-1] == (f"about 6.1 min in all on one H100-class GPU with 16 cores (budget 8 min); report: "
                         f"{out}/gpu_check.md and gpu_check.json")
    assert sum(step.estimate_min for step in gpu_check.plan(out, sys.executable)) == pytest.approx(6.1)
    assert "compiled-mmcv-" not in result.stdout and "venv-mmcv-compiled" not in result.stdout
    assert "setup_env" not in result.stdout
    assert not out.exists()


def test_plan_shows_the_compiled_mmcv_steps_only_when_asked_with_their_own_estimate(tmp_path):
    out, wheel = tmp_path / "out", tmp_path / WHEEL_NAME
    wheel.write_bytes(b"")
    result = run_gpu_check("--plan", "--out", str(out), "--with-compiled-mmcv", str(wheel))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2] == ("compiled-mmcv-venv (--with-compiled-mmcv; about 0.3 min, at most 3 min): a venv seeing "
                        f".venv's packages, with compiled mmcv from {WHEEL_NAME} in front of mmcv-lite (pip "
                        "--no-deps, nothing compiled)")
    venv_command = [sys.executable, str(GPU_CHECK), "--compiled-mmcv-venv", str(wheel), str(out / "venv-mmcv-compiled")]
    assert lines[3] == f"    {shlex.join(venv_command)}"
    assert lines[4].startswith("compiled-mmcv-kernels (--with-compiled-mmcv; about 0.5 min, at most 2 min): ")
    assert lines[-1] == (f"about 6.1 min in all on one H100-class GPU with 16 cores (budget 8 min), and about 1.8 min "
                         f"more for --with-compiled-mmcv (its steps, and mmdet's side of train-speed); report: "
                         f"{out}/gpu_check.md and gpu_check.json")
    with_wheel = sum(step.estimate_min for step in gpu_check.plan(out, sys.executable, wheel))
    assert with_wheel - sum(step.estimate_min for step in gpu_check.plan(out, sys.executable)) == pytest.approx(1.8)
    only = run_gpu_check("--plan", "--only", "compiled-mmcv-kernels", "--with-compiled-mmcv", str(wheel))
    assert only.returncode == 0, only.stderr
    assert only.stdout.splitlines()[-1].startswith(
        "about 0.0 min in all on one H100-class GPU with 16 cores (budget 8 min), and about 0.5 min more for ")
    assert not out.exists()


def test_refusals_are_one_line_each(tmp_path):
    lite = tmp_path / "mmcv_lite-2.1.0-py2.py3-none-any.whl"
    lite.write_bytes(b"")
    how = ("build it ahead of time with TORCH_CUDA_ARCH_LIST=9.0 PISA_MMCV_CUDA=1 tools/setup_env.py --mmcv "
           "compiled, for the GPU machine's torch and Python")
    cases = {
        ("--plan", "--only", "nccl", "--only", "nope"):
            "--only nope: no such step; the steps are gpu-kernels, generate-data, amp-float16, amp-bfloat16, nccl, "
            "pisa-eval, train-speed",
        ("--plan", "--only", "compiled-mmcv-kernels"):
            "--only compiled-mmcv-kernels: a step of --with-compiled-mmcv WHEEL; add that option",
        ("--plan", "--with-compiled-mmcv", str(tmp_path / WHEEL_NAME)):
            f"--with-compiled-mmcv {tmp_path / WHEEL_NAME}: no such file; {how}, and copy its mmcv-*.whl here",
        ("--plan", "--with-compiled-mmcv", str(lite)):
            f"--with-compiled-mmcv {lite}: not a wheel of compiled mmcv (mmcv-VERSION-...whl); {how}",
    }
    for args, message in cases.items():
        result = run_gpu_check(*args)
        assert (result.returncode, result.stdout) == (2, ""), args
        assert result.stderr.splitlines()[-1] == f"tools/gpu_check.sh: error: {message}"


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

    def accept_exit_1(code, output):
        return ("passed", f"accepted: {output.strip()}") if code == 1 else None

    steps = [gpu_check.Step("ok", "passes", [python, "-c", "print('3 passed in 1.0s')"], 0.1, 60,
                            expect_in_log=r"\d+ passed(?!.*skipped)"),
             gpu_check.Step("skipped", "all skipped", [python, "-c", "print('2 passed, 3 skipped in 1.0s')"], 0.1, 60,
                            expect_in_log=r"\d+ passed(?!.*skipped)"),
             gpu_check.Step("deselected", "some left out", [python, "-c", "print('12 passed, 12 deselected in 4s')"],
                            0.1, 60, expect_in_log=r"\d+ passed(?!.*skipped)"),
             gpu_check.Step("crash", "exits 3", [python, "-c", "print('starting'); raise SystemExit('boom')"], 0.1, 60),
             gpu_check.Step("slow", "too slow", [python, "-c", "import time; time.sleep(30)"], 0.1, 1),
             gpu_check.Step("env", "sees its env", [python, "-c", "import os; print(os.environ['STEP_VAR'])"], 0.1, 60,
                            env={"STEP_VAR": "seen"}, expect_in_log="^seen$"),
             gpu_check.Step("judged", "exit 1 accepted", [python, "-c", "print('mmdet failed'); raise SystemExit(1)"],
                            0.1, 60, judge=accept_exit_1),
             gpu_check.Step("judged-crash", "exit 2 not", [python, "-c", "raise SystemExit(2)"], 0.1, 60,
                            judge=accept_exit_1)]
    results = {step.name: gpu_check.run_step(step, tmp_path) for step in steps}
    assert (results["ok"]["status"], results["ok"]["detail"], results["ok"]["exit_code"]) == \
        ("passed", "3 passed in 1.0s", 0)
    assert results["skipped"]["status"] == "failed"
    assert results["skipped"]["detail"] == r"exit code 0, but its output lacks /\d+ passed(?!.*skipped)/"
    assert results["deselected"]["status"] == "passed"
    assert (results["crash"]["status"], results["crash"]["detail"]) == ("failed", "exit code 1: boom")
    assert (results["slow"]["status"], results["slow"]["detail"]) == ("failed", "stopped after its 1 s limit")
    assert results["env"]["status"] == "passed"
    assert (results["judged"]["status"], results["judged"]["detail"]) == ("passed", "accepted: mmdet failed")
    assert (results["judged-crash"]["status"], results["judged-crash"]["detail"]) == \
        ("failed", "exit code 2: no output")
    assert (tmp_path / "crash.log").read_text() == "starting\nboom\n"


def test_without_compiled_mmcv_the_benchmark_passes_when_every_pisa_train_run_was_timed(tmp_path):
    """train_speed.py exits 1 when mmdet's tools/train.py fails, as it must on mmcv-lite: the step judges
    by the record it wrote."""
    record = tmp_path / "train_speed.json"
    step = next(step for step in gpu_check.plan(tmp_path, sys.executable) if step.name == "train-speed")
    failed_mmdet = dict(error="exit code 1: ModuleNotFoundError: No module named 'mmcv._ext'")
    runs = [{"mode": mode, "pisa-train": dict(s_per_iter=seconds), "mmdet": failed_mmdet}
            for mode, seconds in (("fp32", 0.31), ("amp", 0.2), ("bf16", 0.2104))]
    assert step.judge(1, "") is None  # no record: the exit code's verdict stands
    record.write_text(json.dumps(dict(runs=runs)))
    assert step.judge(1, "") == (
        "passed", "pisa-train s/iter: fp32 0.310, amp 0.200, bf16 0.210; mmdet's tools/train.py not compared (it "
                  "needs compiled mmcv: --with-compiled-mmcv WHEEL)")
    assert step.judge(0, "") is None and step.judge(None, "") is None and step.judge(2, "") is None
    runs[1]["pisa-train"] = dict(error="exit code 1: CUDA out of memory")
    record.write_text(json.dumps(dict(runs=runs)))
    assert step.judge(1, "") is None
    with_wheel = gpu_check.plan(tmp_path, sys.executable, tmp_path / WHEEL_NAME)[-1]
    assert with_wheel.name == "train-speed" and with_wheel.judge is None  # with compiled mmcv, mmdet must run


def test_the_report_names_whose_kernels_mmcv_runs_in_this_python():
    kernels = gpu_check.describe_machine()[3]
    assert kernels["compiled"] == mmcv_ext_is_compiled()
    assert kernels["description"] == device.mmcv_kernels().description
    if not kernels["compiled"]:
        assert kernels["description"] == device.MMCV_LITE


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
    report = dict(machine="TEST RECORD, NOT A MEASUREMENT", versions="Python 3.12.3, torch 2.11.0 (CUDA 13.0)",
                  started_at="2026-01-01 00:00:00 UTC", total_minutes=6.25,
                  mmcv_kernels=dict(compiled=False, description="mmcv-lite, without compiled ops"),
                  compiled_mmcv=dict(wheel="/w/mmcv-2.1.0-cp312-cp312-linux_x86_64.whl", venv="/o/venv-mmcv-compiled",
                                     build=dict(minutes=9.44, with_cuda=True, arch_list="9.0", max_jobs=16)),
                  steps=[dict(name="gpu-kernels", checks="kernels", status="passed", detail="12 passed in 3.1s",
                              minutes=0.52),
                         dict(name="nccl", checks="nccl", status="failed", detail="exit code 1: a | b", minutes=1.0)],
                  train_speed=speed)
    lines = gpu_check.render_markdown(report)
    table = train_speed.markdown_table(speed)
    assert lines == [
        "# pisa-train GPU check", "",
        "Machine: TEST RECORD, NOT A MEASUREMENT; Python 3.12.3, torch 2.11.0 (CUDA 13.0); 2026-01-01 00:00:00 UTC; "
        "6.2 min in all.", "",
        "mmcv kernels of the training, evaluation and benchmark steps (.venv): pisa-train's, from torchvision and "
        "torch (mmcv-lite, without compiled ops)",
        "Compiled mmcv (--with-compiled-mmcv): /w/mmcv-2.1.0-cp312-cp312-linux_x86_64.whl, in /o/venv-mmcv-compiled; "
        "built with CPU and CUDA ops, TORCH_CUDA_ARCH_LIST=9.0, 16 jobs, in 9.4 min", "",
        "1 of 2 steps passed.", "",
        "| step | what it checks | result | minutes |", "| --- | --- | --- | --- |",
        "| gpu-kernels | kernels | passed: 12 passed in 3.1s | 0.5 |",
        "| nccl | nccl | failed: exit code 1: a \\| b | 1.0 |", "",
        "## Training speed: pisa-train against mmdet's tools/train.py", "",
        *table, "",
        "Model FLOPs per training image: 500.0 GFLOPs forward at 1333x800 with 512 RoIs "
        "(mmengine.analysis.get_model_complexity_info (x2)), x3 for training; MFU = that x images/s over the peak "
        "dense rate of the mode's precision (benchmarks/train_speed.py, PEAK_DENSE_TFLOPS).", ""]
    assert len(table) == 4 and "TEST RECORD, NOT A MEASUREMENT" in table[2]
    assert speed["runs"][0]["mmdet"]["mfu"] == pytest.approx(3 * 5.0e11 * 4.0 / 989.5e12, abs=1e-4)
    report["compiled_mmcv"]["build"] = None
    assert gpu_check.render_markdown(report)[5] == (
        "Compiled mmcv (--with-compiled-mmcv): /w/mmcv-2.1.0-cp312-cp312-linux_x86_64.whl, in /o/venv-mmcv-compiled; "
        "its build was not recorded (no build.json beside the wheel)")
    report.update(compiled_mmcv=None, train_speed=None, mmcv_kernels=dict(compiled=True, description="mmcv ops "
                                                                          "compiled with GCC 13, CUDA 13.0"))
    assert gpu_check.render_markdown(report)[4:7] == [
        "mmcv kernels of the training, evaluation and benchmark steps (.venv): compiled mmcv (mmcv ops compiled with "
        "GCC 13, CUDA 13.0)", "", "1 of 2 steps passed."]


def test_the_mmcv_build_is_read_from_what_the_set_up_recorded_beside_the_wheel(tmp_path):
    wheel_dir = tmp_path / "cache" / "mmcv-2.1.0_torch-2.11.0_cu130-sm90_cp312_x86_64"
    wheel_dir.mkdir(parents=True)
    wheel = wheel_dir / WHEEL_NAME
    assert gpu_check.mmcv_build_record(wheel) is None
    (wheel_dir / "build.json").write_text(json.dumps(dict(minutes=9.4, with_cuda=True, arch_list="9.0",
                                                          max_jobs=16)))
    assert gpu_check.mmcv_build_record(wheel)["minutes"] == 9.4


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
def test_the_compiled_mmcv_venv_sees_this_environment_has_the_wheels_mmcv_and_refuses_one_without_cuda_ops(tmp_path):
    """gpu_check's compiled-mmcv-venv step, as it runs on the GPU machine, here on the CPU with the cached
    CPU-only mmcv wheel: the venv sees this environment's packages (torch, mmdet), imports mmcv from the
    wheel in front of mmcv-lite, and the step refuses in one line, as that mmcv has no CUDA ops. About a
    minute; nothing compiled (skipped without the cached wheel, which only `--mmcv compiled` builds)."""
    torch_info = {"torch": torch.__version__.split("+")[0], "cuda": None, "gpu": False, "capabilities": [],
                  "python": "cp{}{}".format(*sys.version_info[:2])}
    wheel = compiled_mmcv.cached_wheel(compiled_mmcv.mmcv_build_plan(torch_info, read_pins(REPO_ROOT)))
    if wheel is None:
        pytest.skip("no cached CPU-only mmcv wheel for this torch (tools/setup_env.py --mmcv compiled builds it)")
    step = next(step for step in gpu_check.plan(tmp_path, sys.executable, wheel) if step.name == "compiled-mmcv-venv")
    result = gpu_check.run_step(step, tmp_path)
    venv = tmp_path / "venv-mmcv-compiled"
    assert (result["status"], result["exit_code"]) == ("failed", 1), result
    last_line = (tmp_path / "compiled-mmcv-venv.log").read_text().splitlines()[-1]
    assert last_line == (
        f"gpu_check: error: this venv's mmcv ({venv}/lib/python%d.%d/site-packages/mmcv/__init__.py) is not "
        f"compiled mmcv with CUDA ops (compiled: True, CUDA: not available); {gpu_check.HOW_TO_BUILD_THE_WHEEL}"
        % sys.version_info[:2])
    assert result["detail"] == f"exit code 1: {last_line}"[:300]
    where = json.loads(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import json, mmcv, mmdet, torch; print(json.dumps({m.__name__: "
         "m.__file__ for m in (mmcv, mmdet, torch)}))"], cwd=tmp_path, capture_output=True, text=True,
        check=True).stdout)
    assert where["mmcv"].startswith(str(venv))
    here = Path(torch.__file__).parents[1]
    assert where["torch"].startswith(str(here)) and where["mmdet"].startswith(str(here))
