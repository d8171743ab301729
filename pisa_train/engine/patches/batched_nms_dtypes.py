"""Patch: mmcv's ``batched_nms`` on boxes and scores of different floating dtypes (mixed precision).

Upstream: mmcv 2.1.0, ``mmcv/ops/nms.py``, ``batched_nms``. With more boxes than
``split_thr`` (10,000) it runs NMS class by class and writes each class's kept scores
into ``scores_after_nms``, made with the dtype of ``scores``, from ``dets``, which mmcv's
``nms`` builds by concatenating boxes and scores, so in the dtype both promote to. Under
autocast the two differ (float32 boxes decoded from anchors, float16 or bfloat16 scores
from the head), and the write fails: "RuntimeError: Index put requires the source and
destination dtypes match, got Half for the destination and Float for the source"
(open-mmlab/mmdetection#9727, AMP training of two-stage detectors). mmcv PR #3332 (and
onedl-mmcv #46) fixes that line by casting ``dets[:, -1]`` to the dtype of
``scores_after_nms``; no mmcv 2.1.x release has it.

The port: ``batched_nms`` is called with boxes and scores promoted to their common dtype
(``torch.promote_types``) when they differ, and untouched when they agree. For NMS this
gives what PR #3332's fixed function gives, the same kept indices and the same boxes and
scores in the same dtype, since the fixed function's result is the concatenation of the
boxes and the scores, which promotes the same way; the class offsets added to the boxes
are computed in the wider dtype instead of the boxes' own (no worse). Where a boxes
dtype lower than the scores' reached mmcv's CPU kernel, it failed earlier ("expected
scalar type Float but found Half"); mmcv_ops_in_float32.py covers that under autocast.

Applied where mmdet looks the function up (rebinding.py): mmdet imports it into
its modules' namespaces (rpn_head.py, base_dense_head.py, layers/bbox_nms.py, ...).

Guard test: tests/test_amp.py::test_upstream_batched_nms_still_clashes_on_mixed_dtypes
fails once upstream's batched_nms accepts mixed dtypes (then this module can go);
tests/test_amp.py::test_batched_nms_on_mixed_dtypes_gives_what_mmcv_pr_3332_gives
compares the port with PR #3332's line applied to mmcv's own source.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from pisa_train.engine.patches.rebinding import rebind_everywhere


def batched_nms_on_common_dtype(batched_nms: Callable) -> Callable:
    """``batched_nms`` that promotes boxes and scores to one dtype first (mmcv PR #3332's result)."""

    import torch

    @functools.wraps(batched_nms)
    def batched_nms_promoting(boxes, scores, *args, **kwargs):
        if boxes.dtype != scores.dtype and boxes.is_floating_point() and scores.is_floating_point():
            common = torch.promote_types(boxes.dtype, scores.dtype)
            boxes, scores = boxes.to(common), scores.to(common)
        return batched_nms(boxes, scores, *args, **kwargs)

    return batched_nms_promoting


def fix_batched_nms_dtype_clash() -> Callable:
    """Install the port of mmcv PR #3332 in mmcv and in every module that imported batched_nms."""

    return rebind_everywhere("mmcv.ops.nms", "batched_nms", batched_nms_on_common_dtype)
