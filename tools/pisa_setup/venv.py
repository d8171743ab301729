"""The venv: creating it (seeing the system's torch or not), and installing the torch pair, the build tools,
pyproject.toml's dependencies and extras, and pisa-train itself into it."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tempfile
from pathlib import Path

from .context import SetupContext, run, say
from .messages import SetupFailed
from .pins import Pins, build_tool_requirements, compiled_mmcv_version, package_requirements, version_tuple

# A .pth file in the venv naming the site-packages of the Python that ran the set-up, when that
# Python is itself a venv (whose packages --system-site-packages would not show).
SYSTEM_PACKAGES_PTH = "_pisa_train_system_packages.pth"


def create_venv(ctx: SetupContext, use_system_torch: bool) -> None:
    """Create the venv; with ``use_system_torch`` it sees the packages of the Python running the set-up."""
    venv = ctx.venv
    if ctx.venv_python.exists():
        sees_system = "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text() \
            or any(venv.glob(f"lib/python*/site-packages/{SYSTEM_PACKAGES_PTH}"))
        if use_system_torch and not sees_system:
            raise SetupFailed(f"{ctx.shown_path(venv)}/ was created without the system's packages, so it cannot "
                              f"use the system's torch; remove it (rm -r {ctx.shown_path(venv)}) and run again")
        return
    in_a_venv = sys.prefix != sys.base_prefix
    say(f"creating {ctx.shown_path(venv)}/ with {sys.executable} (Python {sys.version.split()[0]})"
        + (", seeing its packages (--use-system-torch)" if use_system_torch else ""))
    # venv's --system-site-packages shows the base interpreter's packages, not those of a venv that
    # runs it; for a venv (a cluster's module, a conda env is not one) its site-packages go in a .pth.
    system_site = ["--system-site-packages"] if use_system_torch and not in_a_venv else []
    run([sys.executable, "-m", "venv", *system_site, str(venv)])
    if use_system_torch and in_a_venv:
        own = ctx.venv_python_json("import json, sysconfig; print(json.dumps({'p': sysconfig.get_paths()['purelib']}))")
        # addsitedir, not bare paths: the .pth files in those folders (editable installs, namespace
        # packages) must be read as they are for that Python itself.
        (Path(own["p"]) / SYSTEM_PACKAGES_PTH).write_text(
            "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()))


def system_torch(pins: Pins) -> dict:
    """torch and torchvision as the Python running the set-up has them; SetupFailed when missing or too old."""
    probe = subprocess.run(
        [sys.executable, "-c", "import json, torch, torchvision; print(json.dumps("
         "{'torch': torch.__version__, 'torchvision': torchvision.__version__, 'cuda': torch.version.cuda}))"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupFailed(f"--use-system-torch: {sys.executable} cannot import torch and torchvision ({last}); "
                          f"install them there first, or leave out --use-system-torch to install torch "
                          f"{pins.torch} into the venv")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    floor = pins.torch_floor
    if version_tuple(found["torch"]) < version_tuple(floor):
        raise SetupFailed(f"--use-system-torch: {sys.executable} has torch {found['torch']}, older than {floor}, "
                          f"the oldest pisa-train supports (mmcv 2.1.0 is built from source against torch's "
                          f"C++ API; pyproject.toml: torch>={floor}); upgrade torch there, or leave out "
                          f"--use-system-torch")
    return found


def install_build_tools(ctx: SetupContext, mmcv: str) -> None:
    tools = build_tool_requirements(ctx.pins, mmcv)
    say(f"installing {', '.join(tools)}" + (" (needed to build mmcv)" if mmcv == "compiled" else ""))
    ctx.pip("install", "--quiet", "--upgrade", *tools)


def install_torch(ctx: SetupContext) -> None:
    have_torch = ctx.installed_version("torch")
    have_vision = ctx.installed_version("torchvision")
    want_torch, want_vision = ctx.pins.torch, ctx.pins.torchvision
    if have_torch and have_torch.split("+")[0] == want_torch and have_vision \
            and have_vision.split("+")[0] == want_vision:
        say(f"torch {have_torch} and torchvision {have_vision} already installed")
        return
    say(f"installing torch=={want_torch} torchvision=={want_vision} (a few GB; takes a minute or more)")
    ctx.pip("install", "--quiet", f"torch=={want_torch}", f"torchvision=={want_vision}")


def describe_torch(ctx: SetupContext) -> dict:
    return ctx.venv_python_json(
        "import json, sys, torch, torchvision\n"
        "cuda = torch.cuda.is_available()\n"
        "caps = sorted({'%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}) if cuda else []\n"
        "print(json.dumps({'torch': torch.__version__.split('+')[0], 'cuda': torch.version.cuda,\n"
        "  'torchvision': torchvision.__version__.split('+')[0],\n"
        "  'gpu': cuda, 'capabilities': caps, 'python': 'cp%d%d' % sys.version_info[:2]}))")


def install_packages(ctx: SetupContext, mmcv_wheel: Path | None, torch_info: dict) -> None:
    """pyproject.toml's dependencies, extras and test dependencies, and pisa-train (editable); with
    ``mmcv_wheel``, compiled mmcv from it in mmcv-lite's place."""
    pins = ctx.pins
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        # Nothing installed below may replace the torch pair or the build tools.
        constraints.write(f"torch=={torch_info['torch']}\ntorchvision=={torch_info['torchvision']}\n"
                          f"setuptools{pins.build_setuptools}\n")
    try:
        requirements = package_requirements(pins, "compiled" if mmcv_wheel else "lite")
        if mmcv_wheel:
            if ctx.installed_version("mmcv-lite"):
                # Both install the package mmcv: the compiled one replaces the lite one, not beside it.
                say("removing mmcv-lite: compiled mmcv takes its place")
                ctx.pip("uninstall", "--quiet", "--yes", "mmcv-lite")
            installed_mmcv = ctx.installed_version("mmcv")
            say(f"installing mmcv from {mmcv_wheel.name}" if installed_mmcv != compiled_mmcv_version(pins)
                else "compiled mmcv already installed; checking the other packages")
            if installed_mmcv and not mmcv_is_the_venvs_own(ctx):
                # The venv sees another environment's mmcv (--use-system-torch; gpu_check's CPU-only
                # venv beside a CUDA one): pip would call that one good enough. Put this wheel in front.
                say(f"installing {mmcv_wheel.name} into {ctx.shown_path(ctx.venv)}/, in front of the mmcv it "
                    f"sees outside it")
                ctx.pip("install", "--quiet", "--no-deps", "--force-reinstall", str(mmcv_wheel))
            requirements = [str(mmcv_wheel), *requirements]
        elif ctx.installed_version("mmcv"):
            # A venv set up with MMCV=compiled before: back to mmcv-lite, whose files are the same package.
            say("removing compiled mmcv: mmcv-lite takes its place (make setup MMCV=compiled brings it back)")
            ctx.pip("uninstall", "--quiet", "--yes", "mmcv")
        say("installing " + ", ".join(requirements)
            + (f" from {ctx.offline_from} (no index)" if ctx.offline_from else ""))
        ctx.pip("install", "--quiet", "-c", constraints.name, *requirements)
        say("installing pisa-train (editable)")
        ctx.pip("install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(ctx.repo_root))
    finally:
        os.unlink(constraints.name)


def mmcv_is_the_venvs_own(ctx: SetupContext) -> bool:
    where = ctx.venv_python_json("import json, importlib.metadata as m\n"
                                 "print(json.dumps({'at': str(m.distribution('mmcv').locate_file(''))}))")["at"]
    return Path(where).resolve().is_relative_to(ctx.venv.resolve())
