"""Time PISA Faster R-CNN X101-32x4d FPN training: pisa-train as set up by default (mmcv-lite,
kernels from torchvision and torch) against MMDetection's own tools/train.py with compiled mmcv.

    .venv/bin/python benchmarks/train_speed.py [--iters 20] [--warmup 3] [--batch 2] [--size W H]
        [--mode fp32|amp|bf16|all ...] [--workers N] [--mmdet-python PYTHON] [--out-dir DIR] [--json FILE]

What is compared, and why. pisa-train's default environment (.venv/, ``make setup``) has mmcv-lite:
mmcv's Python code without its compiled ops, whose RoIAlign, NMS and nms_match pisa-train answers
with torchvision's and torch's kernels (pisa_train/engine/torch_kernels.py, installed as
``mmcv._ext`` by engine/patches/mmcv_ext_from_torchvision.py when ``pisa_train`` is imported).
MMDetection's tools/train.py does not import pisa_train, so it cannot run on mmcv-lite at all
(``import mmcv.ops`` needs ``mmcv._ext``); what MMDetection users run is tools/train.py with compiled
mmcv. So the pisa-train command runs with the Python running this script, and mmdet's with
``--mmdet-python`` (default: .venv-mmcv-compiled/bin/python in the repository when it exists,
made by ``python3 tools/setup_env.py --mmcv compiled --venv .venv-mmcv-compiled``: compiled mmcv
2.1.0 of the same version, torch and mmdet; else this Python, and the record says which). The
ratio is therefore the cost of both what pisa-train adds around MMEngine's loop (its hooks: the
signal and NaN guards, progress; no checkpoint is saved here) and its kernels against mmcv's
compiled ones. Before timing, each Python is asked which kernels its command will use (for mmdet
without importing pisa_train, as tools/train.py does not): compiled mmcv, or pisa-train's
torchvision/torch ones; the record and the table say so per run. Run this script with
.venv-mmcv-compiled's Python instead and both commands use compiled mmcv: the ratio is then
pisa-train's overhead alone.

It generates a COCO-format dataset of random-textured JPEG images of W x H (default 1333x800,
COCO's training size; 448x256 on a machine without a GPU, where 1333x800 would take minutes per
iteration) with 2 to 12 boxes each, and writes a config that builds on
configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py and changes only what a timing needs: the data
paths, the train pipeline's Resize to W x H, the batch size and dataloader workers, a randomly
initialised backbone (no ImageNet download), an IterBasedTrainLoop of warm-up + N iterations
without validation or checkpoints, and a log line per iteration. Then, per mode, it trains that
config twice on the same data, each time in a fresh process with the same flags: pisa-train
(``python -m pisa_train.cli.train``, with its default ``--ops-backend auto``) and MMDetection
3.3.0's tools/train.py as pip installs it (site-packages/mmdet/.mim/tools/train.py of the mmdet
Python's own mmdet).

From each run's MMEngine log, WORK_DIR/<timestamp>/vis_data/scalars.json (IterTimerHook's
``time`` and ``data_time`` per iteration, the log window being 1; on a GPU also LogProcessor's
``memory``, torch.cuda.max_memory_allocated in MiB), it drops the warm-up iterations and reports
s/iter and data s/iter (means), images/s (batch / s/iter), peak memory (GPU: the largest
``memory``; CPU: the peak RSS that wait4 reports for the training process, the larger of it and
its dataloader workers), the timed iterations' losses, and the ratio of pisa-train's s/iter to
mmdet's. It prints a JSON record and a markdown table whose rows name the machine and each
command's kernels; ``--json FILE`` also writes the record. With the same seed and config the two
commands compute the same losses on the CPU, compiled mmcv or not: torchvision's RoIAlign and the
NMS kernels give mmcv's results there (tests/test_train_speed_benchmark.py checks the losses).

On a GPU, mmdet's Python needs mmcv compiled with CUDA ops; with mmcv-lite, or mmcv built without
them, tools/train.py fails, and its failure is reported, not hidden (pisa-train's
``--ops-backend auto`` uses torchvision's RoIAlign and NMS there).

Modes: fp32; amp: ``--amp`` on both commands (AmpOptimWrapper, fp16, dynamic loss scale); bf16:
AmpOptimWrapper with ``dtype='bfloat16'``, set in the generated config. mmengine 0.10.7's
AmpOptimWrapper asserts a GPU, so amp and bf16 are refused on a machine without one.
``--mode all`` runs fp32, amp and bf16 one after another (``--mode`` also repeats).

Model FLOPs utilisation (MFU, ``--flops``; on by default on a GPU): the model's FLOPs for one
training image (mmengine's get_model_complexity_info, which counts a multiply-add as one, so x2,
at the benchmark's size: backbone, neck and RPN head on the image and the RoI head on the sampler's
512 RoIs, as in training; forward x3 for forward and backward) times images/s, over the GPU's
peak dense rate for the mode's precision (PEAK_DENSE_TFLOPS below: fp32 runs cuDNN's
convolutions in TF32, PyTorch's default, so its peak is the TF32 rate; amp is fp16, bf16 bf16).

A measurement, not a test (tests/test_train_speed_benchmark.py runs it small). The run folders
(data, configs, work dirs, each command's output in ``<tool>.log``) stay under --out-dir.
Exit code 0 when every run finished, 1 when one failed: its exit code and last output line are
in the record and in the table, and its full output in its log; 2 for a usage error.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"
GPU_SIZE = (1333, 800)
CPU_SIZE = (448, 256)
MODES = ("fp32", "amp", "bf16")
TOOLS = ("pisa-train", "mmdet")
# COCO class names, so that MMDetection's CocoDataset (whose metainfo lists COCO's 80) keeps the boxes
# and the model keeps the config's 80-class head.
CATEGORIES = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "dog", "chair")


# ---- data and config -------------------------------------------------------------------------

def _textured_image(rng, width: int, height: int):
    """Low-frequency colour blobs plus pixel noise: JPEGs that decode like photographs, not flat colour."""
    from PIL import Image

    coarse = rng.uniform(40, 220, size=(6, 10, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float64)
    image += rng.normal(0, 12, size=image.shape)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def generate_dataset(root: Path, count: int, width: int, height: int, seed: int = 0) -> None:
    """``count`` images of width x height under root/images/ with 2 to 12 boxes each (drawn as filled
    rectangles), and their COCO annotations in root/annotations/train.json."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for index in range(count):
        image = _textured_image(rng, width, height)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 13))):
            w = float(rng.uniform(0.05, 0.5) * width)
            h = float(rng.uniform(0.05, 0.5) * height)
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            draw.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, size=3)))
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": int(rng.integers(len(CATEGORIES))) + 1,
                                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0})
        file_name = f"{index:05d}.jpg"
        image.save(root / "images" / file_name, quality=90)
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
    categories = [{"id": i + 1, "name": name, "supercategory": "thing"} for i, name in enumerate(CATEGORIES)]
    (root / "annotations" / "train.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def benchmark_config_text(base_config: Path, data_root: Path, width: int, height: int, batch: int,
                          workers: int, max_iters: int, mode: str) -> str:
    """The config both commands train: the base config with only what a timing must change."""
    lines = [
        "# Written by benchmarks/train_speed.py: the config below, changed only where a timing needs it.",
        f"_base_ = {str(base_config)!r}",
        "",
        "# Random initialisation: no ImageNet download (the speed is the same).",
        "model = dict(backbone=dict(init_cfg=None))",
        "# The base pipeline, resizing to the generated images' own size.",
        "train_pipeline = [",
        "    dict(type='LoadImageFromFile', backend_args=None),",
        "    dict(type='LoadAnnotations', with_bbox=True),",
        f"    dict(type='Resize', scale=({width}, {height}), keep_ratio=True),",
        "    dict(type='RandomFlip', prob=0.5),",
        "    dict(type='PackDetInputs'),",
        "]",
        "train_dataloader = dict(",
        f"    batch_size={batch}, num_workers={workers}, persistent_workers={workers > 0},",
        f"    dataset=dict(data_root={str(data_root) + '/'!r}, ann_file='annotations/train.json',",
        "                 data_prefix=dict(img='images/'), pipeline=train_pipeline))",
        "# Warm-up + timed iterations, no validation, no checkpoints, a log line (and a scalars.json",
        "# entry) per iteration, each the iteration's own time (window 1), not a running mean.",
        f"train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters})",
        "val_dataloader = None",
        "val_cfg = None",
        "val_evaluator = None",
        "test_dataloader = None",
        "test_cfg = None",
        "test_evaluator = None",
        "default_hooks = dict(logger=dict(interval=1), checkpoint=None)",
        "log_processor = dict(window_size=1, by_epoch=False)",
        "randomness = dict(seed=0)",
    ]
    if mode == "bf16":
        lines += ["# bf16: MMEngine's AmpOptimWrapper autocasting to bfloat16.",
                  "optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16')"]
    return "\n".join(lines) + "\n"


