"""--nproc, --launcher slurm and distributed training on CPUs (gloo): the launchers' arguments and
variables, the mmengine 0.10.7 behaviours distributed_on_cpu works around, and (slow) a real
2-process run that resumes and a real 2-process run started as srun would."""
from __future__ import annotations

import inspect
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as torch_dist
from conftest import REPO_ROOT, run_command
from mmengine.config import Config
from mmengine.dist import utils as dist_utils
from mmengine.model import MMDistributedDataParallel
from mmengine.runner import Runner
from test_interrupted_training import FAULT_INJECTION, saved_iterations
from tiny_training import tiny_demo
from torch.distributed.run import get_args_parser

from pisa_train.cli.train import main
from pisa_train.config import rewrites as rewrite
from pisa_train.data import synthetic_shapes
from pisa_train.engine.launch import torchrun_arguments, worker_arguments
from pisa_train.engine.patches.distributed_on_cpu import (
    CpuDistributedDataParallel,
    first_host_of,
    init_process_group_on_cpu,
    mpi_process_environment,
    slurm_process_environment,
)
from pisa_train.engine.runner import describe_run, launched_rank, launched_world_size
from pisa_train.errors import EnvironmentProblem, UsageError

# ---- the launcher's arguments (pure) ---------------------------------------------------------

def test_worker_arguments_drop_the_launch_flags_and_add_the_pytorch_launcher():
    argv = ["c.py", "--nproc", "2", "--nnodes=2", "--node-rank", "1", "--master-addr", "10.0.0.1",
            "--master-port=29511", "--launcher", "none", "--max-iters", "3", "--cfg-options", "a=1"]
    assert worker_arguments(argv) == ["c.py", "--max-iters", "3", "--cfg-options", "a=1", "--launcher", "pytorch"]


