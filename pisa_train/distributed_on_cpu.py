"""Distributed training on CPUs (gloo): what mmengine 0.10.7 assumes a GPU for, worked around.

mmengine 0.10.7 cannot run ``--launcher pytorch`` on a machine without a GPU, in two places:

1. ``mmengine.dist.utils._init_dist_pytorch`` calls ``torch.cuda.set_device(local_rank)``
   before ``init_process_group`` whatever the backend, which fails without an NVIDIA
   driver. ``Runner.setup_env`` calls ``init_dist`` only ``if self.distributed and not
   is_distributed()``, so ``init_process_group_on_cpu`` starts the gloo process group
   itself, before the Runner is built, and mmengine's init is skipped. Nothing of
   mmengine is patched.
2. ``Runner.wrap_model`` gives DistributedDataParallel ``device_ids=[LOCAL_RANK]``, which
   torch refuses for a module on the CPU ("device_ids ... only work with ... GPU
   modules"). ``CpuDistributedDataParallel`` (registered in mmengine's MODEL_WRAPPERS)
   is mmengine's MMDistributedDataParallel without ``device_ids`` on the CPU;
   ``config_rewrites.use_cpu_model_wrapper`` selects it through ``model_wrapper_cfg``.

tests/test_distributed_on_cpu.py fails if mmengine changes either behaviour (then this
module can go, or must change).
"""
from __future__ import annotations

import os

from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CpuDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for a model on the CPU: torch's DDP takes no device_ids there."""

    def __init__(self, module, device_ids=None, **kwargs):
        if next(module.parameters()).device.type == "cpu":
            device_ids = None
        super().__init__(module=module, device_ids=device_ids, **kwargs)


def init_process_group_on_cpu(cfg) -> bool:
    """Start the gloo process group of a ``--launcher pytorch`` run on CPUs (torchrun's
    RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), as mmengine would without its
    ``torch.cuda.set_device``. True if it did; False when there is nothing to do (not
    distributed, already started, or a GPU run, which mmengine starts itself)."""
    import torch
    import torch.distributed as torch_dist

    if cfg.get("launcher", "none") != "pytorch" or torch_dist.is_initialized() or torch.cuda.is_available():
        return False
    dist_cfg = dict((cfg.get("env_cfg") or {}).get("dist_cfg") or {})
    backend = dist_cfg.pop("backend", "gloo")
    torch_dist.init_process_group(backend=backend, rank=int(os.environ["RANK"]),
                                  world_size=int(os.environ["WORLD_SIZE"]), **dist_cfg)
    return True
