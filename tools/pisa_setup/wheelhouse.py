"""The folder of files for an offline install: what ``tools/setup_env.py --wheelhouse DIR`` writes and
what ``tools/setup_env.py --offline DIR`` checks before installing from it.

A wheelhouse holds every file the set-up installs except torch and torchvision (a GPU machine brings
its own, built for its CUDA): wheels of everything else (mmcv-lite among them: nothing is built on
the target), or with ``--mmcv compiled`` mmcv's sdist instead of mmcv-lite (its compiled ops are
built on the target, for the target's torch and GPU), with a ``manifest.json`` that lists each
file's size and SHA-256, whether it is pure Python (``py3-none-any``) or platform-specific, and the
total size. Given the target's ``pip freeze`` it leaves out what the target already has, resolving
the rest against the target's versions so that the two fit together.

It is not a general packaging tool: it serves the set-up, and like it uses only the standard library.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from . import package_index
from .messages import SetupFailed, say
from .pins import Pins, build_tool_requirements, check_python_version, compiled_mmcv_version, package_requirements

MANIFEST = "manifest.json"
# What a wheelhouse never holds: the target's own torch, and what it brings along (its CUDA
# libraries); the set-up installs it separately or uses the machine's.
NEVER_INCLUDED = ("torch", "torchvision")


class WheelhouseProblem(Exception):
    """The wheelhouse cannot be written or used; the message says what to do."""


def normalize(name: str) -> str:
    """PEP 503's normal form of a distribution name: ``PyYAML`` and ``pyyaml`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(text: str) -> dict[str, str | None]:
    """Distribution name (normalized) -> version from ``pip freeze`` output; the version is None where
    the line names none that an index could serve (``name @ file://...``, an editable checkout, a
    local version label such as ``+cu130`` is dropped: constraints name the public release)."""
    found: dict[str, str | None] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-e") or line.startswith("--editable"):
            egg = re.search(r"#egg=([A-Za-z0-9._-]+)", line)
            if egg:
                found[normalize(egg.group(1))] = None
            continue
        if line.startswith("-"):
            continue  # pip options (-i, --find-links ...) that a freeze file may carry
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(===|==|@)?\s*(\S*)", line)
        if not match:
            raise WheelhouseProblem(f"cannot read {line!r} as a `pip freeze` line (name==version)")
        name, operator, version = match.groups()
        found[normalize(name)] = version.split("+", 1)[0] if operator in ("==", "===") and version else None
    return found


def distribution_of(filename: str) -> str:
    """The normalized distribution name of a wheel or sdist file name."""
    if filename.endswith(".whl"):
        return normalize(filename.split("-", 1)[0])
    stem = re.sub(r"\.(tar\.gz|tar\.bz2|zip|tgz)$", "", filename)
    return normalize(stem.rsplit("-", 1)[0])


def file_kind(filename: str) -> str:
    """``sdist``, ``pure Python`` (a wheel for any platform) or ``platform-specific (TAG)``."""
    if not filename.endswith(".whl"):
        return "sdist"
    platform_tag = filename[:-len(".whl")].split("-")[-1]
    return "pure Python" if platform_tag == "any" else f"platform-specific ({platform_tag})"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sdist_requirements(sdist: Path) -> list[str]:
    """The install requirements an old-style sdist records in its egg-info/requires.txt (the lines before
    the first ``[extra]`` section; mmcv's Windows-only ``regex`` sits in such a section)."""
    with tarfile.open(sdist) as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith(".egg-info/requires.txt")), None)
        if member is None:
            raise WheelhouseProblem(f"{sdist.name} has no egg-info/requires.txt to read its requirements from")
        text = archive.extractfile(member).read().decode()
    requirements = []
    for line in text.splitlines():
        if line.startswith("["):
            break
        if line.strip():
            requirements.append(line.strip())
    return requirements


