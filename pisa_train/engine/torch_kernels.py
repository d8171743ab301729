"""The kernels of mmcv's ops that pisa-train's models call, written on torchvision's and torch's.

mmcv 2.1.0 reaches every compiled kernel through one module, ``mmcv._ext``, by name
(``ext_module.roi_align_forward(...)``). mmcv-lite has all of mmcv's Python code but no
``mmcv._ext``; engine/patches/mmcv_ext_from_torchvision.py installs this module's
``TorchKernels`` under that name, so that ``mmcv.ops`` imports and its ops run with no
compiler anywhere. Each function here takes the arguments mmcv's Python passes to the compiled
kernel of the same name and gives the same result:

* ``roi_align_forward`` / ``roi_align_backward``: torchvision's ``roi_align`` and
  ``_roi_align_backward`` (average pooling; the same sampling grid, adaptive sampling ratio and
  ``aligned`` offset as mmcv's; bit-identical on the CPU, tests/test_mmcv_kernels.py).
* ``nms``: torchvision's ``nms`` (a box is dropped when its IoU with a kept, higher-scoring one
  is above the threshold, as in mmcv), with mmcv's legacy ``offset=1`` as boxes one pixel larger.
* ``nms_match``: PISA's ScoreHLRSampler groups boxes with it; mmcv runs it on the CPU in every
  build. Written in torch with mmcv's arithmetic (float32 areas, IoU >= threshold) and order.
* ``sigmoid_focal_loss_forward`` / ``_backward``: what RetinaNet's FocalLoss calls on CUDA
  (on the CPU mmdet uses its own Python focal loss), with the formulas of mmcv's CUDA kernel.

Any other kernel, when called, raises ``EnvironmentProblem`` naming it and the way to compiled
mmcv; importing ``mmcv.ops`` never fails, since mmcv only checks that the names exist.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision  # noqa: F401  (registers the torch.ops.torchvision kernels)

from pisa_train.errors import EnvironmentProblem

# What `mmcv.ops.get_compiler_version()` and `get_compiling_cuda_version()` answer: no compiled ops.
COMPILER_VERSION = "none: mmcv-lite, kernels from torchvision and torch (pisa-train)"
NO_COMPILED_CUDA = "not available"
HOW_TO_GET_COMPILED_MMCV = ("install mmcv with its compiled ops: make setup MMCV=compiled "
                            "(docs: 'Compiled mmcv')")


def _check_floating(name: str, *tensors: torch.Tensor) -> None:
    for tensor in tensors:
        if tensor.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise TypeError(f"mmcv op {name}: expected floating tensors, got {tensor.dtype}")


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height: int, aligned_width: int,
                      spatial_scale: float, sampling_ratio: int, pool_mode: int, aligned: bool) -> None:
    """mmcv's RoIAlign forward: writes into ``output``. ``pool_mode`` 1 is average, 0 is max."""
    if pool_mode != 1:
        raise EnvironmentProblem(
            "mmcv op roi_align_forward with pool_mode='max' has no torchvision kernel (torchvision's "
            f"RoIAlign averages); use pool_mode='avg', or {HOW_TO_GET_COMPILED_MMCV}")
    _check_floating("roi_align_forward", input, rois)
    output.copy_(torch.ops.torchvision.roi_align(input, rois.to(input.dtype), float(spatial_scale),
                                                 int(aligned_height), int(aligned_width), int(sampling_ratio),
                                                 bool(aligned)))


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height: int,
                       aligned_width: int, spatial_scale: float, sampling_ratio: int, pool_mode: int,
                       aligned: bool) -> None:
    """mmcv's RoIAlign backward: writes the gradient of the features into ``grad_input``."""
    if pool_mode != 1:
        raise EnvironmentProblem(
            "mmcv op roi_align_backward with pool_mode='max' has no torchvision kernel; use pool_mode='avg', "
            f"or {HOW_TO_GET_COMPILED_MMCV}")
    batch, channels, height, width = grad_input.shape
    grad_input.copy_(torch.ops.torchvision._roi_align_backward(
        grad_output, rois.to(grad_output.dtype), float(spatial_scale), int(aligned_height), int(aligned_width),
        batch, channels, height, width, int(sampling_ratio), bool(aligned)))


def nms(bboxes, scores, iou_threshold: float, offset: int = 0):
    """Indices of the boxes NMS keeps, highest score first (mmcv's ``ext_module.nms``).

    Boxes of equal score are visited in the order of mmcv's own ``scores.sort(0, descending=True)``:
    torchvision sorts stably, so given boxes already in that order it keeps it, and the kept set is
    mmcv's, ties included."""
    if offset:
        # mmcv's legacy offset=1 counts width as x2 - x1 + 1: the same IoUs as boxes 1 wider and higher.
        bboxes = bboxes.clone()
        bboxes[:, 2:4] += offset
    order = scores.sort(0, descending=True)[1]
    keep = torch.ops.torchvision.nms(bboxes[order], scores[order].to(bboxes.dtype), float(iou_threshold))
    return order[keep]


