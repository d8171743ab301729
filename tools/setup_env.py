#!/usr/bin/env python3
"""Create or update ``.venv/`` with everything pisa-train needs, on a fresh machine.

What it does, in order (each step is skipped when already done):

1. creates ``.venv/`` in the repository root with the Python running this script;
2. installs torch and torchvision (the pair named in pyproject.toml's
   ``[tool.pisa-train.setup]``, or ``TORCH_VERSION`` / ``TORCHVISION_VERSION``);
3. installs mmdet, mmengine, mmcv-lite, pycocotools and pisa-train itself, with
   the versions pinned in pyproject.toml, without downgrading anything. Nothing is
   compiled: mmcv-lite is mmcv's Python code, and pisa-train answers the kernels
   its models call with torchvision's and torch's
   (pisa_train/engine/patches/mmcv_ext_from_torchvision.py);
4. checks the result: mmcv's RoIAlign, NMS and nms_match run, and ``pip check``
   reports nothing.

``--mmcv compiled`` (``make setup MMCV=compiled``) installs mmcv with its compiled
ops instead of mmcv-lite, for upstream's exact kernels: from a cached wheel, built
from mmcv's sdist first when no wheel matches this mmcv, torch, CPU/CUDA and Python
(5 to 25 minutes on 2 cores, with a C++ compiler, and nvcc for CUDA kernels; the
wheel is cached outside the repository, so the next set-up on this machine takes
minutes).

Offline install (docs/getting_started.md, "Offline install"):

    setup_env.py --wheelhouse DIR [--target-has FREEZE] [--target-python X.Y]
        writes every file the install needs except torch/torchvision into DIR
        (tools/wheelhouse.py), leaving out what the target's `pip freeze` lists;
    setup_env.py --offline DIR [--use-system-torch] [--venv DIR] [--mmcv compiled]
        installs from DIR alone (pip --no-index); --use-system-torch makes the
        venv see the packages of the Python running this script, torch among
        them, instead of installing torch (--system-site-packages, or, when that
        Python is itself a venv, a .pth file naming its site-packages).

It is not a general installer: it builds the one environment this project is
tested with. It uses only the standard library because it runs before the
environment it builds exists.

Environment variables: TORCH_VERSION, TORCHVISION_VERSION (another torch pair),
PISA_TRAIN_CACHE (wheel and sdist cache; default ~/.cache/pisa-train), MAX_JOBS
(parallel compile jobs; default: the cores this process may use),
PISA_MMCV_CUDA=0|1 (force the CPU-only or the CUDA build of mmcv),
PISA_TRAIN_UNTESTED_PYTHON=1 (try a Python newer than 3.13).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import package_index  # noqa: E402  (tools/, beside this script)
import wheelhouse  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = REPO_ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".pisa-train-setup.json"
# Set from the command line by main(): the wheelhouse to install from (None: the package index).
OFFLINE_FROM: Path | None = None
# A .pth file in the venv naming the site-packages of the Python that ran the set-up, when that
# Python is itself a venv (whose packages --system-site-packages would not show).
SYSTEM_PACKAGES_PTH = "_pisa_train_system_packages.pth"
# What the set-up installs into the venv first: pip, and setuptools for pisa-train's editable install.
BASE_TOOLS = ("pip",)
# And before building mmcv (--mmcv compiled).
BUILD_TOOLS = ("wheel", "ninja")
MMCV_CHOICES = ("lite", "compiled")
# Written beside each mmcv wheel the set-up builds: how long it took, with what (tools/gpu_check.py reads it).
BUILD_RECORD = "build.json"

# pip messages that pip check may print and that we accept, with the reason in
# docs/getting_started.md ("Environment notes"). Anything else fails the set-up.
# With --mmcv compiled, mmcv replaces the mmcv-lite that pisa-train's package requires: the same
# Python code, plus the compiled ops.
# A venv set up before mmcv-lite became the default holds openmim without its opendatalab (installed so,
# as openxlab downgraded setuptools); pisa-train no longer installs openmim, and leaves it be.
OLD_OPENMIM = re.compile(r"^openmim [\d.]+ requires opendatalab, which is not installed\.$")
ACCEPTED_PIP_CHECK_LINES = {
    "lite": (OLD_OPENMIM,),
    "compiled": (OLD_OPENMIM, re.compile(r"^pisa-train [\d.]+ requires mmcv-lite, which is not installed\.$")),
}

# The Pythons the set-up is measured on (docs/getting_started.md, "Python versions"). Below 3.10 there is no
# torch 2.14 and pisa-train's code needs 3.10.
SUPPORTED_PYTHONS = ((3, 10), (3, 13))
TORCH_FLOOR_NOTE = "2.14 has no wheels for older Pythons, and pisa-train's code needs 3.10"


def say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


class SetupFailed(Exception):
    """A step failed; the message says which and what to do."""


def load_toml(text: str) -> dict:
    """Parse TOML with tomllib (Python >= 3.11), else tomli, else the copy of tomli that pip vendors
    (pip >= 21.2): on Python 3.10 the set-up then needs nothing that is not already there."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            try:
                from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise SetupFailed(
                    f"this set-up reads pyproject.toml with tomllib (Python >= 3.11) or tomli; "
                    f"{sys.executable} is Python {sys.version.split()[0]} without either: "
                    f"`{sys.executable} -m pip install tomli`, or run it with python3.11 or newer")
    return tomllib.loads(text)


