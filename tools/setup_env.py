#!/usr/bin/env python3
"""Create or update ``.venv/`` with everything pisa-train needs, on a fresh machine.

What it does, in order (each step is skipped when already done):

1. creates ``.venv/`` in the repository root with the Python running this script;
2. installs torch and torchvision (the pair named in pyproject.toml's
   ``[tool.pisa-train.setup]``, or ``TORCH_VERSION`` / ``TORCHVISION_VERSION``);
3. installs mmcv with its compiled ops from a cached wheel, building the wheel
   from mmcv's sdist first when no wheel matches this mmcv, torch, CPU/CUDA and
   Python (the build takes 5 to 25 minutes on 2 cores; the wheel is cached
   outside the repository, so the next set-up on this machine takes minutes);
4. installs mmdet, mmengine, pycocotools, openmim and pisa-train itself, with
   the versions pinned in pyproject.toml, without downgrading anything;
5. checks the result: mmcv's ops run, and ``pip check`` reports nothing but the
   one documented exception.

It is not a general installer: it builds the one environment this project is
tested with. It uses only the standard library because it runs before the
environment it builds exists.

Environment variables: TORCH_VERSION, TORCHVISION_VERSION (another torch pair),
PISA_TRAIN_CACHE (wheel cache; default ~/.cache/pisa-train), MAX_JOBS (parallel
compile jobs), PISA_MMCV_CUDA=0|1 (force the CPU-only or the CUDA build of mmcv).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = REPO_ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".pisa-train-setup.json"

# pip messages that pip check may print and that we accept, with the reason in
# the README ("Environment notes"). Anything else fails the set-up.
ACCEPTED_PIP_CHECK_LINES = (
    # openmim's dependency opendatalab pulls in openxlab, which would downgrade
    # setuptools below what torch needs; mim's commands that we use work without it.
    re.compile(r"^openmim [\d.]+ requires opendatalab, which is not installed\.$"),
)

# The Pythons the set-up is measured on (README, "Python versions"). Below 3.10 there is no
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


def check_python_version(version_info=sys.version_info) -> None:
    """Refuse, before anything is downloaded, a Python the set-up has not been proven on."""
    version = ".".join(map(str, version_info[:3]))
    oldest, newest = SUPPORTED_PYTHONS
    if tuple(version_info[:2]) < oldest:
        raise SetupFailed(
            f"{sys.executable} is Python {version}; pisa-train needs Python {oldest[0]}.{oldest[1]} to "
            f"{newest[0]}.{newest[1]} (torch {TORCH_FLOOR_NOTE}): run make setup PYTHON=python3.11")
    if tuple(version_info[:2]) > newest and not os.environ.get("PISA_TRAIN_UNTESTED_PYTHON"):
        raise SetupFailed(
            f"{sys.executable} is Python {version}; the set-up is proven on Python {oldest[0]}.{oldest[1]} "
            f"to {newest[0]}.{newest[1]} (README, 'Python versions'), and newer Pythons have broken mmcv "
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
    return {
        "pinned": pinned,
        "requirements": list(project["project"]["dependencies"]),
        "torch": os.environ.get("TORCH_VERSION") or setup["torch"],
        "torchvision": os.environ.get("TORCHVISION_VERSION") or setup["torchvision"],
        "build_setuptools": setup["build-setuptools"],
        "openmim_dependencies": setup["openmim-dependencies"],
        "test_dependencies": setup["test-dependencies"],
    }


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, **kwargs)


def pip(*args: str) -> None:
    run([str(VENV_PYTHON), "-m", "pip", "--disable-pip-version-check", *args])


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


def create_venv() -> None:
    if VENV_PYTHON.exists():
        return
    say(f"creating {VENV.relative_to(REPO_ROOT)}/ with {sys.executable} (Python {sys.version.split()[0]})")
    run([sys.executable, "-m", "venv", str(VENV)])


def install_build_tools(pins: dict) -> None:
    say(f"installing pip, setuptools{pins['build_setuptools']}, wheel and ninja (needed to build mmcv)")
    pip("install", "--quiet", "--upgrade", "pip", f"setuptools{pins['build_setuptools']}", "wheel", "ninja")


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
        "import json, sys, torch\n"
        "cuda = torch.cuda.is_available()\n"
        "caps = sorted({'%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}) if cuda else []\n"
        "print(json.dumps({'torch': torch.__version__.split('+')[0], 'cuda': torch.version.cuda,\n"
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
    mmcv_version = read_pins()["pinned"]["mmcv"]
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


def build_mmcv_wheel(plan: dict, pins: dict) -> Path:
    plan["wheel_dir"].parent.mkdir(parents=True, exist_ok=True)
    log_dir = cache_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{plan['key']}.log"
    with tempfile.TemporaryDirectory(prefix="pisa-mmcv-build-") as work:
        work_dir = Path(work)
        say(f"downloading the mmcv {plan['mmcv_version']} sdist")
        pip("download", "--quiet", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            "-d", str(work_dir), f"mmcv=={plan['mmcv_version']}")
        sdist = next(work_dir.glob("mmcv-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            archive.extractall(work_dir, filter="data")
        source = next(p for p in work_dir.iterdir() if p.is_dir() and p.name.startswith("mmcv-"))
        patch_mmcv_setup_py(source / "setup.py")

        env = dict(os.environ)
        env["MMCV_WITH_OPS"] = "1"
        # Python's own CFLAGS carry -g; debug info makes the build slower and the
        # wheel several times larger, and nobody debugs mmcv's kernels from it.
        env["CFLAGS"] = (env.get("CFLAGS", "") + " -g0").strip()
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
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
        if plan["wheel_dir"].exists():
            shutil.rmtree(plan["wheel_dir"])
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as ~/.cache
        os.replace(staging, plan["wheel_dir"])
        say(f"built {wheel.name} in {(time.monotonic() - started) / 60:.1f} min; cached in {plan['wheel_dir']}")
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


def install_packages(pins: dict, mmcv_wheel: Path, torch_info: dict) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        # Nothing installed below may replace the torch pair or the build tools.
        constraints.write(f"torch=={torch_info['torch']}\ntorchvision=={pins['torchvision']}\n"
                          f"setuptools{pins['build_setuptools']}\n")
    try:
        installed_mmcv = installed_version("mmcv")
        say(f"installing mmcv from {mmcv_wheel.name}" if installed_mmcv != pins["pinned"]["mmcv"]
            else "mmcv already installed; checking the other packages")
        requirements = [r for r in pins["requirements"]
                        if not re.match(r"^(mmcv|openmim|torch|torchvision)\b", r)]
        say("installing " + ", ".join(requirements + pins["openmim_dependencies"] + pins["test_dependencies"]))
        pip("install", "--quiet", "-c", constraints.name, str(mmcv_wheel), *requirements,
            *pins["openmim_dependencies"], *pins["test_dependencies"])
        say(f"installing openmim=={pins['pinned']['openmim']} without openxlab (it would downgrade setuptools)")
        pip("install", "--quiet", "--no-deps", f"openmim=={pins['pinned']['openmim']}")
        say("installing pisa-train (editable)")
        pip("install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(REPO_ROOT))
    finally:
        os.unlink(constraints.name)


def verify_environment() -> dict:
    say("checking that mmcv's compiled ops run and that mmdet imports")
    report = venv_python_json(
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
        "print(json.dumps({'torch': torch.__version__, 'mmcv': mmcv.__version__, 'mmdet': mmdet.__version__,\n"
        "  'mmengine': mmengine.__version__, 'mmcv_cuda_ops': bool(cuda_ops)}))")
    check = subprocess.run([str(VENV_PYTHON), "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in check.stdout.splitlines()
                if line.strip() and not line.startswith("No broken requirements")
                and not any(p.match(line) for p in ACCEPTED_PIP_CHECK_LINES)]
    if problems:
        raise SetupFailed("pip check found inconsistencies:\n  " + "\n  ".join(problems))
    say("pip check: consistent (apart from openmim's opendatalab, see README 'Environment notes')")
    return report


def main() -> int:
    started = time.monotonic()
    try:
        check_python_version()
        pins = read_pins()
        wanted = {"pins": pins, "python": sys.version.split()[0],
                  "pyproject": (REPO_ROOT / "pyproject.toml").read_text(),
                  "setup_script": Path(__file__).read_text()}
        if STAMP.exists() and VENV_PYTHON.exists():
            recorded = json.loads(STAMP.read_text())
            if recorded.get("wanted") == wanted:
                say(f"environment in {VENV.relative_to(REPO_ROOT)}/ is up to date "
                    f"(torch {pins['torch']}, mmcv {pins['pinned']['mmcv']}, mmdet {pins['pinned']['mmdet']})")
                return 0
            STAMP.unlink()
        create_venv()
        install_build_tools(pins)
        install_torch(pins)
        torch_info = describe_torch()
        plan = mmcv_build_plan(torch_info)
        wheel = obtain_mmcv_wheel(plan, pins)
        install_packages(pins, wheel, torch_info)
        report = verify_environment()
        STAMP.write_text(json.dumps({"wanted": wanted, "installed": report, "mmcv_wheel": str(wheel)}, indent=1))
        say(f"done in {(time.monotonic() - started) / 60:.1f} min: torch {report['torch']}, mmcv {report['mmcv']} "
            f"(CUDA ops: {'yes' if report['mmcv_cuda_ops'] else 'no'}), mmdet {report['mmdet']}, "
            f"mmengine {report['mmengine']}")
        return 0
    except SetupFailed as error:
        print(f"[setup] error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"[setup] error: `{' '.join(map(str, error.cmd))}` failed with exit code {error.returncode}; "
              f"see its output above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
