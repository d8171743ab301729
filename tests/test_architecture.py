"""The package's folders are its layers, and imports go only downward (pyproject.toml's
[tool.importlinter] contracts, checked by import-linter); each console command is about a screen."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """import-linter with the project's contracts, on the package found under ``package_parent``."""
    return subprocess.run([str(LINT_IMPORTS), str(REPO_ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=package_parent, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"})


def test_the_layers_import_only_downward():
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("lower, upper, contract", [
    ("data/presence.py", "pisa_train.cli.train", "layers import only downward"),
    ("engine/runner.py", "pisa_train.config.build", "layers import only downward"),
    ("fetch/http.py", "pisa_train.results.coco_metrics", "layers import only downward"),
    ("terminal.py", "pisa_train.engine.runner", "the base modules import no layer"),
    ("engine/patches/torchvision_nms.py", "pisa_train.engine.hooks.progress_bar", "inside the engine"),
    ("engine/checkpoint_files.py", "pisa_train.engine.patches.checkpoint_loading", "inside the engine"),
    ("engine/patches/amp_on_cpu.py", "pisa_train.engine.patches.torchvision_nms", "patches are independent"),
])
def test_an_upward_import_breaks_a_contract(tmp_path, lower, upper, contract):
    copy = tmp_path / "pisa_train"
    shutil.copytree(REPO_ROOT / "pisa_train", copy, ignore=shutil.ignore_patterns("__pycache__"))
    module = copy / lower
    module.write_text(module.read_text() + f"\n\ndef _upward():\n    import {upper}  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    broken = " ".join(result.stdout.split("Broken contracts")[-1].split())  # unwrapped
    assert contract in broken and f"{lower[:-3].replace('/', '.')} -> {upper}" in broken, result.stdout[-3000:]


@pytest.mark.parametrize("module", sorted(path.name for path in (REPO_ROOT / "pisa_train" / "cli").glob("*.py")))
def test_each_console_command_is_about_a_screen(module):
    lines = (REPO_ROOT / "pisa_train" / "cli" / module).read_text().splitlines()
    assert len(lines) <= 120, f"pisa_train/cli/{module} has {len(lines)} lines; move what is not the command's " \
                              f"own to config/, engine/ or results/"


def test_a_cycle_between_two_patches_breaks_their_independence(tmp_path):
    """The cycle issue 21 found (checkpoint_loading imported checkpoint_downloads inside a function, and the
    other way round): Python never trips on it, the independence contract does."""
    copy = tmp_path / "pisa_train"
    shutil.copytree(REPO_ROOT / "pisa_train", copy, ignore=shutil.ignore_patterns("__pycache__"))
    for one, other in [("checkpoint_loading", "checkpoint_downloads"), ("checkpoint_downloads", "checkpoint_loading")]:
        module = copy / "engine" / "patches" / f"{one}.py"
        module.write_text(module.read_text() + f"\n\ndef _sideways():\n"
                                                f"    import pisa_train.engine.patches.{other}  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    broken = " ".join(result.stdout.split("Broken contracts")[-1].split())
    assert "the patches are independent of each other" in broken
    for one, other in [("checkpoint_loading", "checkpoint_downloads"), ("checkpoint_downloads", "checkpoint_loading")]:
        assert f"pisa_train.engine.patches.{one} -> pisa_train.engine.patches.{other}" in broken, broken[-3000:]


PATCHES = REPO_ROOT / "pisa_train" / "engine" / "patches"
NOT_PATCHES = ("__init__.py", "rebinding.py")  # the index of the patches, and a helper they use


@pytest.mark.parametrize("module", sorted(path.name for path in PATCHES.glob("*.py") if path.name not in NOT_PATCHES))
def test_each_patch_names_its_upstream_and_a_guard_test_that_exists(module):
    """STYLE.md: every change to upstream behaviour names the upstream version it changes and the test that
    fails when upstream changes; the module is listed in patches/__init__.py."""

    doc = ast.get_docstring(ast.parse((PATCHES / module).read_text())) or ""
    assert re.search(r"\b(mmengine|mmcv|mmdet|torch) \d+\.\d+", doc), f"{module} names no upstream version"
    guards = re.findall(r"(tests/test_\w+\.py)::(test_\w+)", " ".join(doc.split()))
    assert re.search(r"Guard tests?:", doc) and guards, f"{module} names no guard test"
    for file_name, test_name in guards:
        tree = ast.parse((REPO_ROOT / file_name).read_text())
        assert test_name in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, \
            f"{module} names {file_name}::{test_name}, which does not exist"
    assert f"* {module}:" in (PATCHES / "__init__.py").read_text(), f"patches/__init__.py does not list {module}"