def test_torchrun_arguments():
    single = torchrun_arguments(["c.py", "--nproc", "4"], 4)
    assert single == ["--standalone", "--nproc-per-node", "4", "--nnodes", "1", "--node-rank", "0",
                      "--module", "pisa_train.cli.train", "c.py", "--launcher", "pytorch"]
    multi = torchrun_arguments(["c.py"], 8, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29511)
    assert "--standalone" not in multi
    assert multi[:12] == ["--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                          "10.0.0.1", "--master-port", "29511", "--module", "pisa_train.cli.train"]
    # What torchrun itself makes of them.

    parsed = get_args_parser().parse_args(multi)
    assert (parsed.nproc_per_node, parsed.nnodes, parsed.node_rank, parsed.master_addr, parsed.master_port,
            parsed.module, parsed.training_script) == ("8", "2", 1, "10.0.0.1", 29511, True, "pisa_train.cli.train")
    for bad in (dict(nproc=0), dict(nproc=2, nnodes=2, node_rank=2, master_addr="h"), dict(nproc=2, nnodes=2)):
        with pytest.raises(UsageError):
            torchrun_arguments(["c.py"], **bad)


def test_nproc_with_a_launcher_is_refused(capsys):
    assert main(["c.py", "--nproc", "2", "--launcher", "slurm"]) == 2
    assert "leave out --launcher slurm" in capsys.readouterr().err


def test_cpu_model_wrapper_only_for_distributed_cpu_runs():
    cfg = Config(dict(launcher="pytorch", model=dict(type="M")))
    wrapped = rewrite.use_cpu_model_wrapper(cfg, "cpu")
    assert wrapped.model_wrapper_cfg == dict(type="CpuDistributedDataParallel", broadcast_buffers=False,
                                             find_unused_parameters=False)
    assert "model_wrapper_cfg" not in cfg
    assert "model_wrapper_cfg" not in rewrite.use_cpu_model_wrapper(cfg, "cuda")
    assert "model_wrapper_cfg" not in rewrite.use_cpu_model_wrapper(Config(dict(launcher="none")), "cpu")
    own = Config(dict(launcher="pytorch", model_wrapper_cfg=dict(type="Mine")))
    assert rewrite.use_cpu_model_wrapper(own, "cpu").model_wrapper_cfg == dict(type="Mine")


def test_distributed_runs_log_every_ranks_loss_at_the_logger_interval():
    cfg = Config(dict(launcher="pytorch", default_hooks=dict(logger=dict(interval=5)), custom_hooks=[]))
    assert rewrite.log_losses_per_rank(cfg).custom_hooks == [dict(type="PerRankLossHook", interval=5)]
    single = Config(dict(launcher="none", default_hooks=dict(logger=dict(interval=5))))
    assert "custom_hooks" not in rewrite.log_losses_per_rank(single)


def test_describe_run_states_world_size_total_batch_and_scaled_lr(monkeypatch):
    cfg = Config(dict(launcher="pytorch", work_dir="w", model=dict(roi_head=dict(bbox_head=dict(num_classes=3))),
                      train_dataloader=dict(batch_size=2, dataset=dict(type="CocoDataset")),
                      optim_wrapper=dict(type="OptimWrapper", optimizer=dict(lr=0.02)),
                      auto_scale_lr=dict(enable=True, base_batch_size=16),
                      train_cfg=dict(type="IterBasedTrainLoop", max_iters=2)))
    monkeypatch.setenv("WORLD_SIZE", "4")
    text = "\n".join(describe_run(cfg, "cpu"))
    assert "world size: 4; batch size per process: 2; total batch size: 8" in text
    assert "learning rate: 0.01 (the config's 0.02 x total batch 8 / 16, --auto-scale-lr)" in text
    cfg.auto_scale_lr.enable = False
    assert "learning rate: 0.02;" in "\n".join(describe_run(cfg, "cpu"))


def test_describe_run_reads_the_world_size_of_an_srun_started_process(monkeypatch):
    """srun sets SLURM_NTASKS and SLURM_PROCID; RANK and WORLD_SIZE come only when the process group starts."""

    cfg = Config(dict(launcher="slurm", work_dir="w", model=dict(roi_head=dict(bbox_head=dict(num_classes=3))),
                      train_dataloader=dict(batch_size=2, dataset=dict(type="CocoDataset")),
                      optim_wrapper=dict(type="OptimWrapper", optimizer=dict(lr=0.02)),
                      train_cfg=dict(type="IterBasedTrainLoop", max_iters=2)))
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "3")
    monkeypatch.setenv("SLURM_PROCID", "2")
    assert (launched_rank(cfg), launched_world_size(cfg)) == (2, 3)
    assert "world size: 3; batch size per process: 2; total batch size: 6;" in "\n".join(describe_run(cfg, "cpu"))
    cfg.launcher = "none"
    assert (launched_rank(cfg), launched_world_size(cfg)) == (0, 1)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    cfg.launcher = "mpi"
    assert launched_world_size(cfg) == 4


SRUN_VARIABLES = dict(SLURM_PROCID="1", SLURM_NTASKS="4", SLURM_LOCALID="1", SLURM_NODELIST="node[07-08]")


