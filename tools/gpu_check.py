"""Every GPU check and benchmark in one command, on a GPU machine after the set-up (docs/getting_started.md, "GPU check").

    tools/gpu_check.sh [--out DIR] [--plan] [--only STEP ...] [--with-compiled-mmcv WHEEL]

It is sized for one short lease of a GPU machine: about 6 of its minutes on one H100-class GPU with
16 cores (``--plan`` prints each step's estimate; the budget is 8), and it compiles nothing. Each step
runs in a process of its own with its output in DIR/logs/STEP.log, and none stops the others:

* gpu-kernels: tests/test_gpu_kernels.py with .venv's mmcv-lite. mmcv.ops' RoIAlign (forward and
  backward, aligned or not, adaptive or fixed sampling), NMS, batched_nms and the sigmoid focal loss
  (what RetinaNet's FocalLoss calls on CUDA) on pisa-train's kernels, against torchvision's ops,
  mmdet's Python focal loss and the same kernels on the CPU;
* generate-data, amp-float16, amp-bfloat16: ``--amp`` in float16 and bfloat16, 2 iterations of PISA
  X101 at 1333x800 on 8 generated images;
* nccl: ``--nproc 1``, torchrun's launcher and an nccl process group, 2 iterations of X101;
* pisa-eval: on the float16 run's checkpoint;
* train-speed: benchmarks/train_speed.py --mode all --flops, pisa-train against mmdet's tools/train.py
  (fp32, amp, bf16; 10 timed iterations each after 2 of warm-up, which is enough for a mean within a
  few per cent: each run's start-up costs more than its iterations). mmdet's tools/train.py needs
  compiled mmcv; without ``--with-compiled-mmcv`` its runs fail at ``import mmcv.ops``, the table says
  so, and the step passes when every pisa-train run was timed.

Then it writes DIR/gpu_check.md and DIR/gpu_check.json: each step's result and time, whose kernels
mmcv ran (pisa-train's from torchvision and torch, or compiled mmcv's), the benchmark's table.

Compiled mmcv, optional (``--with-compiled-mmcv WHEEL``): two more steps, about 1.8 minutes more
with mmdet's side of the benchmark. compiled-mmcv-venv makes DIR/venv-mmcv-compiled, which sees
.venv's packages (tools/setup_env.py's ``--use-system-torch`` way) and has mmcv from WHEEL installed
with ``pip --no-deps`` in front of mmcv-lite; compiled-mmcv-kernels runs tests/test_gpu_kernels.py
with it (compiled mmcv's CUDA kernels against torchvision's, mmdet's and pisa-train's), and
train-speed runs mmdet's tools/train.py with it. The wheel is built ahead of time, on any machine
with nvcc 13.0 and no GPU, for the GPU machine's Python and torch (2.11, its CUDA 13.0 build)::

    TORCH_VERSION=2.11.0 TORCHVISION_VERSION=0.26.0 TORCH_CUDA_ARCH_LIST=9.0 PISA_MMCV_CUDA=1 \
        python3.12 tools/setup_env.py --mmcv compiled --venv /tmp/mmcv-build

and lands in ~/.cache/pisa-train/wheels/<key>/ beside build.json, the build's time and flags: carry
both, and the report shows the build. Not in the default plan: the wheel is tens of MiB to carry,
and what it checks is upstream's kernels, not pisa-train's.

Carrying the set-up to a GPU machine without network (Python 3.12, torch 2.11; a lent machine takes
64 MiB of carried files in all):

    make wheelhouse TARGET_HAS=freeze.txt TARGET_PYTHON=3.12    # here, with the package index
    python3 tools/setup_env.py --offline wheelhouse --use-system-torch   # there
    tools/gpu_check.sh                                          # there

freeze.txt lists what the GPU machine already has, so that the wheelhouse leaves it out: torch,
torchvision, opencv-python-headless, matplotlib, numpy, scipy, pandas, onnx, onnxruntime (best its
``pip freeze``, which also names their dependencies). Machine start takes 1 to 2 minutes of a
15-minute lease, the offline set-up about 1, this check about 6.

``--plan`` prints what it would run, with the estimates, and runs nothing (it works without a GPU).
Without a GPU anything else is refused: its results would not be GPU results. Exit code 0 when
every step passed, 1 when one failed, 2 when refused.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The set-up's package, in tools/ beside this script (Python puts a script's folder on sys.path).
from pisa_setup.context import SetupContext
from pisa_setup.pins import read_pins
from pisa_setup.venv import create_venv

import pisa_train  # noqa: F401  (before mmcv: provides mmcv._ext where mmcv has no compiled ops)
from pisa_train.engine.device import mmcv_kernels

REPO = Path(__file__).resolve().parent.parent
X101_CONFIG = "configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"
SIZE = (1333, 800)
# Images of the generated dataset the X101 steps train and evaluate on (the batch is 2).
DATA_IMAGES = 8
# The benchmark's iterations per run: start-up (imports, model, CUDA context, first iteration) costs
# more than 10 iterations of X101, so fewer would not save much and more would not tell much more.
SPEED_WARMUP, SPEED_ITERS = 2, 10
# Minutes of one H100-class GPU with 16 cores the default plan must fit: a 15-minute lease less the
# machine's start (1 to 2 minutes), the offline set-up (about 1) and room to rerun a step.
BUDGET_MINUTES = 8
COMPILED_MMCV_OPTION = "--with-compiled-mmcv"
COMPILED_MMCV_STEPS = ("compiled-mmcv-venv", "compiled-mmcv-kernels")
# The venv those steps make, in DIR (gpu_check's own folder, so it is made afresh on each run).
COMPILED_MMCV_VENV = "venv-mmcv-compiled"
HOW_TO_BUILD_THE_WHEEL = ("build it ahead of time with TORCH_CUDA_ARCH_LIST=9.0 PISA_MMCV_CUDA=1 tools/setup_env.py "
                          "--mmcv compiled, for the GPU machine's torch and Python")


@dataclass
class Step:
    name: str
    checks: str  # what it shows, in the report's words
    command: list[str]
    estimate_min: float  # on one H100-class GPU with 16 cores
    timeout_s: int  # a guard against a hang, 2 to 4 times the estimate: a lease has no room for more
    env: dict = field(default_factory=dict)
    expect_in_log: str | None = None  # a regex the output must match for the step to pass
    optional: bool = False  # a step of --with-compiled-mmcv
    # Given the exit code (None: stopped at its limit) and the output, a verdict (status, detail) that
    # replaces the one from the exit code and expect_in_log, or None to keep that one.
    judge: Callable[[int | None, str], tuple[str, str] | None] | None = None


def train_speed_module():
    spec = importlib.util.spec_from_file_location("train_speed", REPO / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(out: Path, python: str, compiled_mmcv_wheel: Path | None = None) -> list[Step]:
    """The steps, in order. ``python`` is .venv's interpreter; with ``compiled_mmcv_wheel``, the optional
    steps of --with-compiled-mmcv come too, and the benchmark runs mmdet's tools/train.py with that mmcv.

    The estimates, for one H100-class GPU with 16 cores, from what each step does: a Python that
    imports torch, mmcv and mmdet and builds the X101 model takes about 7 s on this project's 2-core
    CPU machine, a CUDA context and the first iteration's kernel loading a few seconds more, an X101
    iteration at 1333x800 a fraction of a second, a checkpoint (model and SGD momentum) about 480 MB."""
    data, runs = out / "data", out / "runs"
    train = [python, "-m", "pisa_train.cli.train"]
    x101 = [X101_CONFIG, "--data", str(data), "--max-iters", "2", "--no-progress",
            "--cfg-options", "model.backbone.init_cfg=None"]  # random init: no ImageNet download offline
    kernel_tests = [python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
    no_skipped_test = r"\d+ passed(?!.*skipped)"
    compiled_python = str(out / COMPILED_MMCV_VENV / "bin" / "python")
    steps = [
        # Python, imports (mmdet's models), a CUDA context and a few hundred small kernels: under 30 s.
        Step("gpu-kernels", "mmcv.ops on CUDA with pisa-train's kernels (torchvision and torch): RoIAlign forward "
                            "and backward, NMS, batched_nms and the sigmoid focal loss against torchvision's ops, "
                            "mmdet's Python focal loss and the CPU",
             # The compiled-mmcv tests are left out here (.venv has mmcv-lite): they are the optional step's.
             [*kernel_tests, "-k", "not compiled_mmcv", "tests/test_gpu_kernels.py"], 0.5, 120,
             expect_in_log=no_skipped_test),
    ]
    if compiled_mmcv_wheel:
        wheel = str(compiled_mmcv_wheel)
        steps += [
            # A venv (ensurepip), pip --no-deps of one local wheel, an import: 15 to 20 s.
            Step(COMPILED_MMCV_STEPS[0], f"a venv seeing .venv's packages, with compiled mmcv from "
                                       f"{compiled_mmcv_wheel.name} in front of mmcv-lite (pip --no-deps, nothing "
                                       f"compiled)",
                 [python, str(Path(__file__).resolve()), "--compiled-mmcv-venv", wheel,
                  str(out / COMPILED_MMCV_VENV)], 0.3, 180, expect_in_log=r"with CUDA ops", optional=True),
            # gpu-kernels' tests twice over (compiled and pisa-train's kernels), and their comparison.
            Step(COMPILED_MMCV_STEPS[1], "tests/test_gpu_kernels.py with compiled mmcv: its CUDA kernels against "
                                          "torchvision's ops, mmdet's Python focal loss, the CPU and pisa-train's "
                                          "kernels; no test may be skipped",
                 [compiled_python, *kernel_tests[1:], "tests/test_gpu_kernels.py"], 0.5, 120,
                 expect_in_log=no_skipped_test, optional=True),
        ]
    steps += [
        # 8 JPEGs at 1333x800: a few seconds.
        Step("generate-data", f"{DATA_IMAGES} images of {SIZE[0]}x{SIZE[1]} in COCO format (train and val)",
             [python, str(Path(__file__).resolve()), "--generate-data", str(data)], 0.1, 60),
        # Start-up (about 15 s), 2 iterations, a 480 MB checkpoint, validation on 8 images: 35 to 45 s.
        Step("amp-float16", f"--amp (float16, dynamic loss scale): 2 iterations of PISA X101 at {SIZE[0]}x{SIZE[1]}",
             [*train, *x101, "--amp", "--work-dir", str(runs / "amp-float16")], 0.75, 180),
        Step("amp-bfloat16", f"--amp --amp-dtype bfloat16: 2 iterations of PISA X101 at {SIZE[0]}x{SIZE[1]}",
             [*train, *x101, "--amp", "--amp-dtype", "bfloat16", "--work-dir", str(runs / "amp-bfloat16")], 0.75, 180),
        # As amp-float16, plus torchrun's start and nccl's initialisation.
        Step("nccl", "--nproc 1: torchrun's process group with nccl, 2 iterations of PISA X101",
             [*train, *x101, "--nproc", "1", "--work-dir", str(runs / "nccl")], 1.0, 180,
             expect_in_log=r"nccl"),
        # Start-up, loading the checkpoint, 8 images and COCO's evaluation: 20 to 30 s.
        Step("pisa-eval", "pisa-eval --amp on the float16 run's checkpoint",
             [python, "-m", "pisa_train.cli.evaluate", X101_CONFIG, str(runs / "amp-float16" / "iter_2.pth"),
              "--data", str(data), "--amp", "--no-progress", "--out", str(runs / "pisa-eval" / "metrics.json"),
              "--cfg-options", "model.backbone.init_cfg=None"], 0.5, 120),
        train_speed_step(out, python, compiled_python if compiled_mmcv_wheel else None),
    ]
    return steps


def train_speed_step(out: Path, python: str, mmdet_python: str | None) -> Step:
    """The side-by-side benchmark. Each of its runs is a fresh process: about 20 s of start-up and 12
    iterations, 25 to 30 s; 3 modes of pisa-train, the FLOPs count (the model traced at 1333x800, about
    20 s) and 24 generated images make about 2.5 min. mmdet's 3 runs cost 3 more runs with compiled
    mmcv (about 1 min more), and a few seconds each without it, where they fail at ``import mmcv.ops``."""
    command = [python, "benchmarks/train_speed.py", "--mode", "all", "--flops", "--warmup", str(SPEED_WARMUP),
               "--iters", str(SPEED_ITERS), "--json", str(out / "train_speed.json"),
               "--out-dir", str(out / "runs" / "train_speed")]
    if mmdet_python:
        return Step("train-speed", f"benchmarks/train_speed.py --mode all: pisa-train against mmdet's tools/train.py "
                                   f"with compiled mmcv, fp32, amp and bf16, {SPEED_ITERS} timed iterations each, "
                                   f"with MFU",
                    [*command, "--mmdet-python", mmdet_python], 3.5, 540)
    return Step("train-speed", f"benchmarks/train_speed.py --mode all: pisa-train's fp32, amp and bf16, "
                               f"{SPEED_ITERS} timed iterations each, with MFU; mmdet's tools/train.py beside it only "
                               f"with {COMPILED_MMCV_OPTION}",
                command, 2.5, 420, judge=functools.partial(judge_train_speed, out / "train_speed.json"))


def judge_train_speed(record: Path, code: int | None, output: str) -> tuple[str, str] | None:
    """Without compiled mmcv, mmdet's tools/train.py cannot import mmcv.ops, so train_speed.py's mmdet runs
    fail and it exits 1: the step passes when every pisa-train run was timed, and says what was not
    compared. Anything else (a pisa-train run failed, no record) keeps the verdict of the exit code."""
    if code != 1 or not record.is_file():
        return None
    runs = json.loads(record.read_text()).get("runs", [])
    if not runs or not all("s_per_iter" in run.get("pisa-train", {}) for run in runs):
        return None
    timed = ", ".join(f"{run['mode']} {run['pisa-train']['s_per_iter']:.3f}" for run in runs)
    return "passed", (f"pisa-train s/iter: {timed}; mmdet's tools/train.py not compared (it needs compiled mmcv: "
                      f"{COMPILED_MMCV_OPTION} WHEEL)")


def generate_data(folder: Path) -> None:
    """The X101 steps' dataset: the benchmark's generated images, with the same annotations as val."""
    train_speed_module().generate_dataset(folder, DATA_IMAGES, *SIZE)
    shutil.copy(folder / "annotations" / "train.json", folder / "annotations" / "val.json")


# Run by the compiled-mmcv venv's Python: which mmcv it imports, and whether it has CUDA ops.
CHECK_COMPILED_MMCV = """\
import os
import sys
import pisa_train
import mmcv
from mmcv.ops import get_compiler_version, get_compiling_cuda_version
from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled
cuda = get_compiling_cuda_version()
own = os.path.realpath(mmcv.__file__).startswith(os.path.realpath(sys.prefix) + os.sep)
if not mmcv_ext_is_compiled() or not own or cuda in ("", "not available"):
    sys.exit(f"gpu_check: error: this venv's mmcv ({mmcv.__file__}) is not compiled mmcv with CUDA ops "
             f"(compiled: {mmcv_ext_is_compiled()}, CUDA: {cuda}); {sys.argv[1]}")
