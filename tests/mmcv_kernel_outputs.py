"""Run mmcv.ops' RoIAlign, NMS, batched_nms and nms_match on fixed random inputs and save what they return.

    python tests/mmcv_kernel_outputs.py OUT.pt

tests/test_mmcv_kernels.py runs this file with two Pythons, the test venv's (mmcv-lite: the kernels of
pisa_train/engine/torch_kernels.py) and compiled mmcv's (``.venv-mmcv-compiled``), and compares the two
files. The inputs come from seeded generators, so both processes see the same tensors. ``pisa_train`` is
imported first, as every pisa-train command does: without compiled mmcv that provides ``mmcv._ext``.
"""
from __future__ import annotations

import sys

import pisa_train  # noqa: F401  (first: it provides mmcv._ext where mmcv has none)

# isort: split
import torch
from mmcv.ops import batched_nms, nms, nms_match, roi_align

from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled


def random_boxes(generator: torch.Generator, count: int, size: float) -> torch.Tensor:
    xy = torch.rand(count, 2, generator=generator) * size * 0.8
    wh = torch.rand(count, 2, generator=generator) * size * 0.3 + 1
    return torch.cat([xy, xy + wh], dim=1)


def tied_boxes(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes repeated exactly and shifted by a pixel, with scores drawn from four values: every tie NMS
    can meet (equal scores, equal IoUs, IoU exactly at the threshold)."""
    base = random_boxes(generator, 40, 200)
    boxes = torch.cat([base, base, base + 1.0, base.round()])
    scores = torch.tensor([0.9, 0.5, 0.5, 0.3])[torch.randint(0, 4, (len(boxes),), generator=generator)]
    return boxes, scores


def outputs() -> dict:
    torch.set_num_threads(1)
    results: dict = {"compiled": mmcv_ext_is_compiled()}
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 50, 84, generator=generator)
    rois = torch.cat([torch.randint(0, 2, (300, 1), generator=generator).float(),
                      random_boxes(generator, 300, 330)], dim=1)
    grad = torch.randn(300, 8, 7, 7, generator=generator)
    for aligned in (True, False):
        for sampling_ratio in (0, 2):
            leaf = features.clone().requires_grad_()
            out = roi_align(leaf, rois, (7, 7), 0.25, sampling_ratio, "avg", aligned)
            out.backward(grad)
            results[f"roi_align aligned={aligned} sampling_ratio={sampling_ratio}"] = (out.detach(), leaf.grad)

    cases = {"random": (random_boxes(generator, 1000, 400), torch.rand(1000, generator=generator)),
             "tied": tied_boxes(generator)}
    for name, (boxes, scores) in cases.items():
        for threshold in (0.3, 0.5, 0.7):
            results[f"nms {name} iou={threshold}"] = nms(boxes, scores, threshold)[1]
            results[f"nms offset=1 {name} iou={threshold}"] = nms(boxes, scores, threshold, offset=1)[1]
            labels = torch.arange(len(boxes)) % 3
            dets, keep = batched_nms(boxes, scores, labels, dict(iou_threshold=threshold))
            results[f"batched_nms {name} iou={threshold}"] = (dets, keep)
            groups = nms_match(torch.cat([boxes, scores[:, None]], dim=1), threshold)
            results[f"nms_match {name} iou={threshold}"] = [group.tolist() for group in groups]
    return results


if __name__ == "__main__":
    torch.save(outputs(), sys.argv[1])