def test_slurm_process_environment_is_what_mmengine_sets():
    first_host = {"node[07-08]": "node07"}.__getitem__
    assert slurm_process_environment(SRUN_VARIABLES, first_host=first_host) == dict(
        RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="node07", MASTER_PORT="29500")
    own = dict(SRUN_VARIABLES, MASTER_ADDR="10.0.0.5", MASTER_PORT="29511")
    assert slurm_process_environment(own, first_host=first_host) == dict(
        RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", MASTER_ADDR="10.0.0.5", MASTER_PORT="29511")
    # env_cfg.dist_cfg.port, as mmengine's init_dist(port=...), wins over MASTER_PORT.
    assert slurm_process_environment(own, port=29600, first_host=first_host)["MASTER_PORT"] == "29600"


def test_slurm_process_environment_without_srun_says_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(EnvironmentProblem, match=r"SLURM_PROCID, SLURM_NODELIST not set; start the processes "
                                                 r"with srun \(tools/slurm_train.sh\), or use --nproc N"):
        slurm_process_environment(dict(SLURM_NTASKS="2"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    with pytest.raises(EnvironmentProblem, match=r"MASTER_ADDR is not set and `scontrol show hostname node1` "
                                                 r"failed .*set MASTER_ADDR to the first node"):
        slurm_process_environment(dict(SRUN_VARIABLES, SLURM_NODELIST="node1"))
    (tmp_path / "scontrol").write_text('#!/bin/sh\n'
                                       '[ "$1 $2 $3" = "show hostname gpu[1-2]" ] && printf "gpu1\\ngpu2\\n"\n')
    (tmp_path / "scontrol").chmod(0o755)
    assert first_host_of("gpu[1-2]") == "gpu1"


def test_mpi_process_environment_is_what_mmengine_sets_and_says_what_is_missing():
    mpirun = dict(OMPI_COMM_WORLD_RANK="3", OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_LOCAL_RANK="1",
                  MASTER_ADDR="node01")
    assert mpi_process_environment(mpirun) == dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1",
                                                   MASTER_ADDR="node01", MASTER_PORT="29500")
    assert mpi_process_environment(dict(mpirun, MASTER_PORT="29510"))["MASTER_PORT"] == "29510"
    with pytest.raises(EnvironmentProblem, match=r"OMPI_COMM_WORLD_SIZE not set; start the processes with Open "
                                                 r"MPI's mpirun"):
        mpi_process_environment(dict(OMPI_COMM_WORLD_RANK="0", MASTER_ADDR="x"))
    with pytest.raises(EnvironmentProblem, match=r"MASTER_ADDR is not set; export the first node's address .* "
                                                 r"mpirun -x MASTER_ADDR="):
        mpi_process_environment({k: v for k, v in mpirun.items() if k != "MASTER_ADDR"})


# ---- the upstream behaviours worked around ---------------------------------------------------

def test_mmengine_still_needs_a_gpu_to_init_an_mpi_launched_run():
    """mmengine 0.10.7's _init_dist_mpi calls torch.cuda.set_device and reads the OMPI_COMM_WORLD_*
    variables that mpi_process_environment reads; if that changes, revisit distributed_on_cpu."""

    source = inspect.getsource(dist_utils._init_dist_mpi)
    assert "torch.cuda.set_device(local_rank)" in source
    for variable in ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "MASTER_ADDR"):
        assert variable in source, variable
    assert "os.environ['MASTER_PORT'] = '29500'" in source


def test_mmengine_still_needs_a_gpu_to_init_a_pytorch_launched_run():
    """mmengine 0.10.7 calls torch.cuda.set_device before init_process_group whatever the
    backend, and skips its own init when the process group exists. If either changes,
    distributed_on_cpu.init_process_group_on_cpu must be revisited (or removed)."""

    init_source = inspect.getsource(dist_utils._init_dist_pytorch)
    assert re.search(r"else:\s*\n\s*torch\.cuda\.set_device\(local_rank\)", init_source)
    assert "if self.distributed and not is_distributed():" in inspect.getsource(Runner.setup_env)
    assert "device_ids=[int(os.environ['LOCAL_RANK'])]" in inspect.getsource(Runner.wrap_model)


def test_mmengine_still_needs_a_gpu_to_init_an_srun_launched_run(monkeypatch):
    """mmengine 0.10.7's _init_dist_slurm sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    MASTER_PORT from srun's variables, then calls torch.cuda.set_device whatever the backend:
    distributed_on_cpu.slurm_process_environment must set the same, and without a GPU
    init_process_group_on_cpu must start the group instead. If either changes, revisit them."""

    source = inspect.getsource(dist_utils._init_dist_slurm)
    assert re.search(r"else:\s*\n\s*torch\.cuda\.set_device\(local_rank\)", source)
    assert "scontrol show hostname {node_list} | head -n1" in source
    # What mmengine sets, with the device and the process group left out (the scontrol call answered).
    for name, value in dict(SRUN_VARIABLES, RANK="x", WORLD_SIZE="x", LOCAL_RANK="x", MASTER_ADDR="x",
                            MASTER_PORT="x").items():
        monkeypatch.setenv(name, value)  # restored afterwards, also those mmengine overwrites
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setattr(dist_utils.subprocess, "getoutput", lambda command: "node07")
    monkeypatch.setattr(dist_utils.torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist_utils.torch_dist, "init_process_group", lambda *args, **kwargs: None)
    expected = slurm_process_environment(SRUN_VARIABLES, first_host=lambda node_list: "node07")
    dist_utils._init_dist_slurm("gloo")
    assert {name: os.environ.get(name) for name in expected} == expected
    monkeypatch.undo()
    if not torch.cuda.is_available():  # the call itself fails without a GPU
        for name, value in dict(SRUN_VARIABLES, MASTER_ADDR="127.0.0.1", MASTER_PORT="29999").items():
            monkeypatch.setenv(name, value)
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.setenv(name, "x")
        with pytest.raises((RuntimeError, AssertionError), match="NVIDIA driver|CUDA"):
            dist_utils._init_dist_slurm("gloo")
        monkeypatch.delenv("SLURM_LOCALID")  # then mmengine takes SLURM_PROCID % torch.cuda.device_count()
        with pytest.raises(ZeroDivisionError):
            dist_utils._init_dist_slurm("gloo")
        assert not torch_dist.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, mmengine starts the process group itself")
def test_init_process_group_on_cpu_starts_an_srun_launched_process(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in dict(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0", SLURM_NODELIST="localhost",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="x", WORLD_SIZE="x",
                            LOCAL_RANK="x").items():
        monkeypatch.setenv(name, value)
    cfg = Config(dict(launcher="slurm", env_cfg=dict(dist_cfg=dict(backend="gloo"))))
    assert init_process_group_on_cpu(cfg)
    try:
        assert (torch_dist.get_backend(), torch_dist.get_rank(), torch_dist.get_world_size()) == ("gloo", 0, 1)
        assert [os.environ[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")] == ["0", "1", "0"]
        assert not init_process_group_on_cpu(cfg)  # already started
    finally:
        torch_dist.destroy_process_group()
    with pytest.raises(EnvironmentProblem, match="--launcher mpi: OMPI_COMM_WORLD_RANK"):  # not started by mpirun
        init_process_group_on_cpu(Config(dict(launcher="mpi")))


def test_cpu_model_wrapper_accepts_what_torch_refuses_on_the_cpu(tmp_path):
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="device_ids"):
            MMDistributedDataParallel(module=torch.nn.Linear(2, 2), device_ids=[0])  # mmengine's default
        wrapped = CpuDistributedDataParallel(module=torch.nn.Linear(2, 2), device_ids=[0], broadcast_buffers=False)
        assert wrapped.device_ids is None
        wrapped(torch.ones(1, 2)).sum().backward()
    finally:
        torch_dist.destroy_process_group()


# ---- a real 2-process run on the CPU ---------------------------------------------------------

@pytest.mark.slow
def test_two_processes_on_cpu_train_checkpoint_once_and_resume(tmp_path):
    work_dir = tmp_path / "work"
    first = run_command("train", tiny_demo(work_dir, 2, "--nproc", "2", "--auto-scale-lr"), cwd=tmp_path, timeout=300)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-5000:]
    assert "starting 2 processes on this machine" in log
    assert log.count("world size: 2; batch size per process: 2; total batch size: 4;") == 1  # rank 0 only
    # The demo config: lr 0.04 for a total batch of 8; MMEngine scales it the same way.
    assert "learning rate: 0.02 (the config's 0.04 x total batch 4 / 8, --auto-scale-lr)" in log
    assert "Scaling the original LR by 0.5" in log
    assert "Iter(train) [2/2]" in log and "loss_cls:" in log
    for rank in (0, 1):  # every process's own loss, not only rank 0's
        assert re.search(rf"rank {rank}/2 iter 2: loss: \d+\.\d+ .*loss_cls: \d+\.\d+", log), rank
    assert_rank_0_alone_wrote_the_work_dir(work_dir)

    second = run_command("train", tiny_demo(work_dir, 3, "--nproc", "2", "--auto-scale-lr", "--resume"),
                         cwd=tmp_path, timeout=300)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-5000:]
    assert "resumed epoch: 0, iter: 2" in log
    assert "Iter(train) [3/3]" in log
    assert (work_dir / "last_checkpoint").read_text().strip().endswith("iter_3.pth")


@pytest.mark.slow
def test_when_one_of_two_processes_diverges_both_stop_at_that_iteration_with_exit_8(tmp_path):
    """A NaN loss on rank 1 only (injected, see tests/fault_injection/sitecustomize.py): rank 0's loss is
    finite, yet both stop after that iteration (else rank 0 would wait forever in the next all-reduce),
    both name rank 1's term, and the last good checkpoint stays the newest. Rank 0 is slow to write its
    line (injected too): rank 1 must not exit before it, or torchrun stops rank 0 with its line unwritten."""

    work_dir = tmp_path / "work"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PISA_TEST_NAN_LOSS_AT_ITER="3", PISA_TEST_NAN_LOSS_RANK="1",
               PISA_TEST_SLOW_ERROR_LINE_RANK="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(FAULT_INJECTION), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "pisa_train.cli.train", *tiny_demo(work_dir, 6, "--nproc", "2")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 8, log[-5000:]
    expected = (f"pisa-train: error: iteration 3: on rank 1 of 2, loss term 'loss_cls' is nan, 'loss' is nan; "
                f"training stopped, and this step was not saved: the last good checkpoint is {work_dir / 'iter_2.pth'}")
    assert [line.startswith(expected) for line in result.stderr.splitlines()
            if line.startswith("pisa-train: error:")] == [True, True], log[-5000:]  # one line from each process
    assert "Iter(train) [2/6]" in log and "Iter(train) [4/6]" not in log
    for rank in (0, 1):
        assert re.search(rf"rank {rank}/2 iter 2: loss: \d+\.\d+", log) and f"rank {rank}/2 iter 4:" not in log
    assert saved_iterations(work_dir) == {"iter_1.pth": 1, "iter_2.pth": 2}


def assert_rank_0_alone_wrote_the_work_dir(work_dir):
    """One set of checkpoints and one run record and report (rank 0 writes them), no temporary files."""

    assert sorted(p.name for p in work_dir.iterdir() if p.is_file() and not p.name.endswith(".py")
                  and not p.name.endswith(".png")) == [
        ".pisa-train.lock", "iter_1.pth", "iter_2.pth", "last_checkpoint", "report.html", "run.json"]
    runs = json.loads((work_dir / "run.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["last_checkpoint"].endswith("iter_2.pth"), runs
    assert sum("world size: 2;" in line for line in runs[0]["description"]) == 1, runs[0]["description"]
    assert not [p for p in work_dir.rglob(".*") if p.is_file() and p.name != ".pisa-train.lock"]  # rank 0's lock


# What srun and Open MPI's mpirun give each process they start (rank, world size of 2).
LAUNCHER_ENVIRONMENTS = {
    "slurm": lambda rank: dict(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                               SLURM_NODELIST="localhost"),
    "mpi": lambda rank: dict(OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_SIZE="2",
                             OMPI_COMM_WORLD_LOCAL_RANK=str(rank)),
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["slurm", "mpi"])
def test_two_processes_started_by_srun_or_mpirun_on_cpu_train_and_checkpoint_once(tmp_path, launcher):
    """--launcher slurm and --launcher mpi on the CPU: two processes started as srun (or mpirun)
    starts them, each with its launcher's variables (neither srun nor mpirun is installed here,
    and there is no scontrol: MASTER_ADDR is given, as a batch script may, and as mpirun needs)."""

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    work_dir = tmp_path / "work"
    base_env = {name: value for name, value in os.environ.items()
                if name not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    processes = [subprocess.Popen(
        [sys.executable, "-m", "pisa_train.cli.train", *tiny_demo(work_dir, 2, "--launcher", launcher)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(base_env, PYTHONUNBUFFERED="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                 **LAUNCHER_ENVIRONMENTS[launcher](rank)))
        for rank in (0, 1)]
    try:
        logs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for rank, process in enumerate(processes):
        assert process.returncode == 0, (rank, logs[rank][-5000:])
    assert "world size: 2; batch size per process: 2; total batch size: 4;" in logs[0]
    assert "world size:" not in logs[1]  # the run is described once, by rank 0
    assert f"launcher: {launcher}" in logs[0]
    assert "Iter(train) [2/2]" in logs[0]
    for rank in (0, 1):  # each process trained as its rank of 2
        assert re.search(rf"rank {rank}/2 iter 2: loss: \d+\.\d+", "".join(logs)), rank
    assert_rank_0_alone_wrote_the_work_dir(work_dir)


def test_dist_train_and_slurm_train_scripts_start_pisa_train(tmp_path):
    """The scripts' command lines, with `echo` standing in for python and srun."""

    env = dict(os.environ, PYTHON="echo", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", PORT="29511")
    out = subprocess.run(["bash", str(REPO_ROOT / "tools" / "dist_train.sh"), "c.py", "4", "--amp"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1",
                   "--nproc-per-node=4", "--master-port=29511", "--module", "pisa_train.cli.train", "c.py",
                   "--launcher", "pytorch", "--amp"]

    assert get_args_parser().parse_args(out[2:]).nproc_per_node == "4"  # torchrun accepts them

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text('#!/bin/sh\necho srun "$@"\n')
    (fake_bin / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", PYTHON="python3", GPUS="16")
    out = subprocess.run(["bash", str(REPO_ROOT / "tools" / "slurm_train.sh"), "gpu", "pisa", "c.py", "w", "--amp"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["srun", "-p"] and "--ntasks=16" in out and "--gres=gpu:8" in out
    assert out[-9:] == ["python3", "-u", "-m", "pisa_train.cli.train", "c.py", "--work-dir=w", "--launcher",
                        "slurm", "--amp"]
    # CPU nodes: no GPU asked for, TASKS_PER_NODE processes per node.
    env.update(GPUS="4", GPUS_PER_NODE="0", TASKS_PER_NODE="2")
    out = subprocess.run(["bash", str(REPO_ROOT / "tools" / "slurm_train.sh"), "cpu", "pisa", "c.py", "w"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    assert not [arg for arg in out if arg.startswith("--gres")]
    assert "--ntasks=4" in out and "--ntasks-per-node=2" in out and out[-3:] == ["--work-dir=w", "--launcher", "slurm"]


def test_synthetic_data_generated_by_two_processes_at_once(tmp_path, monkeypatch):
    """--nproc starts every worker at once, and each generates the demo's data if it is not
    there; the one that finishes second must use the first one's (this failed with
    'Directory not empty' before)."""

    cfg = Config(dict(data_root=str(tmp_path / "data" / "shapes") + "/", synthetic_dataset=dict(
        generator="shapes", seed=0, num_train_images=2, num_val_images=1, image_size=48)))
    real_generate = synthetic_shapes.generate_shapes_dataset
    calls = []

    def other_process_finishes_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # while this process generates, the other one generates and renames
            monkeypatch.setattr(synthetic_shapes, "generate_shapes_dataset", real_generate)
            assert "generated" in synthetic_shapes.ensure_synthetic_dataset(cfg)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(synthetic_shapes, "generate_shapes_dataset", other_process_finishes_first)
    assert "generated" in synthetic_shapes.ensure_synthetic_dataset(cfg)
    assert (tmp_path / "data" / "shapes" / "annotations" / "train.json").is_file()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no staging left
