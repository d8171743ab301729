"""Patch: the ``mmdet.core.export`` module that mmdet 3.3.0 imports while a model is exported to ONNX.

Upstream: mmdet 3.3.0. ``delta2bbox`` (models/task_modules/coders/delta_xywh_bbox_coder.py),
``tblr2bboxes`` (tblr_bbox_coder.py) and ``distance2bbox`` (structures/bbox/transforms.py) clip
boxes with ``from mmdet.core.export import dynamic_clip_for_onnx`` when
``torch.onnx.is_in_onnx_export()``. ``mmdet.core`` was removed in mmdet 3.0 (export moved to
mmdeploy), so every ONNX export of a Faster R-CNN or RetinaNet fails with
``ModuleNotFoundError: No module named 'mmdet.core'`` (open-mmlab/mmdetection#10225 asks for export).

The stand-in: a module ``mmdet.core.export`` in ``sys.modules`` holding mmdet 2.28.2's
``dynamic_clip_for_onnx`` (mmdet/core/export/onnx_helper.py), which clips to a (height, width)
tensor so that the clip follows the image size given to the graph. It is installed only for the
export (``provide_mmdet_core_export``) and adds nothing else under ``mmdet.core``.

Guard test: tests/test_onnx_export.py::test_upstream_box_coder_imports_mmdet_core_export_while_exporting
fails once mmdet has the module again, or stops importing it.
"""
from __future__ import annotations

import sys
import types

MODULE_NAME = "mmdet.core.export"


def dynamic_clip_for_onnx(x1, y1, x2, y2, max_shape):
    """mmdet 2.28.2's: clip box coordinates to ``max_shape`` = tensor (height, width), traceable."""
    import torch

    assert isinstance(max_shape, torch.Tensor), "`max_shape` should be tensor of (h,w) for onnx"
    # Scaled to [0, 1], clamped and scaled back: ONNX's Clip takes no tensor bounds per axis.
    x1 = torch.clamp(x1 / max_shape[1], 0, 1) * max_shape[1]
    y1 = torch.clamp(y1 / max_shape[0], 0, 1) * max_shape[0]
    x2 = torch.clamp(x2 / max_shape[1], 0, 1) * max_shape[1]
    y2 = torch.clamp(y2 / max_shape[0], 0, 1) * max_shape[0]
    return x1, y1, x2, y2


def provide_mmdet_core_export() -> None:
    """Make ``from mmdet.core.export import dynamic_clip_for_onnx`` work (once; idempotent)."""
    if MODULE_NAME in sys.modules:
        return
    core = sys.modules.get("mmdet.core") or types.ModuleType("mmdet.core")
    export = types.ModuleType(MODULE_NAME)
    export.__doc__ = "pisa-train's stand-in for mmdet 2.x's mmdet.core.export (engine/patches/mmdet_core_export.py)"
    export.dynamic_clip_for_onnx = dynamic_clip_for_onnx
    core.export = export
    sys.modules.setdefault("mmdet.core", core)
    sys.modules[MODULE_NAME] = export
