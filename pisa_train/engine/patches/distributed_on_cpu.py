"""Patch: distributed training on CPUs (gloo), which mmengine 0.10.7 assumes a GPU for.

mmengine 0.10.7 cannot run ``--launcher pytorch``, ``slurm`` or ``mpi`` on a machine without a
GPU, in two places:

1. ``mmengine.dist.utils._init_dist_pytorch``, ``_init_dist_slurm`` and ``_init_dist_mpi`` call
   ``torch.cuda.set_device(local_rank)`` before ``init_process_group`` whatever the
   backend, which fails without an NVIDIA driver. ``Runner.setup_env`` calls ``init_dist``
   only ``if self.distributed and not is_distributed()``, so ``init_process_group_on_cpu``
   starts the gloo process group itself, before the Runner is built, and mmengine's init
   is skipped. Nothing of mmengine is patched. For slurm it first sets what
   ``_init_dist_slurm`` sets from srun's variables (``slurm_process_environment``;
   without SLURM_LOCALID mmengine divides SLURM_PROCID by ``torch.cuda.device_count()``,
   0 here, where this takes local rank 0); for mpi, what ``_init_dist_mpi`` sets from Open
   MPI's (``mpi_process_environment``).
2. ``Runner.wrap_model`` gives DistributedDataParallel ``device_ids=[LOCAL_RANK]``, which
   torch refuses for a module on the CPU ("device_ids ... only work with ... GPU
   modules"). ``CpuDistributedDataParallel`` (registered in mmengine's MODEL_WRAPPERS)
   is mmengine's MMDistributedDataParallel without ``device_ids`` on the CPU;
   config/rewrites.py's ``use_cpu_model_wrapper`` selects it through ``model_wrapper_cfg``.

Guard tests: tests/test_distributed_on_cpu.py::test_mmengine_still_needs_a_gpu_to_init_a_pytorch_launched_run,
tests/test_distributed_on_cpu.py::test_mmengine_still_needs_a_gpu_to_init_an_srun_launched_run and
tests/test_distributed_on_cpu.py::test_mmengine_still_needs_a_gpu_to_init_an_mpi_launched_run fail if
mmengine changes either behaviour (then this module can go, or must change).
"""
from __future__ import annotations

import datetime
import os
import subprocess
from collections.abc import Callable, Mapping

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from pisa_train.errors import EnvironmentProblem


class CpuDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for a model on the CPU: torch's DDP takes no device_ids there."""

    def __init__(self, module, device_ids=None, **kwargs):
        if next(module.parameters()).device.type == "cpu":
            device_ids = None
        super().__init__(module=module, device_ids=device_ids, **kwargs)


def register_cpu_model_wrapper() -> None:
    MODEL_WRAPPERS.register_module(module=CpuDistributedDataParallel, force=True)


def first_host_of(node_list: str) -> str:
    """The first host of a Slurm node list ("node[03-05]" -> "node03"), as mmengine asks scontrol."""

    try:
        hosts = subprocess.run(["scontrol", "show", "hostname", node_list], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as failure:
        raise EnvironmentProblem(
            f"--launcher slurm: MASTER_ADDR is not set and `scontrol show hostname {node_list}` failed ({failure}); "
            f"start the processes with srun (tools/slurm_train.sh), or set MASTER_ADDR to the first node") from None
    if not hosts:
        raise EnvironmentProblem(f"--launcher slurm: `scontrol show hostname {node_list}` named no host; "
                                 f"set MASTER_ADDR to the first node")
    return hosts[0]


def slurm_process_environment(environ: Mapping[str, str], port=None,
                              first_host: Callable[[str], str] = first_host_of) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT of a process that srun started,
    from its SLURM_* variables, as mmengine 0.10.7's ``_init_dist_slurm`` sets them: the
    master port is ``port`` (the config's ``env_cfg.dist_cfg.port``), else MASTER_PORT, else
    29500; the master address MASTER_ADDR, else the node list's first host."""

    missing = [name for name in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST") if name not in environ]
    if missing:
        raise EnvironmentProblem(f"--launcher slurm: {', '.join(missing)} not set; start the processes with srun "
                                 f"(tools/slurm_train.sh), or use --nproc N (or torchrun) on one machine")
    return dict(RANK=str(int(environ["SLURM_PROCID"])), WORLD_SIZE=str(int(environ["SLURM_NTASKS"])),
                # srun always sets SLURM_LOCALID; mmengine falls back to PROCID % GPUs, which has no CPU meaning.
                LOCAL_RANK=str(int(environ.get("SLURM_LOCALID", "0"))),
                MASTER_ADDR=environ.get("MASTER_ADDR") or first_host(environ["SLURM_NODELIST"]),
                MASTER_PORT=str(port) if port is not None else environ.get("MASTER_PORT", "29500"))


def mpi_process_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT of a process that Open MPI's
    mpirun started, as mmengine 0.10.7's ``_init_dist_mpi`` sets them (MASTER_ADDR must be
    exported to every process; MASTER_PORT defaults to 29500)."""

    missing = [name for name in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE") if name not in environ]
    if missing:
        raise EnvironmentProblem(f"--launcher mpi: {', '.join(missing)} not set; start the processes with Open "
                                 f"MPI's mpirun, or use --nproc N (or torchrun) on one machine")
    if not environ.get("MASTER_ADDR"):
        raise EnvironmentProblem("--launcher mpi: MASTER_ADDR is not set; export the first node's address to "
                                 "every process, e.g. mpirun -x MASTER_ADDR=node01 -x MASTER_PORT=29500 ...")
    return dict(RANK=str(int(environ["OMPI_COMM_WORLD_RANK"])), WORLD_SIZE=str(int(environ["OMPI_COMM_WORLD_SIZE"])),
                LOCAL_RANK=str(int(environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))),
                MASTER_ADDR=environ["MASTER_ADDR"], MASTER_PORT=environ.get("MASTER_PORT", "29500"))


def init_process_group_on_cpu(cfg) -> bool:
    """Start the gloo process group of a ``--launcher pytorch`` run (torchrun's RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT), a ``--launcher slurm`` run (srun's SLURM_*
    variables, turned into those as mmengine does) or a ``--launcher mpi`` run (Open MPI's
    OMPI_COMM_WORLD_* variables, likewise) on CPUs, as mmengine would without its
    ``torch.cuda.set_device``. True if it did; False when there is nothing to do (not
    distributed, another launcher, already started, or a GPU run, which mmengine starts itself)."""

    launcher = cfg.get("launcher", "none")
    if launcher not in ("pytorch", "slurm", "mpi") or torch_dist.is_initialized() or torch.cuda.is_available():
        return False
    dist_cfg = dict((cfg.get("env_cfg") or {}).get("dist_cfg") or {})
    backend = dist_cfg.pop("backend", "gloo")
    if dist_cfg.get("timeout") is not None:  # seconds in the config, as mmengine's init_dist converts them
        dist_cfg["timeout"] = datetime.timedelta(seconds=dist_cfg["timeout"])
    if launcher == "slurm":
        os.environ.update(slurm_process_environment(os.environ, port=dist_cfg.pop("port", None)))
    elif launcher == "mpi":
        os.environ.update(mpi_process_environment(os.environ))
    torch_dist.init_process_group(backend=backend, rank=int(os.environ["RANK"]),
                                  world_size=int(os.environ["WORLD_SIZE"]), **dist_cfg)
    return True