def nms_match(dets, iou_threshold: float) -> list[list[int]]:
    """mmcv's ``nms_match`` kernel: the groups NMS would form, each a kept box's index followed by the
    indices of the boxes it suppresses (IoU >= threshold), in order of decreasing score.

    The same arithmetic as mmcv's C++ (float32 areas ``(x2 - x1) * (y2 - y1)``, IoU
    ``inter / (area_i + area_j - inter)``) and the same order (``scores.sort(descending)``), so the
    groups are the same, ties included. The IoUs are computed for all pairs at once; the greedy walk
    visits only the kept boxes."""
    dets = dets.detach().to("cpu", torch.float32)
    count = dets.shape[0]
    if count == 0:
        return []
    x1, y1, x2, y2, scores = (dets[:, k].contiguous() for k in range(5))
    areas = (x2 - x1) * (y2 - y1)
    order = scores.sort(0, descending=True)[1]
    x1, y1, x2, y2, areas = (values[order] for values in (x1, y1, x2, y2, areas))
    width = (torch.minimum(x2[:, None], x2[None, :]) - torch.maximum(x1[:, None], x1[None, :])).clamp_(min=0)
    height = (torch.minimum(y2[:, None], y2[None, :]) - torch.maximum(y1[:, None], y1[None, :])).clamp_(min=0)
    inter = width * height
    overlaps = (inter / (areas[:, None] + areas[None, :] - inter) >= float(iou_threshold)).numpy()
    order_list = order.tolist()
    suppressed = [False] * count
    groups = []
    for i in range(count):
        if suppressed[i]:
            continue
        group = [order_list[i]]
        for j in overlaps[i, i + 1:].nonzero()[0] + i + 1:
            if not suppressed[j]:
                suppressed[j] = True
                group.append(order_list[j])
        groups.append(group)
    return groups


def _focal_terms(input, target, weight, gamma: float, alpha: float, gradient: bool):
    """The per-element focal loss (or its gradient) of mmcv's CUDA kernel, with float32 limits."""
    num_classes = input.shape[1]
    positive = (target[:, None] == torch.arange(num_classes, device=input.device)[None, :]).to(input.dtype)
    p = torch.sigmoid(input)
    tiny = torch.finfo(torch.float32).tiny  # FLT_MIN, as the kernel clamps the logarithms
    log_p, log_1mp = torch.log(p.clamp(min=tiny)), torch.log((1 - p).clamp(min=tiny))
    if gradient:
        term_p = (1 - p).pow(gamma) * (1 - p - gamma * p * log_p)
        term_n = p.pow(gamma) * (gamma * (1 - p) * log_1mp - p)
    else:
        term_p = (1 - p).pow(gamma) * log_p
        term_n = p.pow(gamma) * log_1mp
    values = -positive * alpha * term_p - (1 - alpha) * (1 - positive) * term_n
    if weight is not None and weight.numel() > 0:
        # The kernel scales by weight[target]; background (target == num_classes) reads no weight.
        index = target.clamp(max=weight.numel() - 1).long()
        values = values * torch.where(target < weight.numel(), weight[index], torch.ones_like(weight[index]))[:, None]
    return values


def sigmoid_focal_loss_forward(input, target, weight, output, gamma: float, alpha: float) -> None:
    output.copy_(_focal_terms(input, target, weight, float(gamma), float(alpha), gradient=False))


def sigmoid_focal_loss_backward(input, target, weight, grad_input, gamma: float, alpha: float) -> None:
    grad_input.copy_(_focal_terms(input, target, weight, float(gamma), float(alpha), gradient=True))


def get_compiler_version() -> str:
    return COMPILER_VERSION


def get_compiling_cuda_version() -> str:
    return NO_COMPILED_CUDA


KERNELS: dict[str, Callable] = {function.__name__: function for function in (
    roi_align_forward, roi_align_backward, nms, nms_match, sigmoid_focal_loss_forward,
    sigmoid_focal_loss_backward, get_compiler_version, get_compiling_cuda_version)}


def missing_kernel(name: str) -> Callable:
    """What ``mmcv._ext.<name>`` is for a kernel pisa-train does not provide: raises when called."""
    def kernel_missing(*args, **kwargs):
        raise EnvironmentProblem(f"mmcv op '{name}' needs mmcv's compiled kernels, and this environment has "
                                 f"mmcv-lite (pisa-train provides only RoIAlign, NMS, nms_match and the sigmoid "
                                 f"focal loss); {HOW_TO_GET_COMPILED_MMCV}")

    kernel_missing.__name__ = name
    kernel_missing.missing = True
    return kernel_missing
