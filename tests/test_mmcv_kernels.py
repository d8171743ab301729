"""mmcv's kernels without compiled mmcv: engine/torch_kernels.py, installed as ``mmcv._ext`` by
engine/patches/mmcv_ext_from_torchvision.py.

The guard tests on how mmcv 2.1.0 looks its kernels up and calls them; what a kernel pisa-train does not
provide says; and equality with compiled mmcv: the kernels' outputs and gradients (tests/mmcv_kernel_outputs.py
run by both Pythons), and the losses of 5 iterations of PISA X101. Compiled mmcv lives in a venv of its own,
``.venv-mmcv-compiled`` (``tools/setup_env.py --mmcv compiled --venv .venv-mmcv-compiled``, which .ci/run
makes), or the Python named by PISA_TRAIN_COMPILED_MMCV_PYTHON. Without it those tests are skipped with that
command, unless PISA_TRAIN_REQUIRE_COMPILED_MMCV=1 (set by .ci/run), which makes them fail instead.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, X101_PISA_CONFIG
from mmcv.ops import roi_align, sigmoid_focal_loss, soft_nms
from mmcv.utils import ext_loader
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

from pisa_train.engine import torch_kernels
from pisa_train.engine.patches.mmcv_ext_from_torchvision import TorchKernelsModule, mmcv_ext_is_compiled
from pisa_train.errors import EnvironmentProblem

KERNEL_OUTPUTS = REPO_ROOT / "tests" / "mmcv_kernel_outputs.py"
# The mmcv modules whose kernels the PISA zoo calls, and the kernels it calls there.
MMCV_OP_MODULES = ("mmcv.ops.roi_align", "mmcv.ops.nms", "mmcv.ops.focal_loss")
ZOO_KERNELS = {"roi_align_forward", "roi_align_backward", "nms", "nms_match", "sigmoid_focal_loss_forward",
               "sigmoid_focal_loss_backward"}


def compiled_mmcv_python() -> Path:
    python = Path(os.environ.get("PISA_TRAIN_COMPILED_MMCV_PYTHON") or REPO_ROOT / ".venv-mmcv-compiled/bin/python")
    if not python.exists():
        reason = (f"no compiled mmcv to compare with: {python} does not exist; make it with `python3 "
                  f"tools/setup_env.py --mmcv compiled --venv .venv-mmcv-compiled` (5 to 25 minutes the first time)")
        if os.environ.get("PISA_TRAIN_REQUIRE_COMPILED_MMCV") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return python


@pytest.fixture(scope="module")
def this_venv_has_no_compiled_mmcv():
    if mmcv_ext_is_compiled():
        pytest.skip("this environment has compiled mmcv; these tests are for mmcv-lite (the default set-up)")


# ---- the guards: how mmcv 2.1.0 finds and calls its kernels ------------------------------------

def test_upstream_mmcv_loads_kernels_by_name_from_mmcv_ext(this_venv_has_no_compiled_mmcv):
    """mmcv imports ``mmcv._ext`` and only checks that each kernel's name exists: a stand-in module that
    answers every name is enough for ``import mmcv.ops``. Fails if mmcv looks its kernels up elsewhere."""

    source = inspect.getsource(ext_loader.load_ext)
    assert "importlib.import_module('mmcv.' + name)" in source
    assert "assert hasattr(ext, fun)" in source
    importlib.import_module("mmcv.ops")  # the import that fails without mmcv._ext
    for module in MMCV_OP_MODULES:
        assert importlib.import_module(module).ext_module is sys.modules["mmcv._ext"]
    assert isinstance(sys.modules["mmcv._ext"], TorchKernelsModule)


def _kernel_calls(module_name: str) -> list[tuple[str, int, list[str]]]:
    """``ext_module.NAME(...)`` calls in an mmcv module: (name, positional count, keyword names). mmcv's
    ``nms_match`` passes ``*indata_list, **indata_dict``: those two are read from the lists that build them."""
    source = Path(importlib.import_module(module_name).__file__).read_text()
    tree = ast.parse(source)
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "ext_module":
            dynamic = any(isinstance(arg, ast.Starred) for arg in node.args) or any(k.arg is None for k in node.keywords)
            if dynamic and node.func.attr not in ZOO_KERNELS:
                continue  # softnms and the like: not provided, they fail when called
            if dynamic:
                assert node.func.attr == "nms_match", ast.unparse(node)
                assert "indata_list = [dets_t]" in source
                assert "indata_dict = {'iou_threshold': float(iou_threshold)}" in source
                calls.append((node.func.attr, 1, ["iou_threshold"]))
            else:
                calls.append((node.func.attr, len(node.args), [keyword.arg for keyword in node.keywords]))
    return calls


def test_upstream_mmcv_ops_call_these_kernel_names():
    """Every call mmcv 2.1.0 makes to the kernels the PISA zoo needs binds to torch_kernels.py's function of
    that name. Fails if mmcv renames a kernel or changes what it passes."""
    calls = [call for module in MMCV_OP_MODULES for call in _kernel_calls(module)]
    assert ZOO_KERNELS <= {name for name, _, _ in calls}
    for name, positional, keywords in calls:
        if name in ZOO_KERNELS:
            signature = inspect.signature(torch_kernels.KERNELS[name])
            signature.bind(*range(positional), **dict.fromkeys(keywords))  # raises TypeError if they do not fit
    with pytest.raises(TypeError):  # and a call that does not fit is seen
        inspect.signature(torch_kernels.KERNELS["nms"]).bind(1, 2, iou_thresh=0.5)


# ---- without compiled mmcv -----------------------------------------------------------------

def test_a_kernel_pisa_train_does_not_provide_fails_when_called_with_one_line(this_venv_has_no_compiled_mmcv):
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
    with pytest.raises(EnvironmentProblem) as raised:
        soft_nms(boxes, torch.tensor([0.9, 0.8]))
    assert str(raised.value) == (
        "mmcv op 'softnms' needs mmcv's compiled kernels, and this environment has mmcv-lite (pisa-train provides "
        "only RoIAlign, NMS, nms_match and the sigmoid focal loss); install mmcv with its compiled ops: make setup "
        "MMCV=compiled (docs: 'Compiled mmcv')")
    assert raised.value.exit_code == 6


def test_max_pooling_roi_align_is_refused_in_one_line(this_venv_has_no_compiled_mmcv):
    with pytest.raises(EnvironmentProblem) as raised:
        roi_align(torch.ones(1, 1, 8, 8), torch.tensor([[0., 0., 0., 4., 4.]]), (2, 2), 1.0, 2, "max")
    assert str(raised.value) == (
        "mmcv op roi_align_forward with pool_mode='max' has no torchvision kernel (torchvision's RoIAlign averages); "
        "use pool_mode='avg', or install mmcv with its compiled ops: make setup MMCV=compiled "
        "(docs: 'Compiled mmcv')")
    assert raised.value.exit_code == 6


def test_the_focal_loss_kernels_match_mmdets_python_focal_loss(this_venv_has_no_compiled_mmcv):
    """mmcv's sigmoid_focal_loss (what RetinaNet's FocalLoss calls on CUDA; mmcv has no CPU kernel for it)
    against the Python focal loss mmdet uses everywhere else, loss and gradient."""

    generator = torch.Generator().manual_seed(0)
    # Logits within +-8: where float32 sigmoid saturates, mmcv's kernel clamps log(p) at FLT_MIN and mmdet does not.
    logits = (torch.randn(200, 5, generator=generator) * 2).clamp(-8, 8).requires_grad_()
    reference_logits = logits.detach().clone().requires_grad_()
    labels = torch.randint(0, 6, (200,), generator=generator)  # 5 is background
    loss = sigmoid_focal_loss(logits, labels, 2.0, 0.25, None, "sum")
    one_hot = torch.nn.functional.one_hot(labels, 6)[:, :5].float()
    reference = py_sigmoid_focal_loss(reference_logits, one_hot, None, 2.0, 0.25, "sum")
    loss.backward()
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad, reference_logits.grad, rtol=1e-5, atol=1e-6)


# ---- against compiled mmcv -------------------------------------------------------------------

def test_the_kernels_give_what_compiled_mmcv_gives_bit_for_bit(tmp_path, this_venv_has_no_compiled_mmcv):
    """RoIAlign forward and backward (aligned or not, sampling ratio 0 and 2), NMS (offset 0 and 1),
    batched_nms and nms_match on random boxes and on boxes full of ties: exactly what compiled mmcv's CPU
    kernels give, indices in the same order."""
    python = compiled_mmcv_python()
    outputs = {}
    for name, interpreter in (("ours", sys.executable), ("compiled", str(python))):
        subprocess.run([interpreter, str(KERNEL_OUTPUTS), str(tmp_path / f"{name}.pt")], check=True, cwd=tmp_path,
                       timeout=300)
        outputs[name] = torch.load(tmp_path / f"{name}.pt", weights_only=True)
    ours, compiled = outputs["ours"], outputs["compiled"]
    assert (ours.pop("compiled"), compiled.pop("compiled")) == (False, True)
    assert sorted(ours) == sorted(compiled) and len(ours) == 28
    for case, value in ours.items():
        expected = compiled[case]
        if isinstance(value, tuple):
            for mine, theirs in zip(value, expected):
                assert torch.equal(mine, theirs), case
        elif isinstance(value, list):
            assert value == expected, case
        else:
            assert torch.equal(value, expected), case
    assert any(len(group) > 1 for group in ours["nms_match tied iou=0.5"])  # the ties did meet


def test_the_guards_on_compiled_mmcvs_kernels_pass_with_compiled_mmcv(this_venv_has_no_compiled_mmcv):
    """The tests marked compiled_mmcv (the guards on compiled mmcv's own kernels, such as its refusal of
    bfloat16) are skipped with mmcv-lite; they run here, with compiled mmcv's Python, and pass."""
    python = compiled_mmcv_python()
    # Only the files that hold such guards: the others may import test packages that venv need not have.
    guarded = [str(path) for path in sorted((REPO_ROOT / "tests").glob("test_*.py"))
               if "mark.compiled_mmcv" in path.read_text()]
    assert guarded
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "compiled_mmcv",
                             *guarded], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary


