"""Patch: mmcv's NMS kernel answered by torchvision's (``--ops-backend torchvision``).

Upstream: mmcv 2.1.0, ``mmcv/ops/nms.py`` (no switch for the NMS kernel; mmcv's
RoIAlign has ``use_torchvision``). Guard test:
``tests/test_ops_backend.py::test_mmcv_nms_still_goes_through_ext_module_nms``.

Why: with compiled mmcv (``make setup MMCV=compiled``; the default mmcv-lite gets all
its kernels from torchvision and torch, mmcv_ext_from_torchvision.py): no mmcv 2.1.0
wheel exists for current torch, so mmcv is built from source, and on a machine without
``nvcc`` that build has CPU kernels only. Training on a
GPU with such an mmcv fails at the first RoIAlign or NMS ("... is not compiled
with GPU support"). torchvision ships CUDA kernels for both, with the same
semantics as mmcv's (average pooling, adaptive sampling ratio, ``aligned``; NMS
that drops boxes whose IoU with a higher-scoring one is above the threshold).

``--ops-backend`` chooses (config/rewrites.py, ``choose_ops_backend``):

* ``auto`` (default): mmcv's kernels where mmcv has them for the device, else torchvision's;
* ``mmcv``: always mmcv's (MMDetection's behaviour);
* ``torchvision``: torchvision's RoIAlign and NMS on every device (CPU included).

How it hooks in (mmcv 2.1.0):

* RoIAlign: mmcv's own switch, ``RoIAlign(use_torchvision=True)``;
  ``config/rewrites.py``'s ``apply_ops_backend`` sets it on every RoIAlign layer of the model
  config. mmcv picks torchvision's ``aligned`` argument by looking for the name in
  ``torchvision.ops.roi_align.__code__.co_varnames`` (true for torchvision 0.29; the
  test ``test_mmcv_finds_torchvision_roi_align_aligned_argument`` fails if that changes,
  since mmcv would then silently drop ``aligned``).
* NMS: mmcv has no switch. ``mmcv.ops.nms``, ``batched_nms`` (RPN proposals, test-time
  ``multiclass_nms``) all end in ``NMSop.forward``, which calls the compiled kernel as
  ``ext_module.nms(bboxes, scores, iou_threshold=..., offset=...)`` through the module
  global ``mmcv.ops.nms.ext_module``. ``use_torchvision_nms`` replaces that global with
  ``NmsKernelOnTorchvision``, which answers ``nms`` with torchvision's (engine/torch_kernels.py) and
  passes every other kernel (``softnms``, ``nms_match``, ...) to mmcv's. mmcv's score
  threshold, ``max_num`` and class offsets keep working, as they sit above the kernel.
  ``tests/test_ops_backend.py::test_mmcv_nms_still_goes_through_ext_module_nms``
  fails if mmcv stops calling the kernel that way.
* PISA's ``ScoreHLRSampler`` calls ``mmcv.ops.nms_match``, which mmcv runs on the CPU
  in every build; it stays on mmcv.
"""
from __future__ import annotations

import importlib


class NmsKernelOnTorchvision:
    """Stands in for ``mmcv._ext`` inside ``mmcv.ops.nms``: its ``nms`` is torchvision's,
    everything else is mmcv's."""

    def __init__(self, mmcv_ext):
        self.mmcv_ext = mmcv_ext

    def __getattr__(self, name):
        return getattr(self.mmcv_ext, name)

    @staticmethod
    def nms(bboxes, scores, iou_threshold: float, offset: int = 0):
        from pisa_train.engine.torch_kernels import nms

        return nms(bboxes, scores, iou_threshold, offset)


def _mmcv_nms_module():
    # Not ``import mmcv.ops.nms as m``: mmcv.ops re-exports the function nms, which shadows the module.

    return importlib.import_module("mmcv.ops.nms")


def use_torchvision_nms(enabled: bool = True) -> None:
    """Route mmcv's NMS kernel to torchvision (``enabled``) or back to mmcv's own."""
    mmcv_nms = _mmcv_nms_module()

    current = mmcv_nms.ext_module
    original = current.mmcv_ext if isinstance(current, NmsKernelOnTorchvision) else current
    mmcv_nms.ext_module = NmsKernelOnTorchvision(original) if enabled else original


def torchvision_nms_in_use() -> bool:
    mmcv_nms = _mmcv_nms_module()

    return isinstance(mmcv_nms.ext_module, NmsKernelOnTorchvision)


def install_ops_backend(cfg) -> str:
    """Make the process match the config's ``ops_backend`` (set by
    config/rewrites.py's ``apply_ops_backend``): RoIAlign follows the model config by itself,
    NMS needs the kernel swapped here, in every process that runs the model."""
    backend = cfg.get("ops_backend", "mmcv")
    use_torchvision_nms(backend == "torchvision")
    return backend
