"""Every GPU check and benchmark in one command, on a GPU machine after the set-up (README, "GPU check").

    tools/gpu_check.sh [--out DIR] [--offline WHEELHOUSE] [--plan] [--only STEP ...]

It runs, each in a process of its own with its output in DIR/logs/STEP.log, and stops nothing on a
failure: mmcv's CUDA kernels against torchvision's (RoIAlign and NMS, tests/test_gpu_kernels.py);
``--ops-backend auto`` with a CPU-only mmcv (built into .venv-cpu-mmcv/, which sees .venv's packages);
``--amp`` in float16 and bfloat16, 2 iterations of PISA X101 at 1333x800; ``--nproc 1`` with nccl;
pisa-eval on the float16 run's checkpoint; and benchmarks/train_speed.py --mode all against mmdet's
tools/train.py with model FLOPs utilisation. Then it writes DIR/gpu_check.md and DIR/gpu_check.json:
each step's result and time, the mmcv CUDA build time the set-up recorded, the benchmark's table.

``--plan`` prints what it would run, with time estimates for one H100-class GPU and 16 cores, and
runs nothing (it works without a GPU). Without a GPU anything else is refused: its results would
not be GPU results. Exit code 0 when every step passed, 1 when one failed, 2 when refused.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = "configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py"
X101_CONFIG = "configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"
CPU_MMCV_VENV = REPO / ".venv-cpu-mmcv"
SIZE = (1333, 800)
# Images of the generated dataset the X101 steps train and evaluate on (the batch is 2).
DATA_IMAGES = 8
BUDGET_MINUTES = 25


@dataclass
class Step:
    name: str
    checks: str  # what it shows, in the report's words
    command: list[str]
    estimate_min: float  # on one H100-class GPU with 16 cores
    timeout_s: int
    env: dict = field(default_factory=dict)
    expect_in_log: str | None = None  # a regex the output must match for the step to pass


def train_speed_module():
    spec = importlib.util.spec_from_file_location("train_speed", REPO / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(out: Path, python: str, offline: Path | None) -> list[Step]:
    """The steps, in order. ``python`` is .venv's interpreter; ``offline`` the wheelhouse the set-up used."""
    data, runs = out / "data", out / "runs"
    train = [python, "-m", "pisa_train.cli.train"]
    x101 = [X101_CONFIG, "--data", str(data), "--max-iters", "2", "--no-progress",
            "--cfg-options", "model.backbone.init_cfg=None"]  # random init: no ImageNet download offline
    cpu_mmcv_python = str(CPU_MMCV_VENV / "bin" / "python")
    return [
        Step("gpu-kernels", "mmcv's CUDA RoIAlign (forward, backward) and NMS against torchvision's",
             [python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_gpu_kernels.py"],
             1.0, 600, expect_in_log=r"\d+ passed(?!.*skipped)"),
        Step("cpu-mmcv-venv", "a CPU-only mmcv build beside the CUDA one (PISA_MMCV_CUDA=0), in .venv-cpu-mmcv/",
             [python, "tools/setup_env.py", "--venv", str(CPU_MMCV_VENV), "--use-system-torch",
              *(["--offline", str(offline)] if offline else [])],
             3.0, 1500, env=dict(PISA_MMCV_CUDA="0")),
        Step("ops-backend-auto", "--ops-backend auto on the GPU with that CPU-only mmcv: torchvision's kernels, "
                                 "2 iterations of the demo",
             [cpu_mmcv_python, "-m", "pisa_train.cli.train", DEMO_CONFIG, "--device", "cuda", "--ops-backend", "auto",
              "--max-iters", "2", "--no-progress", "--work-dir", str(runs / "ops-backend-auto")],
             1.5, 900, expect_in_log=r"RoIAlign and NMS kernels: torchvision"),
        Step("generate-data", f"{DATA_IMAGES} images of {SIZE[0]}x{SIZE[1]} in COCO format (train and val)",
             [python, str(Path(__file__).resolve()), "--generate-data", str(data)], 0.3, 300),
        Step("amp-float16", f"--amp (float16, dynamic loss scale): 2 iterations of PISA X101 at {SIZE[0]}x{SIZE[1]}",
             [*train, *x101, "--amp", "--work-dir", str(runs / "amp-float16")], 1.5, 900),
        Step("amp-bfloat16", f"--amp --amp-dtype bfloat16: 2 iterations of PISA X101 at {SIZE[0]}x{SIZE[1]}",
             [*train, *x101, "--amp", "--amp-dtype", "bfloat16", "--work-dir", str(runs / "amp-bfloat16")], 1.5, 900),
        Step("nccl", "--nproc 1: torchrun's process group with nccl, 2 iterations of PISA X101",
             [*train, *x101, "--nproc", "1", "--work-dir", str(runs / "nccl")], 1.5, 900,
             expect_in_log=r"nccl"),
        Step("pisa-eval", "pisa-eval --amp on the float16 run's checkpoint",
             [python, "-m", "pisa_train.cli.evaluate", X101_CONFIG, str(runs / "amp-float16" / "iter_2.pth"),
              "--data", str(data), "--amp", "--no-progress", "--out", str(runs / "pisa-eval" / "metrics.json"),
              "--cfg-options", "model.backbone.init_cfg=None"], 1.0, 600),
        Step("train-speed", "benchmarks/train_speed.py --mode all: pisa-train against mmdet's tools/train.py, "
                            "fp32, amp and bf16, with MFU",
             [python, "benchmarks/train_speed.py", "--mode", "all", "--flops", "--json", str(out / "train_speed.json"),
              "--out-dir", str(runs / "train_speed")], 7.0, 1800),
    ]


def generate_data(folder: Path) -> None:
    """The X101 steps' dataset: the benchmark's generated images, with the same annotations as val."""
    train_speed_module().generate_dataset(folder, DATA_IMAGES, *SIZE)
    shutil.copy(folder / "annotations" / "train.json", folder / "annotations" / "val.json")


def run_step(step: Step, logs: Path) -> dict:
    """Run one step in its own process; its result (status, exit code, minutes, last line, log)."""
    log = logs / f"{step.name}.log"
    started = time.monotonic()
    with open(log, "w") as stream:
        try:
            process = subprocess.run(step.command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **step.env},
                                     stdout=stream, stderr=subprocess.STDOUT, timeout=step.timeout_s)
            code = process.returncode
        except subprocess.TimeoutExpired:
            code = None
    text = log.read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if code is None:
        status, detail = "failed", f"stopped after its {step.timeout_s} s limit"
    elif code != 0:
        status, detail = "failed", f"exit code {code}: {lines[-1] if lines else 'no output'}"
    elif step.expect_in_log and not re.search(step.expect_in_log, text):
        status, detail = "failed", f"exit code 0, but its output lacks /{step.expect_in_log}/"
    else:
        status, detail = "passed", lines[-1] if lines else ""
    return dict(name=step.name, checks=step.checks, command=step.command, status=status, exit_code=code,
                minutes=round((time.monotonic() - started) / 60, 2), detail=detail[:300], log=str(log))


