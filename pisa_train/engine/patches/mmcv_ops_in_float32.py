"""Patch: mmcv's RoIAlign and NMS kernels run in float32 under autocast.

Upstream: mmcv 2.1.0's compiled ops are called from Python with the tensors they are
given, and its CPU kernels take float32 and float64 only: under ``torch.autocast('cpu',
dtype=torch.bfloat16)`` (``--amp`` on the CPU) the first RPN NMS fails with "expected
scalar type Float but found BFloat16", mmcv's RoIAlign with "ROIAlign_forward not
implemented for 'BFloat16'", PISA's ``nms_match`` like NMS. Its CUDA kernels take
float16 but not bfloat16 (``--amp --amp-dtype bfloat16`` on a GPU). Autocast does not
reach them: it acts on torch's dispatcher, which mmcv's pybind11 kernels bypass. No
mmcv release changes this.

The change is what torchvision does for its own RoIAlign and NMS under autocast: the
floating inputs go to the kernel in float32, with autocast off inside, and the floating
outputs come back in the dtype the inputs promote to (so ``SingleRoIExtractor`` can put
bfloat16 RoI features into its bfloat16 buffer, as it does without the patch). The
casts happen outside mmcv's autograd Functions, so autograd takes gradients through
them, and mmcv's backward kernels see float32 too. Without autocast nothing changes.
Wrapped, where they are looked up (rebinding.py): ``mmcv.ops.roi_align.roi_align``
(what ``RoIAlign`` calls), ``mmcv.ops.nms.nms`` (what ``batched_nms`` and mmdet's
``multiclass_nms`` call), ``soft_nms`` and ``nms_match`` (PISA's ScoreHLRSampler).
With ``--ops-backend torchvision`` the RoIAlign layers call torchvision's, which handles
autocast itself.

With mmcv-lite (the default set-up) mmcv's kernels are pisa-train's (engine/torch_kernels.py): its
NMS is torchvision's CPU kernel, which takes no bfloat16 or float16 either, so the patch stays.

Guard tests: tests/test_amp.py::test_upstream_mmcv_kernels_refuse_bfloat16 fails once
compiled mmcv's CPU kernels take bfloat16 (it runs with compiled mmcv, through
tests/test_mmcv_kernels.py); ::test_upstream_torchvision_cpu_nms_refuses_half_precision once
torchvision's do; tests/test_amp.py::test_mmcv_ops_under_autocast_match_float32
(with the patch, the ops' outputs and gradients under bfloat16 autocast match a
float32 run) and tests/test_amp.py::test_pisa_x101_forward_under_autocast_matches_float32.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from pisa_train.engine.patches.rebinding import rebind_everywhere

# (module, function): the mmcv ops that run in float32 under autocast.
MMCV_OPS = (("mmcv.ops.roi_align", "roi_align"), ("mmcv.ops.nms", "nms"), ("mmcv.ops.nms", "soft_nms"),
            ("mmcv.ops.nms", "nms_match"))


def _floating_tensors(args, kwargs) -> list:
    import torch

    return [value for value in (*args, *kwargs.values())
            if isinstance(value, torch.Tensor) and value.is_floating_point()]


def _to_dtype(value, dtype):
    """``value`` with its floating tensors (also inside tuples and lists) in ``dtype``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_dtype(item, dtype) for item in value)
    return value


def in_float32_under_autocast(op: Callable) -> Callable:
    """``op`` that, under autocast, gets float32 inputs, runs with autocast off, and returns
    its floating outputs in the dtype its inputs promote to."""

    import torch

    @functools.wraps(op)
    def op_in_float32(*args, **kwargs):
        tensors = _floating_tensors(args, kwargs)
        device_type = next((tensor.device.type for tensor in tensors
                            if torch.is_autocast_enabled(tensor.device.type)), None)
        if device_type is None:
            return op(*args, **kwargs)
        dtype = functools.reduce(torch.promote_types, (tensor.dtype for tensor in tensors))
        with torch.autocast(device_type, enabled=False):
            result = op(*_to_dtype(args, torch.float32),
                        **{key: _to_dtype(value, torch.float32) for key, value in kwargs.items()})
        return _to_dtype(result, dtype)

    return op_in_float32


def run_mmcv_ops_in_float32_under_autocast() -> None:
    for module, name in MMCV_OPS:
        rebind_everywhere(module, name, in_float32_under_autocast)
