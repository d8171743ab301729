"""What the set-up installs, as pyproject.toml pins it (its only source), and the Pythons it accepts."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .messages import SetupFailed

# pyproject.toml is read with tomllib (Python >= 3.11), else tomli, else the copy of tomli that pip vendors
# (pip >= 21.2): on Python 3.10 the set-up then needs nothing that is not already there.
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        try:
            from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            tomllib = None  # load_toml says what to install

# The Pythons the set-up is measured on (docs/getting_started.md, "Python versions"). Below 3.10 there is no
# torch 2.14 and pisa-train's code needs 3.10.
SUPPORTED_PYTHONS = ((3, 10), (3, 13))
TORCH_FLOOR_NOTE = "2.14 has no wheels for older Pythons, and pisa-train's code needs 3.10"
MMCV_CHOICES = ("lite", "compiled")
# What the set-up installs into the venv first: pip, and setuptools for pisa-train's editable install.
BASE_TOOLS = ("pip",)
# And before building mmcv (--mmcv compiled).
BUILD_TOOLS = ("wheel", "ninja")
PROJECT_NAME = "pisa-train"


@dataclass(frozen=True)
class Pins:
    pinned: dict  # distribution name -> version, for the dependencies pinned with ==
    torch_floor: str  # the oldest torch pisa-train supports (torch>=X in the dependencies)
    requirements: list  # [project] dependencies, as written
    torch: str  # the torch and torchvision the set-up installs
    torchvision: str
    build_setuptools: str  # the setuptools range mmcv's build and the editable install need
    test_dependencies: list  # [tool.pisa-train.setup] test-dependencies
    extras: dict  # [project.optional-dependencies]: extra name -> its requirements, as written
    extras_left_out: list  # [tool.pisa-train.setup] extras-left-out: extras the set-up does not install


def load_toml(text: str) -> dict:
    if tomllib is None:
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


def requirement_name(requirement: str) -> str:
    """The normalized distribution name a requirement string names (``Pillow>=9`` -> ``pillow``)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~\[;@(]", requirement.strip(), maxsplit=1)[0]).lower()


def read_pins(repo_root: Path) -> Pins:
    project = load_toml((repo_root / "pyproject.toml").read_text())
    dependencies = list(project["project"]["dependencies"])
    pinned = {}
    for requirement in dependencies:
        name, sep, version = requirement.partition("==")
        if sep:
            pinned[name.strip().lower()] = version.strip()
    setup = project["tool"]["pisa-train"]["setup"]
    torch_floor = next(r.partition(">=")[2].strip() for r in dependencies if re.match(r"^torch\s*>=", r))
    return Pins(
        pinned=pinned,
        torch_floor=torch_floor,
        requirements=dependencies,
        torch=os.environ.get("TORCH_VERSION") or setup["torch"],
        torchvision=os.environ.get("TORCHVISION_VERSION") or setup["torchvision"],
        build_setuptools=setup["build-setuptools"],
        test_dependencies=list(setup.get("test-dependencies", [])),
        extras={name: list(requirements)
                for name, requirements in project["project"].get("optional-dependencies", {}).items()},
        extras_left_out=list(setup.get("extras-left-out", [])),
    )


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def compiled_mmcv_version(pins: Pins) -> str:
    """Compiled mmcv is the release whose Python code mmcv-lite carries: one pin for both."""
    return pins.pinned["mmcv-lite"]


def build_tool_requirements(pins: Pins, mmcv: str) -> list[str]:
    return [*BASE_TOOLS, *(BUILD_TOOLS if mmcv == "compiled" else ()), f"setuptools{pins.build_setuptools}"]


def package_requirements(pins: Pins, mmcv: str) -> list[str]:
    """What the set-up installs besides torch, torchvision and a compiled mmcv (the wheelhouse holds the
    same): pyproject.toml's dependencies, mmcv-lite left out where compiled mmcv takes its place, then the
    requirements of every optional extra but those pyproject.toml's extras-left-out names, and the test
    dependencies. Each distribution once, as first named; an extra that names pisa-train itself
    (``all = ["pisa-train[export,test]"]``) adds nothing, as the extras it names are here already."""
    left_out = {"torch", "torchvision", PROJECT_NAME} | ({"mmcv-lite"} if mmcv == "compiled" else set())
    extras = [requirement for name in sorted(pins.extras) if name not in pins.extras_left_out
              for requirement in pins.extras[name]]
    requirements: list[str] = []
    named = set(left_out)
    for requirement in [*pins.requirements, *extras, *pins.test_dependencies]:
        name = requirement_name(requirement)
        if name not in named:
            named.add(name)
            requirements.append(requirement)
    return requirements
