"""mmcv.ops on a CUDA GPU as pisa-train's models call it: RoIAlign (forward and backward), NMS,
batched_nms and the sigmoid focal loss, run by pisa-train's kernels (torchvision's and torch's,
pisa_train/engine/torch_kernels.py) and compared with torchvision's own ops, mmdet's Python focal
loss and the same kernels on the CPU. Where compiled mmcv with CUDA ops is installed, its CUDA kernels
get the same comparisons and are compared with pisa-train's; elsewhere those tests (their names and
ids say ``compiled_mmcv``) are skipped with the reason.

GPU only. tools/gpu_check.sh runs this file twice: with .venv (mmcv-lite) and ``-k "not compiled_mmcv"``,
and, with ``--with-compiled-mmcv WHEEL``, in a venv holding that wheel; a skipped test fails either step.
"""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
import torchvision
from mmcv.ops import batched_nms, get_compiling_cuda_version, nms, roi_align, sigmoid_focal_loss
from mmdet.models.losses.focal_loss import FocalLoss, py_sigmoid_focal_loss

from pisa_train.engine.patches.mmcv_ext_from_torchvision import MODULE_NAME, TorchKernelsModule, mmcv_ext_is_compiled

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEVICE = "cuda"
# The modules of mmcv.ops whose kernels (their module-level `ext_module`) these tests run.
OP_MODULES = tuple(importlib.import_module(f"mmcv.ops.{name}") for name in ("roi_align", "nms", "focal_loss"))
COMPILED = mmcv_ext_is_compiled()
COMPILED_CUDA = COMPILED and get_compiling_cuda_version() not in ("", "not available")
NO_COMPILED_CUDA = (
    "compiled mmcv here has no CUDA ops (get_compiling_cuda_version() is 'not available'); build its wheel "
    "with TORCH_CUDA_ARCH_LIST and PISA_MMCV_CUDA=1 (tools/setup_env.py --mmcv compiled)" if COMPILED else
    "no compiled mmcv here: mmcv-lite, whose kernels are pisa-train's; tools/gpu_check.sh --with-compiled-mmcv "
    "WHEEL runs these in a venv with compiled mmcv")
needs_compiled_cuda = pytest.mark.skipif(not COMPILED_CUDA, reason=NO_COMPILED_CUDA)
KERNELS = [pytest.param("pisa-train", id="pisa_train"),
           pytest.param("compiled", id="compiled_mmcv", marks=needs_compiled_cuda)]
# Focal loss logits within +-8: beyond about 10, log(1 - sigmoid(x)) in float32, as mmcv's CUDA kernel
# computes it (and so pisa-train's), loses digits that mmdet's BCE with logits keeps.
LOGIT_LIMIT = 8.0


def use_pisa_train_kernels(monkeypatch) -> None:
    """mmcv.ops' Python on pisa-train's kernels. With mmcv-lite they already are (checked, not assumed);
    with compiled mmcv, each op module's ``ext_module`` is swapped for them for the test."""
    if not COMPILED:
        assert all(getattr(module.ext_module, "provided_by_pisa_train", False) for module in OP_MODULES)
        return
    kernels = TorchKernelsModule(MODULE_NAME)
    for module in OP_MODULES:
        monkeypatch.setattr(module, "ext_module", kernels)


@pytest.fixture(params=KERNELS)
def kernels(request, monkeypatch) -> str:
    """Whose kernels mmcv.ops runs in the test: pisa-train's, or compiled mmcv's."""
    if request.param == "pisa-train":
        use_pisa_train_kernels(monkeypatch)
    else:
        assert not any(getattr(module.ext_module, "provided_by_pisa_train", False) for module in OP_MODULES)
    return request.param


# ---- inputs (seeded on the CPU, so that every device and process sees the same tensors) -----------

def roi_align_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An FPN level at stride 4 of two 336x200 images, 500 RoIs on it and a gradient for the output.
    RoIs: most up to half the image, a fifth under 2 pixels (under one feature cell: aligned=False's
    minimum size), some across the image's edge."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 16, 50, 84, generator=generator)
    size = torch.tensor([336.0, 200.0])
    xy = torch.rand(500, 2, generator=generator) * size * 1.1 - size * 0.05
    wh = torch.rand(500, 2, generator=generator) * size * 0.5
    wh[:100] = torch.rand(100, 2, generator=generator) * 2
    index = torch.randint(0, 2, (500, 1), generator=generator).float()
    rois = torch.cat([index, xy, xy + wh], dim=1)
    return features, rois, torch.randn(500, 16, 7, 7, generator=generator)