def check_python_version(version_info=sys.version_info, python: str = sys.executable) -> None:
    """Refuse, before anything is downloaded, a Python the set-up has not been proven on."""
    version = ".".join(map(str, version_info[:3]))
    oldest, newest = SUPPORTED_PYTHONS
    if tuple(version_info[:2]) < oldest:
        raise SetupFailed(
            f"{python} is Python {version}; pisa-train needs Python {oldest[0]}.{oldest[1]} to "
            f"{newest[0]}.{newest[1]} (torch {TORCH_FLOOR_NOTE}): run make setup PYTHON=python3.11")
    if tuple(version_info[:2]) > newest and not os.environ.get("PISA_TRAIN_UNTESTED_PYTHON"):
        raise SetupFailed(
            f"{python} is Python {version}; the set-up is proven on Python {oldest[0]}.{oldest[1]} "
            f"to {newest[0]}.{newest[1]} (docs/getting_started.md, 'Python versions'), and newer Pythons have broken mmcv "
            f"2.1.0's setup.py before (3.13's PEP 667): run make setup PYTHON=python3.11, or set "
            f"PISA_TRAIN_UNTESTED_PYTHON=1 to try this one")


def read_pins() -> dict:
    project = load_toml((REPO_ROOT / "pyproject.toml").read_text())
    pinned = {}
    for requirement in project["project"]["dependencies"]:
        name, sep, version = requirement.partition("==")
        if sep:
            pinned[name.strip().lower()] = version.strip()
    setup = project["tool"]["pisa-train"]["setup"]
    torch_floor = next(r.partition(">=")[2].strip() for r in project["project"]["dependencies"]
                       if re.match(r"^torch\s*>=", r))
    return {
        "pinned": pinned,
        "torch_floor": torch_floor,
        "requirements": list(project["project"]["dependencies"]),
        "torch": os.environ.get("TORCH_VERSION") or setup["torch"],
        "torchvision": os.environ.get("TORCHVISION_VERSION") or setup["torchvision"],
        "build_setuptools": setup["build-setuptools"],
        "test_dependencies": setup["test-dependencies"],
    }


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, **kwargs)


def use_venv(path: Path) -> None:
    global VENV, VENV_PYTHON, STAMP
    VENV, VENV_PYTHON, STAMP = path, path / "bin" / "python", path / ".pisa-train-setup.json"


def pip_environment() -> dict:
    """pip's environment: offline, the wheelhouse and nothing else (no index, no find-links or
    constraints from pip's configuration files or PIP_* variables)."""
    env = dict(os.environ)
    if OFFLINE_FROM is not None:
        for variable in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONSTRAINT"):
            env.pop(variable, None)
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
    return env


def pip(*args: str) -> None:
    source = ["--no-index", "--find-links", str(OFFLINE_FROM)] if OFFLINE_FROM and args[0] == "install" else []
    run([str(VENV_PYTHON), "-m", "pip", "--disable-pip-version-check", *args, *source], env=pip_environment())


