"""Inference under autocast: ``--amp`` on pisa-eval and pisa-infer.

mmengine 0.10.7's TestLoop has a switch for it, ``test_cfg.fp16``, which runs each test
step under mmengine's ``autocast`` in the device's default dtype (float16 on CUDA,
bfloat16 on the CPU) with no way to ask for another (``--amp-dtype bfloat16`` on a GPU);
mmdet 3.3's ``inference_detector`` (pisa-infer) has none. So ``--amp`` makes the model's
own ``test_step`` run under ``mmengine.runner.amp.autocast(dtype=...)``, which both call:
``AutocastTestHook`` does it to the Runner's model before the test loop (pisa-eval), and
engine/runner.py's ``load_detector`` to pisa-infer's model. The predictions leave the
step in float32, as a float32 run gives them: CocoMetric and pisa-infer turn them into
numpy arrays, and numpy has no bfloat16.
"""
from __future__ import annotations

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner.amp import autocast
from mmengine.structures import BaseDataElement


def _floating_fields_in_float32(element) -> None:
    """Every floating tensor of an mmengine data element (and of the elements it holds) in float32."""

    if not isinstance(element, BaseDataElement):
        return
    for key, value in list(element.items()):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            setattr(element, key, value.float())
        else:
            _floating_fields_in_float32(value)


def autocast_test_steps(model, dtype: str) -> None:
    """Make ``model.test_step`` (the wrapped module's, for a model wrapper) run under autocast in ``dtype``."""

    module = model.module if is_model_wrapper(model) else model
    if getattr(module.test_step, "_pisa_train_autocast", None) == dtype:
        return
    test_step = module.test_step
    device_type = next(module.parameters()).device.type
    cast_dtype = getattr(torch, dtype)

    def test_step_under_autocast(data):
        with autocast(device_type=device_type, dtype=cast_dtype):
            predictions = test_step(data)
        for prediction in predictions:
            _floating_fields_in_float32(prediction)
        return predictions

    test_step_under_autocast._pisa_train_autocast = dtype
    module.test_step = test_step_under_autocast


class AutocastTestHook(Hook):
    """Runs the test loop's model under autocast in ``dtype`` ('float16' or 'bfloat16')."""

    def __init__(self, dtype: str = "float16"):
        self.dtype = dtype

    def before_test(self, runner) -> None:
        autocast_test_steps(runner.model, self.dtype)
