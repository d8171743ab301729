"""conftest's autouse fixture: each test starts in its own folder and leaves the process as it found it."""
from __future__ import annotations

import importlib
import os
import signal

import torch
from conftest import REPO_ROOT, ProcessState
from mmengine.runner.checkpoint import CheckpointLoader

from pisa_train.engine.checkpoint_files import mmengine_checkpoint_globals
from pisa_train.engine.device import choose_device
from pisa_train.engine.patch_state import PATCH_STATE
from pisa_train.engine.patches.checkpoint_loading import guard_checkpoint_loading
from pisa_train.engine.patches.torchvision_nms import torchvision_nms_in_use, use_torchvision_nms


def test_a_test_runs_in_its_own_tmp_path_not_the_repository(tmp_path):
    assert os.getcwd() == str(tmp_path)
    assert not str(tmp_path).startswith(str(REPO_ROOT))


def test_what_an_in_process_run_changes_is_put_back(tmp_path):
    before = ProcessState()
    mmcv_nms = importlib.import_module("mmcv.ops.nms")
    # What `pisa-train --device cpu` and the engine do in this process:
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    choose_device("cpu")
    guard_checkpoint_loading([str(REPO_ROOT / "pyproject.toml")], say=lambda line: None)
    use_torchvision_nms()
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    (tmp_path / "elsewhere").mkdir()
    os.chdir(tmp_path / "elsewhere")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert CheckpointLoader._schemes != before.checkpoint_schemes
    assert PATCH_STATE.applied and PATCH_STATE.trusted_files
    ours = mmengine_checkpoint_globals()
    assert all(entry in torch.serialization.get_safe_globals() for entry in ours)
    assert not any(entry in before.safe_globals for entry in ours)
    assert torchvision_nms_in_use()

    before.restore()
    assert dict(os.environ) == before.environ and os.getcwd() == before.cwd
    assert CheckpointLoader._schemes == before.checkpoint_schemes
    assert not any(entry in torch.serialization.get_safe_globals() for entry in ours)
    assert all(entry in torch.serialization.get_safe_globals() for entry in before.safe_globals)
    assert mmcv_nms.ext_module is before.nms_kernels and not torchvision_nms_in_use()
    assert signal.getsignal(signal.SIGTERM) == before.signal_handlers[signal.SIGTERM]
    assert not PATCH_STATE.applied and not PATCH_STATE.trusted_files  # its one reset(), no private names
    # ... and a later run applies the patches again.
    guard_checkpoint_loading([], say=lambda line: None)
    assert CheckpointLoader._schemes != before.checkpoint_schemes
    before.restore()
