"""Shared fixtures: paths, running the real console commands, and small generated datasets."""
from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pisa_train  # noqa: F401  (first, as every pisa-train command: it provides mmcv._ext where mmcv-lite has none)

# isort: split
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.runner.checkpoint import CheckpointLoader
from roboflow_export import ANNOTATIONS, REAL_EXPORT_VARIABLE, real_export, write_badminton_export

from pisa_train.data.synthetic_shapes import generate_shapes_dataset
from pisa_train.engine.checkpoint_files import mmengine_checkpoint_globals
from pisa_train.engine.patch_state import PATCH_STATE
from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"
DEMO_CONFIG = CONFIGS / "pisa_faster_rcnn_r18_fpn_demo_shapes.py"
X101_PISA_CONFIG = CONFIGS / "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"


class ProcessState:
    """What in-process tests change for the whole test process: the environment (CUDA_VISIBLE_DEVICES
    from --device cpu, LOCAL_RANK, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD ...), the working directory, and
    the process-wide patches pisa-train applies (engine/patches/): mmengine's checkpoint loaders,
    torch's safe globals, mmcv's NMS kernel, OptimWrapper.update_params, and what they remember of
    themselves (engine/patch_state.py); and the SIGTERM/SIGINT handlers. ``pristine`` is taken
    when the test session starts, before any test ran pisa-train in this process."""

    def __init__(self):
        mmcv_nms = importlib.import_module("mmcv.ops.nms")

        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.checkpoint_schemes = dict(CheckpointLoader._schemes)
        self.safe_globals = list(torch.serialization.get_safe_globals())
        self.nms_kernels = mmcv_nms.ext_module
        self.update_params = vars(OptimWrapper)["update_params"]
        self.signal_handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        mmcv_nms = importlib.import_module("mmcv.ops.nms")

        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        CheckpointLoader._schemes.clear()
        CheckpointLoader._schemes.update(self.checkpoint_schemes)
        # The patches apply themselves once per process; the next test's run applies them again.
        PATCH_STATE.reset()
        # Less those pisa-train allows; torch's own, which its modules add as they are imported, stay.
        ours = mmengine_checkpoint_globals()
        kept = [entry for entry in torch.serialization.get_safe_globals() if entry not in ours]
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(kept + [entry for entry in self.safe_globals if entry not in kept])
        mmcv_nms.ext_module = self.nms_kernels
        OptimWrapper.update_params = self.update_params
        for signum, handler in self.signal_handlers.items():
            signal.signal(signum, handler)


def pytest_collection_modifyitems(config, items):
    """Tests marked compiled_mmcv check compiled mmcv's own kernels: with mmcv-lite (the default set-up) they
    are skipped here, and tests/test_mmcv_kernels.py runs them with compiled mmcv's Python instead."""

    if mmcv_ext_is_compiled():
        return
    skip = pytest.mark.skip(reason="compiled mmcv's own kernels; tests/test_mmcv_kernels.py::"
                                   "test_the_guards_on_compiled_mmcvs_kernels_pass_with_compiled_mmcv runs this")
    for item in items:
        if "compiled_mmcv" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pristine_process_state() -> ProcessState:
    return ProcessState()


@pytest.fixture(autouse=True)
def each_test_in_its_own_folder_and_a_pristine_process(pristine_process_state, tmp_path):
    """Every test starts in its tmp_path (a regression cannot write data/ or work_dirs/ into the
    repository) and leaves the process as the session found it."""
    os.chdir(tmp_path)
    yield
    pristine_process_state.restore()


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

    root = tmp_path_factory.mktemp("shapes") / "dataset"
    generate_shapes_dataset(root, seed=3, num_train_images=8, num_val_images=4, image_size=96)
    return root


@pytest.fixture(scope="session")
def roboflow_fixture(tmp_path_factory) -> Path:
    """A Roboflow export (train split only, root category 'badminton', one class 'shuttlecock'): the real one
    that PISA_TRAIN_REAL_EXPORT names, else one generated in its layout (tests/roboflow_export.py), so that a
    clone alone runs every test. Read-only: tests that change it take ``roboflow_export``, a copy."""
    real = real_export()
    if real is None:
        return write_badminton_export(tmp_path_factory.mktemp("generated") / "roboflow-badminton")
    if not (real / "train" / ANNOTATIONS).is_file():
        pytest.fail(f"{REAL_EXPORT_VARIABLE}={real} has no train/{ANNOTATIONS}: point it at a Roboflow COCO "
                    f"export, or unset it to test on a generated one")
    return real


@pytest.fixture
def roboflow_export(roboflow_fixture, tmp_path) -> Path:
    """A writable copy of the Roboflow export."""
    return Path(shutil.copytree(roboflow_fixture, tmp_path / "roboflow-badminton"))