def venv_python_json(code: str) -> dict:
    out = subprocess.run([str(VENV_PYTHON), "-c", code], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def installed_version(distribution: str) -> str | None:
    code = ("import json, importlib.metadata as m\n"
            "try: v = m.version(%r)\n"
            "except m.PackageNotFoundError: v = None\n"
            "print(json.dumps({'v': v}))" % distribution)
    return venv_python_json(code)["v"]


def cache_dir() -> Path:
    root = os.environ.get("PISA_TRAIN_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pisa-train"


def shown_path(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def create_venv(use_system_torch: bool) -> None:
    """Create the venv; with ``use_system_torch`` it sees the packages of the Python running this script."""
    if VENV_PYTHON.exists():
        sees_system = "include-system-site-packages = true" in (VENV / "pyvenv.cfg").read_text() \
            or any(VENV.glob(f"lib/python*/site-packages/{SYSTEM_PACKAGES_PTH}"))
        if use_system_torch and not sees_system:
            raise SetupFailed(f"{shown_path(VENV)}/ was created without the system's packages, so it cannot use "
                              f"the system's torch; remove it (rm -r {shown_path(VENV)}) and run again")
        return
    in_a_venv = sys.prefix != sys.base_prefix
    say(f"creating {shown_path(VENV)}/ with {sys.executable} (Python {sys.version.split()[0]})"
        + (", seeing its packages (--use-system-torch)" if use_system_torch else ""))
    # venv's --system-site-packages shows the base interpreter's packages, not those of a venv that
    # runs it; for a venv (a cluster's module, a conda env is not one) its site-packages go in a .pth.
    system_site = ["--system-site-packages"] if use_system_torch and not in_a_venv else []
    run([sys.executable, "-m", "venv", *system_site, str(VENV)])
    if use_system_torch and in_a_venv:
        own = venv_python_json("import json, sysconfig; print(json.dumps({'p': sysconfig.get_paths()['purelib']}))")
        # addsitedir, not bare paths: the .pth files in those folders (editable installs, namespace
        # packages) must be read as they are for that Python itself.
        (Path(own["p"]) / SYSTEM_PACKAGES_PTH).write_text(
            "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()))


def system_torch(pins: dict) -> dict:
    """torch and torchvision as the Python running this script has them; SetupFailed when missing or too old."""
    probe = subprocess.run(
        [sys.executable, "-c", "import json, torch, torchvision; print(json.dumps("
         "{'torch': torch.__version__, 'torchvision': torchvision.__version__, 'cuda': torch.version.cuda}))"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupFailed(f"--use-system-torch: {sys.executable} cannot import torch and torchvision ({last}); "
                          f"install them there first, or leave out --use-system-torch to install torch "
                          f"{pins['torch']} into the venv")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    floor = pins["torch_floor"]
    if version_tuple(found["torch"]) < version_tuple(floor):
        raise SetupFailed(f"--use-system-torch: {sys.executable} has torch {found['torch']}, older than {floor}, "
                          f"the oldest pisa-train supports (mmcv 2.1.0 is built from source against torch's "
                          f"C++ API; pyproject.toml: torch>={floor}); upgrade torch there, or leave out "
                          f"--use-system-torch")
    return found


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def install_build_tools(pins: dict, mmcv: str) -> None:
    tools = build_tool_requirements(pins, mmcv)
    say(f"installing {', '.join(tools)}" + (" (needed to build mmcv)" if mmcv == "compiled" else ""))
    pip("install", "--quiet", "--upgrade", *tools)


def build_tool_requirements(pins: dict, mmcv: str) -> list[str]:
    return [*BASE_TOOLS, *(BUILD_TOOLS if mmcv == "compiled" else ()), f"setuptools{pins['build_setuptools']}"]


def install_torch(pins: dict) -> None:
    have_torch = installed_version("torch")
    have_vision = installed_version("torchvision")
    want_torch, want_vision = pins["torch"], pins["torchvision"]
    if have_torch and have_torch.split("+")[0] == want_torch and have_vision \
            and have_vision.split("+")[0] == want_vision:
        say(f"torch {have_torch} and torchvision {have_vision} already installed")
        return
    say(f"installing torch=={want_torch} torchvision=={want_vision} (a few GB; takes a minute or more)")
    pip("install", "--quiet", f"torch=={want_torch}", f"torchvision=={want_vision}")


def describe_torch() -> dict:
    return venv_python_json(
        "import json, sys, torch, torchvision\n"
        "cuda = torch.cuda.is_available()\n"
        "caps = sorted({'%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}) if cuda else []\n"
        "print(json.dumps({'torch': torch.__version__.split('+')[0], 'cuda': torch.version.cuda,\n"
        "  'torchvision': torchvision.__version__.split('+')[0],\n"
        "  'gpu': cuda, 'capabilities': caps, 'python': 'cp%d%d' % sys.version_info[:2]}))")


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def mmcv_build_plan(torch_info: dict) -> dict:
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
    mmcv_version = compiled_mmcv_version(read_pins())
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


def mmcv_sdist(version: str) -> Path:
    """mmcv's sdist: from the wheelhouse offline, else from the cache, else downloaded into the cache
    (kept, so that a later build on this machine, a CPU-only one for gpu_check say, needs no network)."""
    name = f"mmcv-{version}.tar.gz"
    if OFFLINE_FROM is not None:
        sdist = OFFLINE_FROM / name
        if not sdist.is_file():
            raise SetupFailed(f"the wheelhouse {OFFLINE_FROM} has no {name}; write it again with "
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


def build_mmcv_wheel(plan: dict, pins: dict) -> Path:
    plan["wheel_dir"].parent.mkdir(parents=True, exist_ok=True)
    log_dir = cache_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{plan['key']}.log"
    with tempfile.TemporaryDirectory(prefix="pisa-mmcv-build-") as work:
        work_dir = Path(work)
        sdist = mmcv_sdist(plan["mmcv_version"])
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
                [str(VENV_PYTHON), "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
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


def obtain_mmcv_wheel(plan: dict, pins: dict) -> Path:
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
        return build_mmcv_wheel(plan, pins)


def compiled_mmcv_version(pins: dict) -> str:
    """Compiled mmcv is the release whose Python code mmcv-lite carries: one pin for both."""
    return pins["pinned"]["mmcv-lite"]


def package_requirements(pins: dict, mmcv: str) -> list[str]:
    """What the set-up installs besides torch, torchvision and a compiled mmcv (the wheelhouse holds the
    same): pyproject.toml's dependencies, mmcv-lite left out where compiled mmcv takes its place."""
    left_out = ("torch", "torchvision") + (("mmcv-lite",) if mmcv == "compiled" else ())
    requirements = [r for r in pins["requirements"] if re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0] not in left_out]
    return requirements + pins["test_dependencies"]


def install_packages(pins: dict, mmcv_wheel: Path | None, torch_info: dict) -> None:
    """pyproject.toml's dependencies and pisa-train (editable); with ``mmcv_wheel``, compiled mmcv from it
    in mmcv-lite's place."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        # Nothing installed below may replace the torch pair or the build tools.
        constraints.write(f"torch=={torch_info['torch']}\ntorchvision=={torch_info['torchvision']}\n"
                          f"setuptools{pins['build_setuptools']}\n")
    try:
        requirements = package_requirements(pins, "compiled" if mmcv_wheel else "lite")
        if mmcv_wheel:
            if installed_version("mmcv-lite"):
                # Both install the package mmcv: the compiled one replaces the lite one, not beside it.
                say("removing mmcv-lite: compiled mmcv takes its place")
                pip("uninstall", "--quiet", "--yes", "mmcv-lite")
            installed_mmcv = installed_version("mmcv")
            say(f"installing mmcv from {mmcv_wheel.name}" if installed_mmcv != compiled_mmcv_version(pins)
                else "compiled mmcv already installed; checking the other packages")
            if installed_mmcv and not mmcv_is_the_venvs_own():
                # The venv sees another environment's mmcv (--use-system-torch; gpu_check's CPU-only
                # venv beside a CUDA one): pip would call that one good enough. Put this wheel in front.
                say(f"installing {mmcv_wheel.name} into {shown_path(VENV)}/, in front of the mmcv it sees outside it")
                pip("install", "--quiet", "--no-deps", "--force-reinstall", str(mmcv_wheel))
            requirements = [str(mmcv_wheel), *requirements]
        elif installed_version("mmcv"):
            # A venv set up with MMCV=compiled before: back to mmcv-lite, whose files are the same package.
            say("removing compiled mmcv: mmcv-lite takes its place (make setup MMCV=compiled brings it back)")
            pip("uninstall", "--quiet", "--yes", "mmcv")
        say("installing " + ", ".join(requirements) + (f" from {OFFLINE_FROM} (no index)" if OFFLINE_FROM else ""))
        pip("install", "--quiet", "-c", constraints.name, *requirements)
        say("installing pisa-train (editable)")
        pip("install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(REPO_ROOT))
    finally:
        os.unlink(constraints.name)


def mmcv_is_the_venvs_own() -> bool:
    where = venv_python_json("import json, importlib.metadata as m\n"
                             "print(json.dumps({'at': str(m.distribution('mmcv').locate_file(''))}))")["at"]
    return Path(where).resolve().is_relative_to(VENV.resolve())


# Run in the new venv, after `import pisa_train` (which provides mmcv._ext where mmcv has none): the kernels
# mmcv-lite's ops get from torchvision and torch run, forward and backward, and give the known answers.
CHECK_KERNELS_WITHOUT_COMPILED_MMCV = (
    "import json, torch, pisa_train, mmcv, mmdet, mmengine\n"
    "from mmcv.ops import batched_nms, nms, nms_match, roi_align\n"
    "from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled\n"
    "assert not mmcv_ext_is_compiled()\n"
    "boxes, scores = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]]), "
    "torch.tensor([0.9, 0.8, 0.7])\n"
    "assert nms(boxes, scores, 0.5)[1].tolist() == [0, 2]\n"
    "assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(iou_threshold=0.5))[1].tolist() == [0, 1, 2]\n"
    "assert [g.tolist() for g in nms_match(torch.cat([boxes, scores[:, None]], 1), 0.5)] == [[0, 1], [2]]\n"
    "features = torch.ones(1, 1, 8, 8, requires_grad=True)\n"
    "out = roi_align(features, torch.tensor([[0., 0., 0., 4., 4.]]), (2, 2), 1.0, 2)\n"
    "out.sum().backward()\n"
    "assert out.shape == (1, 1, 2, 2) and torch.allclose(out, torch.ones(1)), out\n"
    "assert abs(features.grad.sum().item() - 4.0) < 1e-5, features.grad.sum()\n"
    "print(json.dumps({'torch': torch.__version__, 'mmcv': mmcv.__version__ + ' (mmcv-lite)', "
    "'mmdet': mmdet.__version__, 'mmengine': mmengine.__version__, 'mmcv_kernels': 'torchvision and torch', "
    "'mmcv_cuda_ops': False, 'gpu': torch.cuda.is_available(), 'cuda_ops_checked_on_gpu': False}))")


def verify_environment(mmcv: str) -> dict:
    if mmcv == "lite":
        say("checking that mmcv-lite's RoIAlign (forward, backward), NMS, batched_nms and nms_match run on "
            "torchvision's and torch's kernels, and that mmdet imports")
        report = venv_python_json(CHECK_KERNELS_WITHOUT_COMPILED_MMCV)
    else:
        report = verify_compiled_mmcv()
    check = subprocess.run([str(VENV_PYTHON), "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in check.stdout.splitlines()
                if line.strip() and not line.startswith("No broken requirements")
                and not any(p.match(line) for p in ACCEPTED_PIP_CHECK_LINES[mmcv])]
    if problems:
        raise SetupFailed("pip check found inconsistencies:\n  " + "\n  ".join(problems))
    say("pip check: consistent" + (" (compiled mmcv stands in for the mmcv-lite pisa-train requires)"
                                   if mmcv == "compiled" else ""))
    return report


def verify_compiled_mmcv() -> dict:
    say("checking that mmcv's compiled ops run (on the GPU too, when it has CUDA ops and one is visible) "
        "and that mmdet imports")
    return venv_python_json(
        "import json, torch, mmcv, mmdet, mmengine\n"
        "from mmcv.ops import nms, roi_align\n"
        "boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])\n"
        "keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)[1].tolist()\n"
        "assert keep == [0, 2], keep\n"
        "out = roi_align(torch.ones(1, 1, 8, 8), torch.tensor([[0., 0., 0., 4., 4.]]), (2, 2), 1.0, 0)\n"
        "assert out.shape == (1, 1, 2, 2)\n"
        "from mmcv.utils import ext_loader\n"
        "ext = ext_loader.load_ext('_ext', ['get_compiler_version'])\n"
        "cuda_ops = hasattr(ext, 'get_compiling_cuda_version') and mmcv.ops.get_compiling_cuda_version() != 'not available'\n"
        "gpu = torch.cuda.is_available()\n"
        "if cuda_ops and gpu:  # the CUDA kernels run on the GPU and agree with the CPU ones\n"
        "    gpu_keep = nms(boxes.cuda(), torch.tensor([0.9, 0.8, 0.7]).cuda(), 0.5)[1].tolist()\n"
        "    assert gpu_keep == keep, gpu_keep\n"
        "    feats, rois = torch.rand(1, 2, 16, 16), torch.tensor([[0., 1., 2., 9., 12.]])\n"
        "    gpu_out = roi_align(feats.cuda(), rois.cuda(), (3, 3), 1.0, 2).cpu()\n"
        "    assert torch.allclose(gpu_out, roi_align(feats, rois, (3, 3), 1.0, 2), atol=1e-5)\n"
        "print(json.dumps({'torch': torch.__version__, 'mmcv': mmcv.__version__, 'mmdet': mmdet.__version__,\n"
        "  'mmengine': mmengine.__version__, 'mmcv_cuda_ops': bool(cuda_ops), 'gpu': gpu,\n"
        "  'cuda_ops_checked_on_gpu': bool(cuda_ops and gpu)}))")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/setup_env.py", description=__doc__.splitlines()[0],
        epilog="docs/getting_started.md: 'Set-up', 'Offline install', 'Compiled mmcv', 'Python versions'.")
    parser.add_argument("--venv", type=Path, default=REPO_ROOT / ".venv",
                        help="the virtual environment to create or update (default: .venv/ in the repository)")
    parser.add_argument("--mmcv", choices=MMCV_CHOICES, default="lite",
                        help="lite (default): mmcv-lite, with RoIAlign, NMS and nms_match from torchvision and "
                             "torch, nothing compiled; compiled: mmcv with its compiled ops, built from the sdist "
                             "once and cached (5 to 25 minutes, needs a C++ compiler; nvcc for CUDA kernels)")
    parser.add_argument("--offline", metavar="DIR", type=Path,
                        help="install from this wheelhouse alone (pip --no-index); see --wheelhouse")
    parser.add_argument("--use-system-torch", action="store_true",
                        help="use the torch and torchvision of the Python running this script instead of "
                             "installing torch: the venv sees its packages")
    group = parser.add_argument_group("writing a wheelhouse (on a machine with the package index)")
    group.add_argument("--wheelhouse", metavar="DIR", type=Path,
                       help="write every file the install needs except torch/torchvision into DIR, with "
                            "manifest.json, and install nothing")
    group.add_argument("--target-has", metavar="FREEZE", type=Path,
                       help="the target's `pip freeze` output: leave out the packages it lists and resolve "
                            "the rest against their versions")
    group.add_argument("--target-python", metavar="X.Y", default="%d.%d" % sys.version_info[:2],
                       help="the target's Python (default: this one's, %(default)s)")
    return parser


def write_wheelhouse(args: argparse.Namespace, pins: dict) -> None:
    target_has: dict = {}
    if args.target_has:
        if not args.target_has.is_file():
            raise SetupFailed(f"--target-has {args.target_has}: no such file; on the target run "
                              f"`python -m pip freeze > {args.target_has.name}` and copy it here")
        target_has = wheelhouse.read_freeze(args.target_has.read_text())
    if not re.fullmatch(r"3\.\d+", args.target_python):
        raise SetupFailed(f"--target-python {args.target_python}: give the target's Python as X.Y, e.g. 3.12")
    check_python_version((*map(int, args.target_python.split(".")), 0), python="--target-python")
    manifest = wheelhouse.build(
        args.wheelhouse.resolve(), build_tools=build_tool_requirements(pins, args.mmcv),
        requirements=package_requirements(pins, args.mmcv),
        mmcv_sdist_version=compiled_mmcv_version(pins) if args.mmcv == "compiled" else None,
        target_has=target_has, target_python=args.target_python, say=say)
    for line in wheelhouse.summary_lines(manifest):
        say(line)
    say(f"wrote {args.wheelhouse}/ (list: {args.wheelhouse}/{wheelhouse.MANIFEST}); on the target: "
        f"python tools/setup_env.py --offline {args.wheelhouse} --use-system-torch"
        + (" --mmcv compiled" if args.mmcv == "compiled" else ""))


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    global OFFLINE_FROM
    args = build_parser().parse_args(argv)
    try:
        check_python_version()
        pins = read_pins()
        if args.wheelhouse:
            write_wheelhouse(args, pins)
            return 0
        use_venv(args.venv.resolve())
        if args.offline:
            OFFLINE_FROM = args.offline.resolve()
            manifest = wheelhouse.verify(OFFLINE_FROM)
            say(f"installing offline from {args.offline} ({len(manifest['files'])} files, checked against "
                f"their SHA-256 in {wheelhouse.MANIFEST})")
        found_torch = system_torch(pins) if args.use_system_torch else None
        if OFFLINE_FROM and not found_torch and not list(OFFLINE_FROM.glob("torch-*.whl")):
            raise SetupFailed(f"--offline {args.offline} without --use-system-torch needs torch and torchvision "
                              f"wheels, and a wheelhouse leaves them out: add --use-system-torch to use the "
                              f"machine's torch, or copy torch=={pins['torch']} and torchvision=="
                              f"{pins['torchvision']} wheels into {args.offline}")
        wanted = {"pins": pins, "mmcv": args.mmcv, "python": sys.version.split()[0], "system_torch": found_torch,
                  "offline": str(OFFLINE_FROM) if OFFLINE_FROM else None,
                  "pyproject": (REPO_ROOT / "pyproject.toml").read_text(),
                  "setup_scripts": [(Path(__file__).parent / name).read_text()
                                    for name in ("setup_env.py", "wheelhouse.py", "package_index.py")]}
        if STAMP.exists() and VENV_PYTHON.exists():
            recorded = json.loads(STAMP.read_text())
            if recorded.get("wanted") == wanted:
                say(f"environment in {shown_path(VENV)}/ is up to date "
                    f"(torch {(found_torch or pins)['torch']}, mmcv {compiled_mmcv_version(pins)} "
                    f"{'compiled' if args.mmcv == 'compiled' else '(mmcv-lite)'}, mmdet {pins['pinned']['mmdet']})")
                return 0
            STAMP.unlink()
        create_venv(args.use_system_torch)
        install_build_tools(pins, args.mmcv)
        if found_torch:
            say(f"using the system's torch {found_torch['torch']} and torchvision {found_torch['torchvision']} "
                f"(CUDA {found_torch['cuda'] or 'none'}) from {sys.executable}")
        else:
            install_torch(pins)
        torch_info = describe_torch()
        wheel = None
        if args.mmcv == "compiled":
            plan = mmcv_build_plan(torch_info)
            if torch_info["gpu"] and not plan["with_cuda"]:
                say(f"a GPU is visible but mmcv gets CPU ops only ({plan['cpu_only_reason']}); on the GPU, "
                    f"--ops-backend auto (the default) runs torchvision's RoIAlign and NMS instead of mmcv's")
            wheel = obtain_mmcv_wheel(plan, pins)
        install_packages(pins, wheel, torch_info)
        report = verify_environment(args.mmcv)
        STAMP.write_text(json.dumps({"wanted": wanted, "installed": report,
                                     "mmcv_wheel": str(wheel) if wheel else None}, indent=1))
        kernels = report.get("mmcv_kernels") or ("compiled; CUDA ops: " + (
            "yes, checked on the GPU" if report["cuda_ops_checked_on_gpu"] else
            "yes" if report["mmcv_cuda_ops"] else "no"))
        say(f"done in {(time.monotonic() - started) / 60:.1f} min: torch {report['torch']}, mmcv {report['mmcv']} "
            f"(kernels: {kernels}), "
            f"mmdet {report['mmdet']}, mmengine {report['mmengine']}")
        return 0
    except (SetupFailed, wheelhouse.WheelhouseProblem) as error:
        print(f"[setup] error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"[setup] error: `{' '.join(map(str, error.cmd))}` failed with exit code {error.returncode}; "
              f"see its output above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