def _losses(work_dir: Path) -> list[dict]:
    scalars = next(work_dir.glob("*/vis_data/scalars.json"))
    return [{key: value for key, value in record.items() if key.startswith("loss") or key == "acc"}
            for record in map(json.loads, scalars.read_text().splitlines()) if "loss" in record]


@pytest.mark.slow
def test_five_iterations_of_pisa_x101_give_compiled_mmcvs_losses(tmp_path, shapes_dataset,
                                                                  this_venv_has_no_compiled_mmcv):
    """PISA Faster R-CNN X101 (ScoreHLRSampler's nms_match, ISR, CARL, RoIAlign, RPN NMS), same seed, 5
    iterations on the CPU: with pisa-train's kernels and with compiled mmcv's, every logged loss agrees
    to 1e-4 relative. About a minute on 2 cores."""
    python = compiled_mmcv_python()
    options = ["model.backbone.init_cfg=None", "train_dataloader.dataset.pipeline.2.scale=(160,96)",
               "train_dataloader.batch_size=2", "train_dataloader.num_workers=0",
               "train_dataloader.persistent_workers=False", "default_hooks.logger.interval=1"]
    losses = {}
    for name, interpreter in (("ours", sys.executable), ("compiled", str(python))):
        work_dir = tmp_path / name
        result = subprocess.run(
            [interpreter, "-m", "pisa_train.cli.train", str(X101_PISA_CONFIG), "--data", str(shapes_dataset),
             "--device", "cpu", "--max-iters", "5", "--seed", "0", "--no-progress", "--work-dir", str(work_dir),
             "--cfg-options", *options],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("RoIAlign and NMS kernels: torchvision" in result.stdout + result.stderr) == (name == "ours")
        losses[name] = _losses(work_dir)
    assert len(losses["ours"]) == 5 and set(losses["ours"][0]) >= {"loss", "loss_cls", "loss_bbox", "loss_carl"}
    for step, (ours, compiled) in enumerate(zip(losses["ours"], losses["compiled"]), start=1):
        assert ours.keys() == compiled.keys()
        for key in ours:
            assert ours[key] == pytest.approx(compiled[key], rel=1e-4, abs=1e-6), (step, key)
