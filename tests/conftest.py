"""Shared fixtures: paths, running the real console commands, and small generated datasets."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"
DEMO_CONFIG = CONFIGS / "pisa_faster_rcnn_r18_fpn_demo_shapes.py"
X101_PISA_CONFIG = CONFIGS / "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"
# A real Roboflow export (train split, 9 images, root category 'badminton', one class
# 'shuttlecock'), in the project's shared/ folder beside the repository. Read-only: copy it first.
ROBOFLOW_FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "roboflow-badminton"


def run_command(module: str, args: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a console command (``python -m pisa_train.cli.<module>``) in a real process,
    as a user would, and return its exit code and output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", f"pisa_train.cli.{module}", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_cli():
    return run_command


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    """A tiny synthetic COCO-format dataset (8 train, 4 val images of 96 px)."""
    from pisa_train.data.synthetic_shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("shapes") / "dataset"
    generate_shapes_dataset(root, seed=3, num_train_images=8, num_val_images=4, image_size=96)
    return root


@pytest.fixture
def roboflow_export(tmp_path) -> Path:
    """A writable copy of the shared Roboflow export."""
    import shutil

    assert ROBOFLOW_FIXTURE.is_dir(), (f"{ROBOFLOW_FIXTURE} is missing: the tests expect the project's shared/ "
                                       f"folder beside the repository")
    return Path(shutil.copytree(ROBOFLOW_FIXTURE, tmp_path / "roboflow-badminton"))
