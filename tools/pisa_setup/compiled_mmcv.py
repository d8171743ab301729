"""``--mmcv compiled``: mmcv with its compiled ops, from a wheel cached outside the repository, built first
from mmcv's sdist (patched for torch 2.x's C++20 headers and Python 3.13) when none matches this mmcv,
torch, CPU/CUDA and Python."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from . import package_index
from .context import SetupContext, cache_dir, say
from .messages import SetupFailed
from .pins import Pins, compiled_mmcv_version

# Written beside each mmcv wheel the set-up builds: how long it took, with what (tools/gpu_check.py reads it).
BUILD_RECORD = "build.json"


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def mmcv_build_plan(torch_info: dict, pins: Pins) -> dict:
    """Decide CPU-only or CUDA build and the cache key that names the wheel."""
    forced = os.environ.get("PISA_MMCV_CUDA")
    nvcc = find_nvcc()
    if forced is not None:
        with_cuda = forced == "1"
    else:
        with_cuda = bool(nvcc and torch_info["gpu"] and torch_info["cuda"])
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(torch_info["capabilities"])
    if with_cuda and not torch_info["cuda"]:
        raise SetupFailed("PISA_MMCV_CUDA=1 but this torch is a CPU-only build; install a CUDA build of torch")
    if with_cuda and not nvcc:
        raise SetupFailed("PISA_MMCV_CUDA=1 but nvcc was not found; set CUDA_HOME or put nvcc on PATH")
    if with_cuda and not arch_list:
        raise SetupFailed("no GPU visible to read its architecture from; set TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0')")
    if forced == "0":
        cpu_only_reason = "PISA_MMCV_CUDA=0"
    elif not torch_info["gpu"]:
        cpu_only_reason = "no GPU visible"
    elif not torch_info["cuda"]:
        cpu_only_reason = "torch is a CPU-only build"
    else:
        cpu_only_reason = "nvcc not found; set CUDA_HOME to build the CUDA ops"
    flavour = "cpu"
    if with_cuda:
        flavour = "cu" + torch_info["cuda"].replace(".", "") + "-sm" + arch_list.replace(".", "").replace(";", "-").replace("+PTX", "ptx")
    mmcv_version = compiled_mmcv_version(pins)
    key = f"mmcv-{mmcv_version}_torch-{torch_info['torch']}_{flavour}_{torch_info['python']}_{os.uname().machine}"
    return {"with_cuda": with_cuda, "arch_list": arch_list, "cpu_only_reason": cpu_only_reason, "nvcc": nvcc, "key": key,
            "mmcv_version": mmcv_version, "wheel_dir": cache_dir() / "wheels" / key}


def cached_wheel(plan: dict) -> Path | None:
    wheels = sorted(plan["wheel_dir"].glob("mmcv-*.whl"))
    return wheels[0] if wheels else None


def patch_mmcv_setup_py(setup_py: Path) -> None:
    """Make mmcv 2.1.0's setup.py build against torch >= 2.x headers, on Python 3.10 to 3.13.

    torch 2.14's headers refuse anything older than C++20 ("#error C++20 or later
    compatible compiler is required to use ATen"), and mmcv 2.1.0 hard-codes
    -std=c++17 for both the C++ and the CUDA compiler.

    Its get_version() runs mmcv/version.py with exec() and reads ``__version__``
    back from ``locals()``. Since Python 3.13 (PEP 667) locals() in a function is
    a snapshot that exec() does not write into: ``KeyError: '__version__'``. The
    patched version execs into a dict of its own, which works on every Python.
    """
    text = setup_py.read_text()
    patched, count = re.subn(r"c\+\+17", "c++20", text)
    if count == 0:
        raise SetupFailed(f"{setup_py} no longer names -std=c++17; the mmcv sdist changed, update patch_mmcv_setup_py")
    patched, count = re.subn(
        r"exec\(compile\(f\.read\(\), version_file, 'exec'\)\)(\n\s*)return locals\(\)\['__version__'\]",
        r"namespace = {}; exec(compile(f.read(), version_file, 'exec'), namespace)\1return namespace['__version__']",
        patched)
    if count == 0:
        raise SetupFailed(f"{setup_py} no longer reads __version__ from locals(); the mmcv sdist changed, "
                          f"update patch_mmcv_setup_py")
    setup_py.write_text(patched)


def mmcv_sdist(ctx: SetupContext) -> Path:
    """mmcv's sdist: from the wheelhouse offline, else from the cache, else downloaded into the cache
    (kept, so that a later build on this machine, a CPU-only one for gpu_check say, needs no network)."""
    version = compiled_mmcv_version(ctx.pins)
    name = f"mmcv-{version}.tar.gz"
    if ctx.offline_from is not None:
        sdist = ctx.offline_from / name
        if not sdist.is_file():
            raise SetupFailed(f"the wheelhouse {ctx.offline_from} has no {name}; write it again with "
                              f"tools/setup_env.py --wheelhouse")
        return sdist
    cached = cache_dir() / "sdists" / name
    if not cached.is_file():
        say(f"downloading the mmcv {version} sdist")
        try:
            package_index.download_sdist("mmcv", version, cached.parent)
        except package_index.IndexProblem as problem:
            raise SetupFailed(f"{problem}; check the network (or install offline: docs/getting_started.md, 'Offline install')")
    return cached


def compile_jobs() -> str:
    """MAX_JOBS, else the cores this process may run on (a cluster job's share, not the whole node's)."""
    return os.environ.get("MAX_JOBS") or str(len(os.sched_getaffinity(0)) or 1)


def build_mmcv_wheel(ctx: SetupContext, plan: dict) -> Path:
    plan["wheel_dir"].parent.mkdir(parents=True, exist_ok=True)
    log_dir = cache_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{plan['key']}.log"
    with tempfile.TemporaryDirectory(prefix="pisa-mmcv-build-") as work:
        work_dir = Path(work)
        sdist = mmcv_sdist(ctx)
        with tarfile.open(sdist) as archive:
            archive.extractall(work_dir, filter="data")
        source = next(p for p in work_dir.iterdir() if p.is_dir() and p.name.startswith("mmcv-"))
        patch_mmcv_setup_py(source / "setup.py")

        env = dict(os.environ)
        env["MMCV_WITH_OPS"] = "1"
        # Python's own CFLAGS carry -g; debug info makes the build slower and the
        # wheel several times larger, and nobody debugs mmcv's kernels from it.
        env["CFLAGS"] = (env.get("CFLAGS", "") + " -g0").strip()
        env["MAX_JOBS"] = compile_jobs()
        if plan["with_cuda"]:
            env["FORCE_CUDA"] = "1"
            env["TORCH_CUDA_ARCH_LIST"] = plan["arch_list"]
            what = f"CPU and CUDA ops (TORCH_CUDA_ARCH_LIST={plan['arch_list']}, nvcc {plan['nvcc']})"
        else:
            env["FORCE_CUDA"] = "0"
            env["CUDA_VISIBLE_DEVICES"] = ""  # mmcv builds CUDA ops whenever a GPU is visible
            what = f"CPU ops only ({plan['cpu_only_reason']})"
        say(f"building mmcv {plan['mmcv_version']} with {what}, {env['MAX_JOBS']} parallel jobs; "
            f"5 to 25 minutes on 2 cores; full log: {log_path}")
        out_dir = work_dir / "wheel"
        started = time.monotonic()
        progress = re.compile(r"^\s*\[(\d+)/(\d+)\]")
        last_reported = -1
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [str(ctx.venv_python), "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
                 "-w", str(out_dir), str(source)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                match = progress.match(line)
                if match:
                    done, total = int(match.group(1)), int(match.group(2))
                    # One line per 10% keeps CI logs short but shows it is alive.
                    if done * 10 // total != last_reported or done == total:
                        last_reported = done * 10 // total
                        minutes = (time.monotonic() - started) / 60
                        say(f"compiling mmcv ops: {done}/{total} files, {minutes:.1f} min so far")
            returncode = process.wait()
        if returncode != 0:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
            raise SetupFailed(f"building mmcv failed (exit {returncode}); last lines:\n{tail}\nfull log: {log_path}")
        wheel = next(out_dir.glob("mmcv-*.whl"))
        # Publish atomically: a half-copied wheel must never look like a cached one.
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=plan["wheel_dir"].parent))
        shutil.copy2(wheel, staging / wheel.name)
        minutes = (time.monotonic() - started) / 60
        # What gpu_check reports as the mmcv build: kept beside the wheel, as the wheel outlives the venv.
        (staging / BUILD_RECORD).write_text(json.dumps({
            "minutes": round(minutes, 2), "with_cuda": plan["with_cuda"], "arch_list": plan["arch_list"],
            "max_jobs": int(env["MAX_JOBS"]), "nvcc": plan["nvcc"], "key": plan["key"],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
        if plan["wheel_dir"].exists():
            shutil.rmtree(plan["wheel_dir"])
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as ~/.cache
        os.replace(staging, plan["wheel_dir"])
        say(f"built {wheel.name} in {minutes:.1f} min; cached in {plan['wheel_dir']}")
    return cached_wheel(plan)


def obtain_mmcv_wheel(ctx: SetupContext, plan: dict) -> Path:
    wheel = cached_wheel(plan)
    if wheel:
        say(f"using the cached mmcv wheel {wheel}")
        return wheel
    plan["wheel_dir"].parent.mkdir(parents=True, exist_ok=True)
    lock_path = plan["wheel_dir"].parent / f"{plan['key']}.lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Two mmcv builds at once on a small machine take twice as long each.
            say(f"another set-up is building this mmcv wheel; waiting for it ({lock_path})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        wheel = cached_wheel(plan)
        if wheel:
            say(f"using the mmcv wheel the other set-up built: {wheel}")
            return wheel
        return build_mmcv_wheel(ctx, plan)
