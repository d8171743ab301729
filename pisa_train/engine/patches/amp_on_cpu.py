"""Patch: mmengine's AmpOptimWrapper on a machine without an accelerator (``--amp`` on the CPU).

Upstream: mmengine 0.10.7 (and its main branch as of October 2025),
``mmengine/optim/optimizer/amp_optimizer_wrapper.py``: ``AmpOptimWrapper.__init__``
asserts ``is_cuda_available() or is_npu_available() or is_mlu_available() or
is_musa_available()`` ("``AmpOptimizerWrapper`` is only available training on gpu, npu,
mlu or musa"), although the rest of it works on the CPU: its ``optim_context`` enters
mmengine's ``autocast``, which on the CPU is ``torch.autocast('cpu')`` in bfloat16 (and
asserts bfloat16: float16 is refused there, see engine/device.py's ``choose_amp_dtype``),
and its GradScaler is torch's. The assertion dates from the wrapper's first, CUDA-only
version; open-mmlab/mmengine#960 added ``dtype='bfloat16'`` but kept it. (Reports of it,
such as open-mmlab/mmpretrain#1556, are about GPUs that were not visible.)

The change: while ``AmpOptimWrapper.__init__`` runs on a machine where mmengine's device
is the CPU, the module's ``is_cuda_available`` (which it uses for that assertion alone)
answers yes; everything else is mmengine's. On a machine with an accelerator nothing
changes. Loss scaling: bfloat16 has float32's exponent range, so gradients do not
underflow and nothing needs scaling; config/rewrites.py's ``enable_amp`` gives bfloat16
``loss_scale=dict(enabled=False)``, a GradScaler that passes the loss and the step through
unchanged (the dynamic one would also switch itself off on a machine without CUDA, with
a warning).

Guard test: tests/test_amp.py::test_upstream_amp_optim_wrapper_refuses_the_cpu fails once
mmengine accepts the CPU (then this module can go).
"""
from __future__ import annotations

import importlib

_WRAPPER_MODULE = "mmengine.optim.optimizer.amp_optimizer_wrapper"


def allow_amp_optim_wrapper_on_cpu() -> None:
    module = importlib.import_module(_WRAPPER_MODULE)
    wrapper_class = module.AmpOptimWrapper
    if getattr(wrapper_class.__init__, "_pisa_train_replacement", False):
        return
    upstream_init = wrapper_class.__init__

    def __init__(self, *args, **kwargs):
        from mmengine.device import get_device

        if get_device() != "cpu":
            return upstream_init(self, *args, **kwargs)
        accelerator_check = module.is_cuda_available
        module.is_cuda_available = lambda: True  # read by the assertion only
        try:
            upstream_init(self, *args, **kwargs)
        finally:
            module.is_cuda_available = accelerator_check

    __init__.__wrapped__ = upstream_init
    __init__._pisa_train_replacement = True
    wrapper_class.__init__ = __init__