def mmcv_build_record(venv: Path) -> dict | None:
    """What the set-up recorded about the mmcv wheel in ``venv`` (tools/setup_env.py's build.json)."""
    stamp = venv / ".pisa-train-setup.json"
    if not stamp.is_file():
        return None
    wheel = Path(json.loads(stamp.read_text()).get("mmcv_wheel", ""))
    record = wheel.parent / "build.json"
    return json.loads(record.read_text()) if record.is_file() else None


def render_markdown(report: dict) -> list[str]:
    build = report.get("mmcv_build")
    lines = ["# pisa-train GPU check", "",
             f"Machine: {report['machine']}; {report['versions']}; {report['started_at']}; "
             f"{report['total_minutes']:.1f} min in all.", ""]
    if build:
        lines.append(f"mmcv build ({'CPU and CUDA ops' if build['with_cuda'] else 'CPU ops only'}"
                     + (f", TORCH_CUDA_ARCH_LIST={build['arch_list']}" if build["with_cuda"] else "")
                     + f", {build['max_jobs']} jobs): {build['minutes']:.1f} min")
    else:
        lines.append("mmcv build: not recorded (its wheel was built before the set-up recorded build times)")
    passed = sum(step["status"] == "passed" for step in report["steps"])
    lines += ["", f"{passed} of {len(report['steps'])} steps passed.", "",
              "| step | what it checks | result | minutes |", "| --- | --- | --- | --- |"]
    for step in report["steps"]:
        detail = step["detail"].replace("|", "\\|")
        lines.append(f"| {step['name']} | {step['checks']} | {step['status']}: {detail} | {step['minutes']:.1f} |")
    speed = report.get("train_speed")
    if speed:
        lines += ["", "## Training speed: pisa-train against mmdet's tools/train.py", ""]
        lines += train_speed_module().markdown_table(speed)
        flops = speed.get("flops")
        if flops:
            lines += ["", f"Model FLOPs per training image: {flops['forward_flops_per_image'] / 1e9:.1f} GFLOPs forward "
                          f"at {flops['image_size'][0]}x{flops['image_size'][1]} with {flops['rois_per_image']} RoIs "
                          f"({flops['counted_by']}), x3 for training; MFU = that x images/s over the peak dense rate "
                          f"of the mode's precision (benchmarks/train_speed.py, PEAK_DENSE_TFLOPS)."]
    return lines + [""]


