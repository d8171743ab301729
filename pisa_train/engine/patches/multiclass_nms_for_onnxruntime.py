"""Patch: mmdet's ``multiclass_nms`` keeps its score threshold while a model is exported to ONNX.

Upstream: mmdet 3.3.0, ``mmdet/models/layers/bbox_nms.py``, ``multiclass_nms``. While
``torch.onnx.is_in_onnx_export()`` it skips the score threshold ("NonZero not supported in
TensorRT") and appends a dummy box for TensorRT's NMS plugin. Exported that way, the R-CNN's
NMS runs on every (proposal, class) pair: 80,000 boxes for COCO's 80 classes, more than mmcv's
``split_thr``, which makes ``batched_nms`` loop over the classes the traced image had, with that
count fixed in the graph. onnxruntime has NonZero, so pisa-train exports what PyTorch runs:
threshold first, then one class-offset NMS (``split_thr`` out of reach).

The replacement keeps one box of score 0 in front of NMS so that NMS never gets an empty input
(a traced ``numel() == 0`` branch would be fixed at trace time); the exported graph's final
``score > score_thr`` (engine/onnx_export.py) drops it. It is swapped in for the bbox heads only
while ``torch.onnx.export`` runs (``multiclass_nms_filtering_scores_while_exporting``).

Guard test: tests/test_onnx_export.py::test_upstream_multiclass_nms_skips_the_score_threshold_while_exporting
fails once mmdet keeps the threshold in export (then this module can go).
"""
from __future__ import annotations

import contextlib
import importlib

# Beyond any box count: batched_nms then always runs one NMS with class offsets.
NO_SPLIT = 1 << 62
# Where mmdet's R-CNN bbox heads look multiclass_nms up (``from mmdet.models.layers import multiclass_nms``).
BBOX_HEAD_MODULES = ("mmdet.models.roi_heads.bbox_heads.bbox_head",)


def multiclass_nms_filtering_scores(multi_bboxes, multi_scores, score_thr: float, nms_cfg, max_num: int = -1,
                                    score_factors=None, return_inds: bool = False, box_dim: int = 4):
    """mmdet 3.3.0's ``multiclass_nms`` outside export, in traceable form (see the module's docstring)."""
    import torch
    from mmcv.ops import batched_nms

    num_classes = multi_scores.size(1) - 1
    if multi_bboxes.shape[1] > box_dim:
        bboxes = multi_bboxes.view(multi_scores.size(0), -1, box_dim)
    else:
        bboxes = multi_bboxes[:, None].expand(multi_scores.size(0), num_classes, box_dim)
    scores = multi_scores[:, :-1]
    labels = torch.arange(num_classes, dtype=torch.long, device=scores.device).view(1, -1).expand_as(scores)
    bboxes, scores, labels = bboxes.reshape(-1, box_dim), scores.reshape(-1), labels.reshape(-1)
    valid = scores > score_thr
    if score_factors is not None:  # multiplied after the threshold, as upstream does
        scores = scores * score_factors.view(-1, 1).expand(multi_scores.size(0), num_classes).reshape(-1)
    inds = valid.nonzero(as_tuple=False).squeeze(1)
    bboxes = torch.cat([bboxes[inds], bboxes.new_zeros(1, box_dim)], dim=0)
    scores = torch.cat([scores[inds], scores.new_zeros(1)], dim=0)
    labels = torch.cat([labels[inds], labels.new_zeros(1)], dim=0)
    inds = torch.cat([inds, inds.new_zeros(1)], dim=0)
    dets, keep = batched_nms(bboxes, scores, labels, {**nms_cfg, "split_thr": NO_SPLIT})
    if max_num > 0:
        dets, keep = dets[:max_num], keep[:max_num]
    return (dets, labels[keep], inds[keep]) if return_inds else (dets, labels[keep])


@contextlib.contextmanager
def multiclass_nms_filtering_scores_while_exporting():
    """Within: mmdet's bbox heads call ``multiclass_nms_filtering_scores``; after: mmdet's own again."""
    modules = [importlib.import_module(name) for name in BBOX_HEAD_MODULES]
    originals = [module.multiclass_nms for module in modules]
    try:
        for module in modules:
            module.multiclass_nms = multiclass_nms_filtering_scores
        yield
    finally:
        for module, original in zip(modules, originals):
            module.multiclass_nms = original