# ---- the two commands ------------------------------------------------------------------------

def mmdet_train_script() -> Path | None:
    """MMDetection's tools/train.py as pip ships it (inside the package, for mim), or None."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or spec.origin is None:
        return None
    script = Path(spec.origin).parent / ".mim" / "tools" / "train.py"
    return script if script.is_file() else None


COMPILED_MMCV_VENV = ".venv-mmcv-compiled"
HOW_TO_GET_COMPILED_MMCV = (f"create {COMPILED_MMCV_VENV}/ with `python3 tools/setup_env.py --mmcv compiled "
                            f"--venv {COMPILED_MMCV_VENV}`, or pass --mmdet-python with a Python that has it")


def choose_mmdet_python(requested: Path | None, repo: Path = REPO, fallback: str = sys.executable) -> tuple[str, str]:
    """(the Python that runs mmdet's tools/train.py, why that one): --mmdet-python, else the repository's
    compiled-mmcv venv when it exists (mmdet's script cannot run on mmcv-lite), else ``fallback``."""
    if requested is not None:
        # abspath, not resolve(): a venv's python is a link to the base interpreter, which is not the venv.
        return os.path.abspath(requested), "--mmdet-python"
    compiled = repo / COMPILED_MMCV_VENV / "bin" / "python"
    if compiled.exists():
        return str(compiled), f"default: {COMPILED_MMCV_VENV}/bin/python in the repository (compiled mmcv)"
    return fallback, (f"default: the Python running this benchmark, as there is no {COMPILED_MMCV_VENV}/ "
                      f"in the repository")


def describe_python(tool: str, device: str) -> dict:
    """Run in the Python that will run ``tool`` (``--describe-python``): its versions and what mmcv's
    ops will run on there. For mmdet without importing pisa_train, as mmdet's tools/train.py does not."""
    facts = dict(tool=tool, device=device, executable=sys.executable, python=platform.python_version())
    for name in ("torch", "torchvision", "mmdet", "mmengine", "mmcv", "mmcv-lite"):
        try:
            facts[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            facts[name] = None
    if tool == "pisa-train":
        # Imported here, not at the top: this script also describes mmdet's Python, where pisa_train is not imported.
        import pisa_train  # noqa: F401, PLC0415  (as `python -m pisa_train.cli.train` does: mmcv._ext without compiled mmcv)
        from pisa_train.engine.device import choose_ops_backend, mmcv_kernels  # noqa: PLC0415

        kernels = mmcv_kernels()
        facts.update(compiled_mmcv_devices=sorted(kernels.devices), mmcv_build=kernels.description,
                     ops_backend=choose_ops_backend("auto", device, kernels))
    else:
        # What pisa_train.engine.device.mmcv_kernels() finds, asked here without pisa_train's mmcv._ext stand-in.
        installed = (facts["mmcv"] or facts["mmcv-lite"]) is not None
        compiled = installed and importlib.util.find_spec("mmcv._ext") is not None
        devices, build = [], "mmcv-lite: no mmcv._ext, so mmcv.ops (and mmdet's models) cannot be imported"
        if compiled:
            from mmcv.ops import get_compiler_version, get_compiling_cuda_version

            cuda = get_compiling_cuda_version()
            with_cuda = bool(cuda) and cuda != "not available"
            devices = ["cpu", "cuda"] if with_cuda else ["cpu"]
            build = (f"mmcv ops compiled with {get_compiler_version()}, "
                     f"{'CUDA ' + cuda if with_cuda else 'without CUDA'}")
        script = mmdet_train_script()
        facts.update(compiled_mmcv_devices=devices, mmcv_build=build, train_script=str(script) if script else None,
                     imported_pisa_train="pisa_train" in sys.modules)
    return facts


def ask_python(python: str, tool: str, device: str) -> dict:
    """describe_python(tool, device), run by ``python``; dict(error=...) when it cannot answer."""
    command = [python, str(Path(__file__).resolve()), "--describe-python", tool, "--describe-device", device]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    except OSError as problem:
        return dict(executable=python, error=f"cannot run {python}: {problem}")
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        return dict(executable=python, error=f"{python} could not describe itself (exit code {result.returncode}): "
                                             f"{lines[-1].strip() if lines else 'no output'}")
    return json.loads(result.stdout)


def kernels_label(facts: dict) -> str:
    """Whose kernels mmcv's ops (RoIAlign, NMS, nms_match) run on in the command, for the table."""
    if "error" in facts:
        return "unknown"
    devices, device = facts["compiled_mmcv_devices"], facts["device"]
    compiled = f"compiled mmcv ({', '.join(d.upper() for d in devices)})"
    if facts["tool"] == "pisa-train":
        if facts["ops_backend"] == "mmcv":
            return compiled
        if not devices:
            return "torchvision/torch (pisa-train, mmcv-lite)"
        return f"torchvision RoIAlign and NMS, {compiled} otherwise"
    if device in devices:
        return compiled
    if devices:
        return f"{compiled}: no {device.upper()} kernels"
    return "none (mmcv-lite)"


def version_differences(pythons: dict) -> dict:
    """The packages whose versions differ between the two commands' Pythons (mmcv by version, whether
    mmcv or mmcv-lite): beyond the kernels, any of these would also be in the ratio."""
    if any("error" in facts for facts in pythons.values()):
        return {}
    versions = {tool: dict(python=facts["python"], torch=facts["torch"], torchvision=facts["torchvision"],
                           mmcv=facts["mmcv"] or facts["mmcv-lite"], mmdet=facts["mmdet"], mmengine=facts["mmengine"])
                for tool, facts in pythons.items()}
    ours, theirs = (versions[tool] for tool in TOOLS)
    return {name: {tool: versions[tool][name] for tool in TOOLS} for name in ours if ours[name] != theirs[name]}


def tool_command(tool: str, python: str, config: Path, work_dir: Path, mode: str,
                 mmdet_script: str | None) -> list[str]:
    flags = ["--work-dir", str(work_dir), *(["--amp"] if mode == "amp" else [])]
    if tool == "pisa-train":
        return [python, "-m", "pisa_train.cli.train", str(config), *flags]
    return [python, str(mmdet_script), str(config), *flags]


def logged_ops_backend(log_path: Path) -> str | None:
    """The RoIAlign and NMS kernels pisa-train's log says it used (engine/runner.py's describe_run)."""
    found = re.findall(r"RoIAlign and NMS kernels: (\w+)", log_path.read_text(errors="replace"))
    return found[-1] if found else None


def run_and_measure(command: list[str], log_path: Path) -> tuple[int, float, float, str]:
    """Run ``command`` with its output in ``log_path``; its exit code, peak RSS in MiB (wait4:
    the larger of the process and the children it waited for, its dataloader workers), wall
    seconds and last output line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall = time.perf_counter() - start
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return process.returncode, usage.ru_maxrss / 1024, wall, lines[-1].strip() if lines else ""


# ---- figures ---------------------------------------------------------------------------------

def read_iterations(work_dir: Path) -> list[dict]:
    """The training iterations MMEngine logged in the newest WORK_DIR/<timestamp>/vis_data/scalars.json."""
    logs = sorted(work_dir.glob("*/vis_data/scalars.json"))
    if not logs:
        raise ValueError(f"no */vis_data/scalars.json under {work_dir}: the run logged no iteration")
    entries = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    return [entry for entry in entries if "time" in entry and "data_time" in entry]


def summarize(iterations: list[dict], warmup: int, batch: int, peak_rss_mib: float) -> dict:
    """s/iter, data s/iter, images/s and peak memory over the iterations after the warm-up."""
    timed = [entry for entry in iterations if entry["step"] > warmup]
    if not timed:
        raise ValueError(f"no iteration after the {warmup} warm-up iterations was logged "
                         f"({len(iterations)} logged)")
    seconds = sum(entry["time"] for entry in timed) / len(timed)
    figures = dict(iterations=len(timed), s_per_iter=round(seconds, 4),
                   data_s_per_iter=round(sum(entry["data_time"] for entry in timed) / len(timed), 4),
                   images_per_s=round(batch / seconds, 3),
                   # Same seed, config and kernels: both commands should compute the same losses.
                   losses=[round(entry["loss"], 4) for entry in timed if "loss" in entry])
    gpu_memory = [entry["memory"] for entry in timed if "memory" in entry]
    if gpu_memory:
        figures.update(peak_memory_mib=float(max(gpu_memory)), peak_memory_kind="torch.cuda.max_memory_allocated")
    else:
        figures.update(peak_memory_mib=round(peak_rss_mib, 1), peak_memory_kind="peak RSS")
    figures["peak_rss_mib"] = round(peak_rss_mib, 1)
    return figures


def ratio(runs: dict) -> float | None:
    """pisa-train's s/iter over mmdet's (above 1: pisa-train is slower)."""
    ours, theirs = (runs.get(tool, {}).get("s_per_iter") for tool in TOOLS)
    return round(ours / theirs, 3) if ours and theirs else None


def check_modes(modes: list[str], has_gpu: bool) -> list[str]:
    """The modes to run, in order, without repeats; ValueError for a mode that needs a GPU on a machine without."""
    chosen = list(dict.fromkeys(mode for name in modes for mode in (MODES if name == "all" else [name])))
    needs_gpu = [mode for mode in chosen if mode != "fp32"]
    if needs_gpu and not has_gpu:
        raise ValueError(f"--mode {' and '.join(needs_gpu)} needs a CUDA GPU (mmengine 0.10.7's AmpOptimWrapper "
                         f"asserts one) and this machine has none; run --mode fp32")
    return chosen


def machine_name(gpu_name: str | None) -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    cores = f"{cpu}, {len(os.sched_getaffinity(0))} cores"
    return f"{gpu_name} ({cores})" if gpu_name else f"{cores}, no GPU"


def utilisation(result: dict) -> str:
    if "mfu" not in result:
        return "n/a"
    peak = result["peak_tflops"]
    return f"{100 * result['mfu']:.1f}% of {peak['value']:g} {peak['precision']} TFLOPS ({peak['gpu']})"


def markdown_table(record: dict) -> list[str]:
    lines = ["| machine | command | mmcv kernels | mode | image | batch | s/iter | data s/iter | images/s "
             "| peak memory (MiB) | s/iter vs mmdet | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    size = "x".join(map(str, record["image_size"]))
    for run in record["runs"]:
        for tool in TOOLS:
            result = run[tool]
            start = (f"| {record['machine']} | {tool} | {result.get('kernels', 'not recorded')} | {run['mode']} "
                     f"| {size} | {record['batch']} |")
            if "s_per_iter" not in result:
                lines.append(f"{start} failed: {result['error']} | | | | | |")
                continue
            versus = ("1 (reference)" if tool == "mmdet"
                      else f"{run['ratio_s_per_iter']:.3f}" if run["ratio_s_per_iter"] else "n/a (mmdet failed)")
            lines.append(f"{start} {result['s_per_iter']:.3f} | {result['data_s_per_iter']:.3f} | "
                         f"{result['images_per_s']:.3f} | {result['peak_memory_mib']:.0f} "
                         f"({result['peak_memory_kind']}) | {versus} | {utilisation(result)} |")
    return lines


# ---- how close to the hardware ---------------------------------------------------------------

# Peak dense (no structured sparsity) tensor-core rates in TFLOPS from NVIDIA's datasheets, which
# quote the sparse rate, twice these, with an asterisk. Matched in order against
# torch.cuda.get_device_name (H100 SXM reports itself as "NVIDIA H100 80GB HBM3").
PEAK_DENSE_TFLOPS = (
    (r"H100 NVL", "H100 NVL", dict(tf32=417.5, fp16=835.5, bf16=835.5),
     "https://www.nvidia.com/en-us/data-center/h100/ (datasheet, H100 NVL column)"),
    (r"H100 PCIe", "H100 PCIe", dict(tf32=378.0, fp16=756.0, bf16=756.0),
     "https://www.nvidia.com/en-us/data-center/h100/ (datasheet, H100 PCIe column)"),
    (r"H100", "H100 SXM", dict(tf32=494.5, fp16=989.5, bf16=989.5),
     "https://www.nvidia.com/en-us/data-center/h100/ (datasheet, H100 SXM column)"),
    (r"H200 NVL", "H200 NVL", dict(tf32=417.5, fp16=835.5, bf16=835.5),
     "https://www.nvidia.com/en-us/data-center/h200/ (datasheet, H200 NVL column)"),
    (r"H200", "H200 SXM", dict(tf32=494.5, fp16=989.5, bf16=989.5),
     "https://www.nvidia.com/en-us/data-center/h200/ (datasheet, H200 SXM column)"),
    (r"A100", "A100", dict(tf32=156.0, fp16=312.0, bf16=312.0),
     "https://www.nvidia.com/en-us/data-center/a100/ (datasheet; SXM and PCIe alike)"),
    (r"L40S", "L40S", dict(tf32=183.0, fp16=362.05, bf16=362.05),
     "https://www.nvidia.com/en-us/data-center/l40s/ (datasheet)"),
    (r"\bA10\b", "A10", dict(tf32=62.5, fp16=125.0, bf16=125.0),
     "https://www.nvidia.com/en-us/data-center/products/a10-gpu/ (datasheet)"),
    (r"\bL4\b", "L4", dict(tf32=60.0, fp16=121.0, bf16=121.0),
     "https://www.nvidia.com/en-us/data-center/l4/ (datasheet)"),
)
# The precision whose peak a mode is measured against (fp32: cuDNN convolutions in TF32 by default).
MODE_PRECISION = dict(fp32="tf32", amp="fp16", bf16="bf16")


def peak_dense_tflops(gpu_name: str | None, mode: str) -> tuple[float, str, str] | None:
    """(TFLOPS, the GPU as the table names it, source) for the mode's precision, or None when not listed."""
    for pattern, label, rates, source in PEAK_DENSE_TFLOPS:
        if gpu_name and re.search(pattern, gpu_name):
            return rates[MODE_PRECISION[mode]], label, source
    return None


def model_flops_utilisation(forward_flops_per_image: float, images_per_s: float, peak_tflops: float) -> float:
    """Training FLOPs per second (forward x3: the backward pass costs about twice the forward) over the peak."""
    return 3 * forward_flops_per_image * images_per_s / (peak_tflops * 1e12)


def training_forward_flops(config: Path, width: int, height: int, device: str = "cpu") -> dict:
    """FLOPs of one training image's forward pass at width x height: backbone, neck and RPN head on the
    image, the RoI head on as many RoIs as the training sampler keeps per image (fixed boxes, so the
    count does not depend on how many proposals an untrained RPN lets through). mmengine counts a
    multiply-add as one FLOP (fvcore's convention): doubled here."""
    import pisa_train  # noqa: F401, PLC0415  (first: building the model imports mmcv.ops, which needs mmcv._ext)

    # isort: split
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.analysis import get_model_complexity_info
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).to(device).eval()
    rois_per_image = int(cfg.model.train_cfg.rcnn.sampler.num)
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(rois_per_image, 2, 2, generator=generator) * torch.tensor([width, height])
    rois = torch.cat([torch.zeros(rois_per_image, 1), corners.min(1).values, corners.max(1).values + 1], 1)

    class TrainingForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image):
            features = self.model.extract_feat(image)
            rpn_scores, rpn_boxes = self.model.rpn_head(features)
            head = self.model.roi_head._bbox_forward(features, rois.to(image.device))
            return rpn_scores, rpn_boxes, head["cls_score"], head["bbox_pred"]

    image = torch.rand(1, 3, height, width, device=device)
    with torch.no_grad():
        counted = get_model_complexity_info(TrainingForward(), inputs=(image,), show_table=False, show_arch=False)
    return dict(forward_flops_per_image=2 * counted["flops"], rois_per_image=rois_per_image,
                image_size=[width, height], counted_by="mmengine.analysis.get_model_complexity_info (x2)")


def add_utilisation(record: dict, gpu_name: str | None) -> None:
    """Each finished run's MFU against the GPU's peak for its mode, where both are known."""
    flops = record.get("flops", {}).get("forward_flops_per_image")
    for run in record["runs"]:
        peak = peak_dense_tflops(gpu_name, run["mode"])
        for tool in TOOLS:
            result = run.get(tool, {})
            if flops and peak and "images_per_s" in result:
                result["mfu"] = round(model_flops_utilisation(flops, result["images_per_s"], peak[0]), 4)
                result["peak_tflops"] = dict(value=peak[0], precision=MODE_PRECISION[run["mode"]], gpu=peak[1],
                                             source=peak[2])


# ---- the benchmark ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="iterations run first and not timed (default 3)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration (default 2, the config's)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"),
                        help=f"image size (default {GPU_SIZE[0]}x{GPU_SIZE[1]} on a GPU, "
                             f"{CPU_SIZE[0]}x{CPU_SIZE[1]} without one)")
    parser.add_argument("--mode", action="append", choices=[*MODES, "all"],
                        help="fp32 (default), amp (fp16), bf16 or all; repeatable")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers (default 2, the config's)")
    parser.add_argument("--mmdet-python", type=Path, metavar="PYTHON",
                        help=f"the Python that runs mmdet's tools/train.py, which needs compiled mmcv (default: "
                             f"{COMPILED_MMCV_VENV}/bin/python in the repository when it exists, else the Python "
                             f"running this script); pisa-train runs with the Python running this script")
    parser.add_argument("--out-dir", type=Path, default=REPO / "work_dirs" / "train_speed",
                        help="where each invocation's data, configs and work dirs go (in a folder of its own)")
    parser.add_argument("--json", metavar="FILE", help="also write the record to FILE")
    parser.add_argument("--flops", action=argparse.BooleanOptionalAction, default=None,
                        help="count the model's FLOPs and report MFU (default: on a GPU)")
    # Run by the benchmark in each command's Python: describe_python's JSON on stdout.
    parser.add_argument("--describe-python", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--describe-device", choices=("cpu", "cuda"), default="cpu", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.describe_python:
        print(json.dumps(describe_python(args.describe_python, args.describe_device)))
        return 0
    if args.iters < 1 or args.warmup < 0 or args.batch < 1 or args.workers < 0:
        parser.error("--iters and --batch must be at least 1, --warmup and --workers at least 0")
    mmdet_python, mmdet_python_chosen_by = choose_mmdet_python(args.mmdet_python)
    if not os.access(mmdet_python, os.X_OK) or os.path.isdir(mmdet_python):
        parser.error(f"--mmdet-python {mmdet_python}: no such executable; give the path of a Python with mmdet "
                     f"and compiled mmcv, such as {COMPILED_MMCV_VENV}/bin/python")
    import torch

    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        modes = check_modes(args.mode or ["fp32"], gpu_name is not None)
    except ValueError as refused:
        parser.error(str(refused))
    device = "cuda" if gpu_name else "cpu"
    pythons = {tool: ask_python(python, tool, device)
               for tool, python in (("pisa-train", sys.executable), ("mmdet", mmdet_python))}
    for tool, facts in pythons.items():
        facts["kernels"] = kernels_label(facts)
        print(f"[train_speed] {tool}: {facts['executable']}, mmcv kernels: {facts['kernels']}"
              + (f" ({facts['error']})" if "error" in facts else ""), file=sys.stderr, flush=True)
    mmdet_script = pythons["mmdet"].get("train_script")
    mmdet_cannot_run = device not in pythons["mmdet"].get("compiled_mmcv_devices", [device])
    if mmdet_cannot_run:
        print(f"[train_speed] {mmdet_python} has {pythons['mmdet']['mmcv_build']}; mmdet's tools/train.py needs "
              f"mmcv compiled with {device.upper()} ops and will fail: {HOW_TO_GET_COMPILED_MMCV}",
              file=sys.stderr, flush=True)
    differences = version_differences(pythons)
    if differences:
        print(f"[train_speed] the two Pythons differ in more than mmcv's kernels: {json.dumps(differences)}",
              file=sys.stderr, flush=True)

    width, height = args.size or (GPU_SIZE if gpu_name else CPU_SIZE)
    max_iters = args.warmup + args.iters
    folder = args.out_dir / time.strftime("%Y%m%d_%H%M%S")
    while folder.exists():
        folder = folder.with_name(folder.name + "_")
    generate_dataset(folder / "data", args.batch * max_iters, width, height)

    record = dict(machine=machine_name(gpu_name), device=device,
                  config=str(CONFIG.relative_to(REPO)), image_size=[width, height], batch=args.batch,
                  warmup_iterations=args.warmup, timed_iterations=args.iters, dataloader_workers=args.workers,
                  mmdet_python=mmdet_python, mmdet_python_chosen_by=mmdet_python_chosen_by, pythons=pythons,
                  version_differences=differences,
                  mmdet_train_script=mmdet_script, runs=[])
    failed = False
    for mode in modes:
        config = folder / f"pisa_x101_benchmark_{mode}.py"
        config.write_text(benchmark_config_text(CONFIG, folder / "data", width, height, args.batch, args.workers,
                                                max_iters, mode))
        run = dict(mode=mode)
        for tool in TOOLS:
            facts = pythons[tool]
            work_dir = folder / f"{mode}_{tool}"
            if "error" in facts or (tool == "mmdet" and mmdet_script is None):
                problem = facts.get("error") or (f"mmdet's tools/train.py is not installed for {mmdet_python} "
                                                 f"(site-packages/mmdet/.mim/tools/)")
                run[tool] = dict(python=facts["executable"], kernels=facts["kernels"], error=problem)
                failed = True
                continue
            command = tool_command(tool, facts["executable"], config, work_dir, mode, mmdet_script)
            work_dir.mkdir(parents=True)
            print(f"[train_speed] {mode}, {tool}: {' '.join(command)}", file=sys.stderr, flush=True)
            log = work_dir / f"{tool}.log"
            code, peak_rss, wall, last_line = run_and_measure(command, log)
            result = dict(python=facts["executable"], kernels=facts["kernels"], command=command, exit_code=code,
                          wall_s=round(wall, 1), log=str(log))
            if tool == "pisa-train":
                result["logged_ops_backend"] = logged_ops_backend(log)
            try:
                if code != 0:
                    hint = (f"; mmdet's tools/train.py needs mmcv compiled with {device.upper()} ops: "
                            f"{HOW_TO_GET_COMPILED_MMCV}") if tool == "mmdet" and mmdet_cannot_run else ""
                    raise ValueError(f"exit code {code}: {last_line}{hint}")
                result.update(summarize(read_iterations(work_dir), args.warmup, args.batch, peak_rss))
            except ValueError as problem:
                result["error"] = str(problem)
                failed = True
                print(f"[train_speed] {mode}, {tool} failed: {problem} (full output: {result['log']})",
                      file=sys.stderr, flush=True)
            run[tool] = result
        run["ratio_s_per_iter"] = ratio(run)
        record["runs"].append(run)

    if args.flops if args.flops is not None else gpu_name is not None:
        print("[train_speed] counting the model's FLOPs per training image", file=sys.stderr, flush=True)
        record["flops"] = training_forward_flops(CONFIG, width, height, device)
        add_utilisation(record, gpu_name)

    text = json.dumps(record, indent=2)
    print(text)
    print("\n".join(markdown_table(record)))
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