def describe_machine() -> tuple[str, str, str | None]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import mmcv
    import mmdet
    import mmengine

    versions = (f"Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
                f"mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmengine {mmengine.__version__}")
    return train_speed_module().machine_name(gpu), versions, gpu


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "work_dirs" / "gpu_check",
                        help="where the report, logs and runs go (default work_dirs/gpu_check)")
    parser.add_argument("--offline", metavar="WHEELHOUSE", type=Path,
                        help="the wheelhouse of an offline set-up, for the CPU-only mmcv venv")
    parser.add_argument("--plan", action="store_true", help="print the steps and their estimates; run nothing")
    parser.add_argument("--only", action="append", metavar="STEP", help="run only this step (repeatable)")
    parser.add_argument("--generate-data", type=Path, help=argparse.SUPPRESS)  # the generate-data step itself
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.generate_data:
        generate_data(args.generate_data)
        return 0
    out = args.out.resolve()
    steps = plan(out, sys.executable, args.offline.resolve() if args.offline else None)
    unknown = sorted(set(args.only or []) - {step.name for step in steps})
    if unknown:
        parser.error(f"--only {', '.join(unknown)}: no such step; the steps are "
                     f"{', '.join(step.name for step in steps)}")
    steps = [step for step in steps if not args.only or step.name in args.only]
    if args.plan:
        for step in steps:
            print(f"{step.name} (about {step.estimate_min:g} min, at most {step.timeout_s // 60} min): {step.checks}\n"
                  f"    {' '.join(step.command)}")
        print(f"about {sum(step.estimate_min for step in steps):g} min in all on one H100-class GPU with 16 cores "
              f"(budget {BUDGET_MINUTES} min); report: {out}/gpu_check.md and gpu_check.json")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False), and these "
              "checks only mean something on one; run it on the GPU machine, or see what it would run with "
              "tools/gpu_check.sh --plan", file=sys.stderr)
        return 2
    machine, versions, gpu = describe_machine()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    report = dict(machine=machine, gpu=gpu, versions=versions, started_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  mmcv_build=mmcv_build_record(Path(sys.prefix)), steps=[])
    started = time.monotonic()
    for step in steps:
        print(f"[gpu_check] {step.name}: {step.checks}", flush=True)
        result = run_step(step, out / "logs")
        print(f"[gpu_check] {step.name}: {result['status']} in {result['minutes']:.1f} min: {result['detail']}",
              flush=True)
        report["steps"].append(result)
    report["total_minutes"] = round((time.monotonic() - started) / 60, 2)
    speed = out / "train_speed.json"
    report["train_speed"] = json.loads(speed.read_text()) if speed.is_file() else None
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text("\n".join(render_markdown(report)))
    print(f"[gpu_check] report: {out}/gpu_check.md and {out}/gpu_check.json", flush=True)
    return 0 if all(step["status"] == "passed" for step in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