def write_manifest(folder: Path, *, target_python: str, left_out: dict[str, str | None],
                   requirements: list[str]) -> dict:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST or not path.is_file():
            continue
        files.append({"file": path.name, "size": path.stat().st_size, "sha256": sha256_of(path),
                      "kind": file_kind(path.name)})
    manifest = {
        "written_by": "tools/setup_env.py --wheelhouse",
        "for_python": target_python,
        "never_included": list(NEVER_INCLUDED),
        "left_out_as_the_target_has_them": {name: left_out[name] for name in sorted(left_out)},
        "requirements": requirements,
        "files": files,
        "total_bytes": sum(entry["size"] for entry in files),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify(folder: Path) -> dict:
    """The manifest of ``folder``, after checking that each file it lists is there, whole and unchanged."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise WheelhouseProblem(f"{folder} has no {MANIFEST}: it is not a folder written by "
                                f"`tools/setup_env.py --wheelhouse` (make wheelhouse)")
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise WheelhouseProblem(f"{path} is listed in {manifest_path} but missing; copy the whole folder again")
        if path.stat().st_size != entry["size"] or sha256_of(path) != entry["sha256"]:
            raise WheelhouseProblem(f"{path} differs from its SHA-256 in {manifest_path} (a broken or partial "
                                    f"copy?); copy the whole folder again")
    return manifest


def summary_lines(manifest: dict) -> list[str]:
    platform_specific = [e["file"] for e in manifest["files"] if e["kind"].startswith("platform-specific")]
    lines = [f"{len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB in all, for Python "
             f"{manifest['for_python']} (torch and torchvision not included: the target brings its own)"]
    if manifest["left_out_as_the_target_has_them"]:
        lines.append(f"left out, as the target has them: {len(manifest['left_out_as_the_target_has_them'])} "
                     f"packages")
    lines.append("platform-specific (built for one Python and CPU architecture): "
                 + (", ".join(platform_specific) or "none"))
    return lines


def build(folder: Path, *, build_tools: list[str], requirements: list[str], mmcv_sdist_version: str | None,
          target_has: dict[str, str | None], target_python: str, say) -> dict:
    """Write the wheelhouse into ``folder`` (replacing a wheelhouse already there) and return its manifest.

    ``build_tools`` always come along (the new venv's own pip and setuptools shadow the target's);
    ``requirements`` are resolved with their dependencies, against the target's versions of the
    packages it has, and what the target has is left out. With ``mmcv_sdist_version`` (the set-up's
    ``--mmcv compiled``), mmcv comes as its sdist, built on the target, and its own requirements
    join the resolution.
    """
    if folder.exists() and any(folder.iterdir()) and not (folder / MANIFEST).exists():
        raise WheelhouseProblem(f"{folder} exists and is not a wheelhouse (no {MANIFEST}); give a new folder")
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for_python = ["--python-version", target_python] if target_python != "{}.{}".format(*sys.version_info[:2]) else []
    pip_download = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "--quiet",
                    "-d", str(partial)]
    # Wheels only: an sdist would have to be built on the target, which has no index to fetch its
    # build dependencies from. Pure-Python packages come as py3-none-any where they publish one.
    wheels_for_target = [*pip_download, "--only-binary", ":all:", *for_python]

    sdist = None
    if mmcv_sdist_version:
        say(f"downloading the mmcv {mmcv_sdist_version} sdist")
        try:
            sdist = package_index.download_sdist("mmcv", mmcv_sdist_version, partial)
        except package_index.IndexProblem as problem:
            raise WheelhouseProblem(str(problem)) from problem
    say(f"downloading the build tools for Python {target_python}: {', '.join(build_tools)}")
    subprocess.run([*wheels_for_target, *build_tools], check=True)
    kept = {path.name for path in partial.iterdir()}

    wanted = requirements + (sdist_requirements(sdist) if sdist else [])
    constraints = partial / "target-constraints.txt"
    # The target's versions, and the build tools' ranges (a dependency asking for setuptools would
    # otherwise bring a second, newer one that the set-up never installs).
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(target_has.items())
                                   if version and name not in NEVER_INCLUDED
                                   and name not in {distribution_of(tool + "-0.whl") for tool in build_tools})
                           + "".join(f"{tool}\n" for tool in build_tools if re.search(r"[<>=]", tool)))
    say(f"resolving and downloading wheels for Python {target_python}: {', '.join(wanted)}"
        + (f" (against the versions of the {len(target_has)} packages the target has)" if target_has else ""))
    subprocess.run([*wheels_for_target, "-c", str(constraints), *wanted], check=True)
    constraints.unlink()

    left_out = {}
    for path in sorted(partial.iterdir()):
        name = distribution_of(path.name)
        if name in NEVER_INCLUDED:
            raise WheelhouseProblem(f"{path.name} was pulled in although the wheelhouse leaves torch out; "
                                    f"a requirement depends on it")
        if name in target_has and path.name not in kept:
            left_out[name] = target_has[name]
            path.unlink()
    manifest = write_manifest(partial, target_python=target_python, left_out=left_out,
                              requirements=build_tools + wanted)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return manifest


def write_for_target(pins: Pins, folder: Path, *, mmcv: str, target_has_file: Path | None,
                     target_python: str) -> dict:
    """``--wheelhouse DIR``: check the target's description, write the wheelhouse and say what it holds."""
    target_has: dict = {}
    if target_has_file:
        if not target_has_file.is_file():
            raise SetupFailed(f"--target-has {target_has_file}: no such file; on the target run "
                              f"`python -m pip freeze > {target_has_file.name}` and copy it here")
        target_has = read_freeze(target_has_file.read_text())
    if not re.fullmatch(r"3\.\d+", target_python):
        raise SetupFailed(f"--target-python {target_python}: give the target's Python as X.Y, e.g. 3.12")
    check_python_version((*map(int, target_python.split(".")), 0), python="--target-python")
    manifest = build(
        folder.resolve(), build_tools=build_tool_requirements(pins, mmcv),
        requirements=package_requirements(pins, mmcv),
        mmcv_sdist_version=compiled_mmcv_version(pins) if mmcv == "compiled" else None,
        target_has=target_has, target_python=target_python, say=say)
    for line in summary_lines(manifest):
        say(line)
    say(f"wrote {folder}/ (list: {folder}/{MANIFEST}); on the target: "
        f"python tools/setup_env.py --offline {folder} --use-system-torch"
        + (" --mmcv compiled" if mmcv == "compiled" else ""))
    return manifest
