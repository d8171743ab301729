"""``pisa-train --nproc N``: start N training processes here, as ``torchrun`` would.

It runs torch's elastic launcher (``torch.distributed.run``, what the ``torchrun``
command runs) in this process, which starts N workers of
``python -m pisa_train.cli.train <the same arguments> --launcher pytorch`` and waits
for them; each worker finds its RANK, LOCAL_RANK and WORLD_SIZE in its environment.
Multi-node flags go to torchrun unchanged. Not a launcher of its own: for anything
beyond these flags, call torchrun directly (tools/dist_train.sh) or srun
(tools/slurm_train.sh).
"""
from __future__ import annotations

from pisa_train.errors import UsageError

# How the processes of a run were started: not at all, torchrun (and --nproc), srun, Open MPI's mpirun.
LAUNCHERS = ("none", "pytorch", "slurm", "mpi")

# pisa-train flag -> torchrun flag; each takes one value.
LAUNCH_FLAGS = {"--nproc": "--nproc-per-node", "--nnodes": "--nnodes", "--node-rank": "--node-rank",
                "--master-addr": "--master-addr", "--master-port": "--master-port"}


def worker_arguments(argv: list[str]) -> list[str]:
    """The pisa-train arguments for each worker: ``argv`` without the launch flags and any
    --launcher, with ``--launcher pytorch``."""
    dropped = set(LAUNCH_FLAGS) | {"--launcher"}
    kept, skip_value = [], False
    for token in argv:
        if skip_value:
            skip_value = False
            continue
        name = token.split("=", 1)[0]
        if name in dropped:
            skip_value = "=" not in token
            continue
        kept.append(token)
    return [*kept, "--launcher", "pytorch"]


def torchrun_arguments(argv: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                       master_addr: str | None = None, master_port: int | None = None) -> list[str]:
    """The arguments torchrun gets (pure: tested without starting anything)."""
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, not {nproc}")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank must be between 0 and --nnodes - 1 ({nnodes - 1}), not {node_rank}")
    if nnodes > 1 and master_addr is None:
        raise UsageError("--nnodes > 1 needs --master-addr, the address of the node with --node-rank 0")
    launch = ["--nproc-per-node", str(nproc), "--nnodes", str(nnodes), "--node-rank", str(node_rank)]
    if nnodes == 1 and master_addr is None and master_port is None:
        launch = ["--standalone", *launch]  # a free port on localhost: two runs on one machine do not collide
    if master_addr is not None:
        launch += ["--master-addr", master_addr]
    if master_port is not None:
        launch += ["--master-port", str(master_port)]
    return [*launch, "--module", "pisa_train.cli.train", *worker_arguments(argv)]


def launch_local_workers(torchrun_args: list[str]) -> int:
    """Run torchrun's launcher; the exit code of the first worker that failed, else 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args(torchrun_args))
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        # Each worker has printed its own one-line error; a negative exit code is a signal.
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    return 0
