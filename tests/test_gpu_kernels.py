"""mmcv's CUDA kernels for RoIAlign and NMS against torchvision's on the same GPU, and against mmcv's own
CPU kernels: the check that an mmcv built on the target machine (tools/setup_env.py, nvcc) computes
what the CPU build and torchvision compute. GPU only; tools/gpu_check.sh runs them and fails when they
are skipped."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _mmcv_has_cuda_kernels() -> bool:
    from mmcv.ops import get_compiling_cuda_version

    return get_compiling_cuda_version() not in ("", "not available")


def _rois(generator, count, batch, size):
    xy = torch.rand(count, 2, generator=generator) * size * 0.8
    wh = torch.rand(count, 2, generator=generator) * size * 0.5
    index = torch.randint(0, batch, (count, 1), generator=generator).float()
    return torch.cat([index, xy, xy + wh], dim=1)


def test_this_mmcv_was_built_with_cuda_kernels():
    assert _mmcv_has_cuda_kernels(), "mmcv has no CUDA ops: set up with nvcc (tools/setup_env.py, CUDA_HOME)"


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_on_the_gpu_matches_torchvision_and_the_cpu(sampling_ratio):
    import torchvision
    from mmcv.ops import roi_align

    generator = torch.Generator().manual_seed(sampling_ratio)
    features = torch.randn(2, 16, 50, 84, generator=generator)
    rois = _rois(generator, 500, batch=2, size=336)
    grad = torch.randn(500, 16, 7, 7, generator=generator)
    results = {}
    for name, device in (("mmcv-cuda", "cuda"), ("torchvision-cuda", "cuda"), ("mmcv-cpu", "cpu")):
        x = features.to(device).requires_grad_(True)
        if name.startswith("mmcv"):
            out = roi_align(x, rois.to(device), (7, 7), 0.25, sampling_ratio, "avg", True)
        else:
            out = torchvision.ops.roi_align(x, rois.to(device), (7, 7), 0.25, sampling_ratio, aligned=True)
        (out * grad.to(device)).sum().backward()
        results[name] = (out.detach().cpu(), x.grad.cpu())
    for other in ("torchvision-cuda", "mmcv-cpu"):
        torch.testing.assert_close(results["mmcv-cuda"][0], results[other][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(results["mmcv-cuda"][1], results[other][1], rtol=1e-4, atol=1e-4)
    assert results["mmcv-cuda"][0].abs().sum() > 0


@pytest.mark.parametrize("iou_threshold", [0.3, 0.7])
def test_nms_on_the_gpu_keeps_the_boxes_torchvision_and_the_cpu_keep(iou_threshold):
    import torchvision
    from mmcv.ops import nms

    generator = torch.Generator().manual_seed(3)
    xy = torch.rand(2000, 2, generator=generator) * 800
    boxes = torch.cat([xy, xy + torch.rand(2000, 2, generator=generator) * 200], 1)
    scores = torch.rand(2000, generator=generator)
    keep_cuda = nms(boxes.cuda(), scores.cuda(), iou_threshold)[1].cpu()
    keep_cpu = nms(boxes, scores, iou_threshold)[1]
    keep_torchvision = torchvision.ops.nms(boxes.cuda(), scores.cuda(), iou_threshold).cpu()
    assert 10 < len(keep_cuda) < 2000
    assert keep_cuda.tolist() == keep_cpu.tolist() == keep_torchvision.tolist()