def nms_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2000 boxes in an 800x800 image, their scores and one of 5 classes each."""
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(2000, 2, generator=generator) * 800
    boxes = torch.cat([xy, xy + torch.rand(2000, 2, generator=generator) * 200], dim=1)
    return boxes, torch.rand(2000, generator=generator), torch.randint(0, 5, (2000,), generator=generator)


def assert_no_iou_near(boxes: torch.Tensor, thresholds, margin: float = 1e-6) -> None:
    """The inputs' own check: no two boxes have an IoU (in float64, of the float32 boxes the kernels get)
    within ``margin`` of a threshold. Kernels round float32 differently (FMA contraction on CUDA, ``iou > t``
    or ``inter > t * union``) by about 1e-7, so NMS's decisions, and the kept lists, must then be equal."""
    b = boxes.double()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    size = (torch.min(b[:, None, 2:], b[None, :, 2:]) - torch.max(b[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = size[..., 0] * size[..., 1]
    iou = (inter / (area[:, None] + area[None, :] - inter)).fill_diagonal_(0)
    for threshold in thresholds:
        closest = (iou - threshold).abs().min().item()
        assert closest > margin, f"an IoU {closest:.2g} from {threshold}: draw other boxes"


def class_shifted(boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The boxes batched_nms (mmcv's and torchvision's alike) runs NMS on: each class shifted apart."""
    return boxes + (classes.to(boxes) * (boxes.max() + 1))[:, None]


def focal_loss_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RetinaNet-like: logits for 80 classes of 1000 anchors, labels with 80 for the background, a gradient."""
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(1000, 80, generator=generator) * 2).clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
    labels = torch.randint(0, 81, (1000,), generator=generator)
    return logits, labels, torch.rand(1000, 80, generator=generator)


# ---- the ops, on one device, returning CPU tensors ------------------------------------------------

def mmcv_roi_align(device: str, sampling_ratio: int, aligned: bool, seed: int = 0):
    features, rois, grad = roi_align_inputs(seed)
    leaf = features.to(device).requires_grad_(True)
    out = roi_align(leaf, rois.to(device), (7, 7), 0.25, sampling_ratio, "avg", aligned)
    out.backward(grad.to(device))
    return out.detach().cpu(), leaf.grad.cpu()


def torchvision_roi_align(device: str, sampling_ratio: int, aligned: bool, seed: int = 0):
    features, rois, grad = roi_align_inputs(seed)
    leaf = features.to(device).requires_grad_(True)
    out = torchvision.ops.roi_align(leaf, rois.to(device), (7, 7), 0.25, sampling_ratio, aligned=aligned)
    out.backward(grad.to(device))
    return out.detach().cpu(), leaf.grad.cpu()


def mmcv_focal_loss(device: str, seed: int = 0):
    """mmcv.ops.sigmoid_focal_loss per element, as mmdet's FocalLoss calls it on CUDA (weight None, 'none')."""
    logits, labels, grad = focal_loss_inputs(seed)
    leaf = logits.to(device).requires_grad_(True)
    out = sigmoid_focal_loss(leaf, labels.to(device), 2.0, 0.25, None, "none")
    out.backward(grad.to(device))
    return out.detach().cpu(), leaf.grad.cpu()


def mmdet_python_focal_loss(device: str, seed: int = 0):
    """mmdet's py_sigmoid_focal_loss per element, on one-hot targets as FocalLoss makes them off CUDA."""
    logits, labels, grad = focal_loss_inputs(seed)
    leaf = logits.to(device).requires_grad_(True)
    out = py_sigmoid_focal_loss(leaf, F.one_hot(labels, 81)[:, :80].to(device), None, 2.0, 0.25, "none")
    out.backward(grad.to(device))
    return out.detach().cpu(), leaf.grad.cpu()


def assert_close_pairs(found: tuple, expected: tuple, rtol: float, atol: float) -> None:
    for what, a, b in zip(("output", "gradient"), found, expected):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda text: f"{what}: {text}")


# ---- pisa-train's kernels (and compiled mmcv's, where installed) against the references -----------

def test_mmcv_ops_run_pisa_trains_kernels_unless_mmcv_is_compiled():
    """mmcv-lite: every op module's kernels are pisa-train's, and mmcv says it has no CUDA build. Compiled
    mmcv: Python finds its mmcv/_ext*.so before pisa-train's stand-in, and every op module runs it."""
    if COMPILED:
        assert importlib.import_module(MODULE_NAME).__file__.endswith(".so")
        assert not any(getattr(module.ext_module, "provided_by_pisa_train", False) for module in OP_MODULES)
    else:
        assert all(module.ext_module.provided_by_pisa_train for module in OP_MODULES)
        assert get_compiling_cuda_version() == "not available"


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "not_aligned"])
@pytest.mark.parametrize("sampling_ratio", [0, 2], ids=["adaptive_sampling", "sampling_2"])
def test_roi_align_forward_and_backward_on_cuda_match_torchvision_and_the_cpu(kernels, sampling_ratio, aligned):
    on_cuda = mmcv_roi_align(DEVICE, sampling_ratio, aligned)
    assert on_cuda[0].abs().sum() > 0 and on_cuda[1].abs().sum() > 0
    # The CUDA backward adds with atomics, in no fixed order: equal to float32 rounding, not bit for bit.
    assert_close_pairs(on_cuda, torchvision_roi_align(DEVICE, sampling_ratio, aligned), rtol=1e-4, atol=1e-4)
    assert_close_pairs(on_cuda, mmcv_roi_align("cpu", sampling_ratio, aligned), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_on_cuda_keeps_the_boxes_torchvision_and_the_cpu_keep(kernels, iou_threshold):
    boxes, scores, _ = nms_inputs(3)
    assert_no_iou_near(boxes, [iou_threshold])
    dets, keep = nms(boxes.to(DEVICE), scores.to(DEVICE), iou_threshold)
    keep = keep.cpu()
    assert 10 < len(keep) < 2000
    assert keep.tolist() == torchvision.ops.nms(boxes.to(DEVICE), scores.to(DEVICE), iou_threshold).cpu().tolist()
    assert keep.tolist() == nms(boxes, scores, iou_threshold)[1].tolist()
    assert torch.equal(dets.cpu(), torch.cat([boxes[keep], scores[keep, None]], dim=1))


@pytest.mark.parametrize("nms_cfg", [dict(iou_threshold=0.5), dict(iou_threshold=0.5, split_thr=500)],
                         ids=["all_classes_at_once", "class_by_class"])
def test_batched_nms_on_cuda_keeps_the_boxes_torchvision_and_the_cpu_keep(kernels, nms_cfg):
    """Both of mmcv's paths: one NMS on class-shifted boxes, and (more boxes than split_thr) one per class."""
    boxes, scores, classes = nms_inputs(4)
    assert_no_iou_near(class_shifted(boxes, classes), [0.5])
    dets, keep = batched_nms(boxes.to(DEVICE), scores.to(DEVICE), classes.to(DEVICE), dict(nms_cfg))
    keep = keep.cpu()
    assert 50 < len(keep) < 2000 and len(set(classes[keep].tolist())) == 5
    expected = torchvision.ops.batched_nms(boxes.to(DEVICE), scores.to(DEVICE), classes.to(DEVICE), 0.5).cpu()
    assert keep.tolist() == expected.tolist()
    assert keep.tolist() == batched_nms(boxes, scores, classes, dict(nms_cfg))[1].tolist()
    assert torch.equal(dets.cpu(), torch.cat([boxes[keep], scores[keep, None]], dim=1))


def test_sigmoid_focal_loss_on_cuda_matches_mmdets_python_loss_and_the_cpu(kernels):
    on_cuda = mmcv_focal_loss(DEVICE)
    assert on_cuda[0].sum() > 0 and on_cuda[1].abs().sum() > 0
    assert_close_pairs(on_cuda, mmdet_python_focal_loss(DEVICE), rtol=1e-4, atol=1e-5)
    assert_close_pairs(on_cuda, mmdet_python_focal_loss("cpu"), rtol=1e-4, atol=1e-5)
    if kernels == "pisa-train":  # compiled mmcv has no CPU kernel for the sigmoid focal loss
        assert_close_pairs(on_cuda, mmcv_focal_loss("cpu"), rtol=1e-4, atol=1e-5)


def test_retinanets_focal_loss_on_cuda_equals_itself_on_the_cpu(kernels):
    """mmdet's FocalLoss as RetinaNet's head calls it: mmcv's kernel on CUDA, mmdet's Python loss on the CPU."""
    logits, labels, _ = focal_loss_inputs(5)
    results = []
    for device in (DEVICE, "cpu"):
        leaf = logits.to(device).requires_grad_(True)
        loss = FocalLoss(use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)(leaf, labels.to(device),
                                                                                   avg_factor=250.0)
        loss.backward()
        results.append((loss.detach().cpu(), leaf.grad.cpu()))
    assert results[0][0] > 0
    assert_close_pairs(results[0], results[1], rtol=1e-4, atol=1e-6)


# ---- compiled mmcv's CUDA kernels against pisa-train's, on the same inputs ------------------------

@needs_compiled_cuda
def test_compiled_mmcv_cuda_kernels_give_what_pisa_trains_give(monkeypatch):
    def everything() -> dict:
        results = {f"roi_align sampling_ratio={ratio} aligned={aligned}": mmcv_roi_align(DEVICE, ratio, aligned)
                   for ratio in (0, 2) for aligned in (True, False)}
        boxes, scores, classes = nms_inputs(6)
        assert_no_iou_near(boxes, [0.3, 0.5, 0.7])
        assert_no_iou_near(class_shifted(boxes, classes), [0.3, 0.5, 0.7])
        for threshold in (0.3, 0.5, 0.7):
            results[f"nms iou={threshold}"] = nms(boxes.to(DEVICE), scores.to(DEVICE), threshold)
            results[f"batched_nms iou={threshold}"] = batched_nms(boxes.to(DEVICE), scores.to(DEVICE),
                                                                  classes.to(DEVICE), dict(iou_threshold=threshold))
        results["sigmoid_focal_loss"] = mmcv_focal_loss(DEVICE)
        return {name: tuple(tensor.cpu() for tensor in pair) for name, pair in results.items()}

    compiled = everything()
    use_pisa_train_kernels(monkeypatch)
    ours = everything()
    for name, expected in compiled.items():
        if "nms" in name:
            assert ours[name][1].tolist() == expected[1].tolist(), name
            assert torch.equal(ours[name][0], expected[0]), name
        else:
            assert_close_pairs(ours[name], expected, rtol=1e-4, atol=1e-4 if "roi_align" in name else 1e-5)