print(f"compiled mmcv {mmcv.__version__} with CUDA ops (CUDA {cuda}, {get_compiler_version()}) from {mmcv.__file__}")
"""


def make_compiled_mmcv_venv(wheel: Path, venv: Path) -> int:
    """The compiled-mmcv-venv step: ``venv`` made afresh, seeing this Python's packages the way tools/setup_env.py's
    --use-system-torch makes a venv see them (torch, mmdet, mmengine, pytest, pisa-train), and compiled mmcv
    installed from ``wheel`` alone (no index, no dependencies) in front of the mmcv-lite it sees."""
    if venv.exists():
        shutil.rmtree(venv)
    create_venv(SetupContext(repo_root=REPO, venv=venv, pins=read_pins(REPO)), use_system_torch=True)
    python = str(venv / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "install", "--quiet",
                                "--no-index", "--no-deps", str(wheel)])
    if installed.returncode != 0:
        print(f"gpu_check: error: pip could not install {wheel} into {venv} (exit code {installed.returncode}; its "
              f"output is above)", file=sys.stderr)
        return 1
    return subprocess.run([python, "-c", CHECK_COMPILED_MMCV, HOW_TO_BUILD_THE_WHEEL], cwd=REPO).returncode


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
    verdict = step.judge(code, text) if step.judge else None
    if verdict:
        status, detail = verdict
    return dict(name=step.name, checks=step.checks, command=step.command, status=status, exit_code=code,
                minutes=round((time.monotonic() - started) / 60, 2), detail=detail[:300], log=str(log))


def mmcv_build_record(wheel: Path) -> dict | None:
    """What tools/setup_env.py recorded when it built ``wheel`` (build.json beside it in its cache folder)."""
    record = wheel.parent / "build.json"
    return json.loads(record.read_text()) if record.is_file() else None


def render_markdown(report: dict) -> list[str]:
    kernels = report["mmcv_kernels"]
    lines = ["# pisa-train GPU check", "",
             f"Machine: {report['machine']}; {report['versions']}; {report['started_at']}; "
             f"{report['total_minutes']:.1f} min in all.", "",
             "mmcv kernels of the training, evaluation and benchmark steps (.venv): "
             + ("compiled mmcv" if kernels["compiled"] else "pisa-train's, from torchvision and torch")
             + f" ({kernels['description']})"]
    compiled = report.get("compiled_mmcv")
    if compiled:
        build = compiled["build"]
        lines.append(f"Compiled mmcv ({COMPILED_MMCV_OPTION}): {compiled['wheel']}, in {compiled['venv']}; "
                     + (f"built with {'CPU and CUDA ops' if build['with_cuda'] else 'CPU ops only'}"
                        + (f", TORCH_CUDA_ARCH_LIST={build['arch_list']}" if build["with_cuda"] else "")
                        + f", {build['max_jobs']} jobs, in {build['minutes']:.1f} min" if build
                        else "its build was not recorded (no build.json beside the wheel)"))
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


def describe_machine() -> tuple[str, str, str | None, dict]:
    """(machine, versions, GPU name, whose kernels mmcv.ops runs in this Python)."""
    import mmcv
    import mmdet
    import mmengine
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    kernels = mmcv_kernels()
    versions = (f"Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
                f"mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmengine {mmengine.__version__}")
    return (train_speed_module().machine_name(gpu), versions, gpu,
            dict(compiled=bool(kernels.devices), description=kernels.description))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "work_dirs" / "gpu_check",
                        help="where the report, logs and runs go (default work_dirs/gpu_check)")
    parser.add_argument("--plan", action="store_true", help="print the steps and their estimates; run nothing")
    parser.add_argument("--only", action="append", metavar="STEP", help="run only this step (repeatable)")
    parser.add_argument(COMPILED_MMCV_OPTION, metavar="WHEEL", type=Path,
                        help="also check compiled mmcv's CUDA kernels, from this wheel (built ahead of time for "
                             "this machine's torch and Python), and run mmdet's side of the benchmark with it")
    parser.add_argument("--generate-data", type=Path, help=argparse.SUPPRESS)  # the generate-data step itself
    parser.add_argument("--compiled-mmcv-venv", nargs=2, type=Path, help=argparse.SUPPRESS)  # that step itself
    return parser


def print_plan(steps: list[Step], default_steps: list[Step], out: Path) -> None:
    for step in steps:
        when = f"{COMPILED_MMCV_OPTION}; " if step.optional else ""
        print(f"{step.name} ({when}about {step.estimate_min:g} min, at most {step.timeout_s // 60} min): "
              f"{step.checks}\n    {shlex.join(step.command)}")
    default = sum(step.estimate_min for step in default_steps)
    extra = sum(step.estimate_min for step in steps) - default
    more = (f", and about {extra:.1f} min more for {COMPILED_MMCV_OPTION} (its steps, and mmdet's side of "
            f"train-speed)" if any(step.optional for step in steps) else "")
    print(f"about {default:.1f} min in all on one H100-class GPU with 16 cores (budget {BUDGET_MINUTES} min){more}; "
          f"report: {out}/gpu_check.md and gpu_check.json")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.generate_data:
        generate_data(args.generate_data)
        return 0
    if args.compiled_mmcv_venv:
        return make_compiled_mmcv_venv(*args.compiled_mmcv_venv)
    wheel = args.with_compiled_mmcv.resolve() if args.with_compiled_mmcv else None
    if wheel and not wheel.is_file():
        parser.error(f"{COMPILED_MMCV_OPTION} {args.with_compiled_mmcv}: no such file; {HOW_TO_BUILD_THE_WHEEL}, "
                     f"and copy its mmcv-*.whl here")
    if wheel and not re.fullmatch(r"mmcv-[^-]+-.+\.whl", wheel.name):
        parser.error(f"{COMPILED_MMCV_OPTION} {args.with_compiled_mmcv}: not a wheel of compiled mmcv "
                     f"(mmcv-VERSION-...whl); {HOW_TO_BUILD_THE_WHEEL}")
    out = args.out.resolve()
    steps = plan(out, sys.executable, wheel)
    unknown = sorted(set(args.only or []) - {step.name for step in steps})
    if unknown and not wheel and set(unknown) <= set(COMPILED_MMCV_STEPS):
        parser.error(f"--only {', '.join(unknown)}: a step of {COMPILED_MMCV_OPTION} WHEEL; add that option")
    if unknown:
        parser.error(f"--only {', '.join(unknown)}: no such step; the steps are "
                     f"{', '.join(step.name for step in steps)}")
    chosen = [step for step in steps if not args.only or step.name in args.only]
    if args.plan:
        print_plan(chosen, [step for step in plan(out, sys.executable) if not args.only or step.name in args.only],
                   out)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False), and these "
              "checks only mean something on one; run it on the GPU machine, or see what it would run with "
              "tools/gpu_check.sh --plan", file=sys.stderr)
        return 2
    machine, versions, gpu, kernels = describe_machine()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    speed = out / "train_speed.json"
    if any(step.name == "train-speed" for step in chosen):
        speed.unlink(missing_ok=True)  # a record left by an earlier check must not stand for this one's
    report = dict(machine=machine, gpu=gpu, versions=versions, started_at=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  mmcv_kernels=kernels, steps=[],
                  compiled_mmcv=dict(wheel=str(wheel), venv=str(out / COMPILED_MMCV_VENV),
                                     build=mmcv_build_record(wheel)) if wheel else None)
    started = time.monotonic()
    for step in chosen:
        print(f"[gpu_check] {step.name}: {step.checks}", flush=True)
        result = run_step(step, out / "logs")
        print(f"[gpu_check] {step.name}: {result['status']} in {result['minutes']:.1f} min: {result['detail']}",
              flush=True)
        report["steps"].append(result)
    report["total_minutes"] = round((time.monotonic() - started) / 60, 2)
    report["train_speed"] = json.loads(speed.read_text()) if speed.is_file() else None
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text("\n".join(render_markdown(report)))
    print(f"[gpu_check] report: {out}/gpu_check.md and {out}/gpu_check.json", flush=True)
    return 0 if all(step["status"] == "passed" for step in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
