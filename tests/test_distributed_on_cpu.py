"""--nproc and distributed training on CPUs (gloo): the launcher's arguments, the mmengine 0.10.7
behaviours distributed_on_cpu works around, and (slow) a real 2-process run that resumes."""
from __future__ import annotations

import inspect
import os
import re

import pytest
import torch

from pisa_train import config_rewrites as rewrite
from pisa_train.errors import UsageError
from pisa_train.local_launch import torchrun_arguments, worker_arguments


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
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(multi)
    assert (parsed.nproc_per_node, parsed.nnodes, parsed.node_rank, parsed.master_addr, parsed.master_port,
            parsed.module, parsed.training_script) == ("8", "2", 1, "10.0.0.1", 29511, True, "pisa_train.cli.train")
    for bad in (dict(nproc=0), dict(nproc=2, nnodes=2, node_rank=2, master_addr="h"), dict(nproc=2, nnodes=2)):
        with pytest.raises(UsageError):
            torchrun_arguments(["c.py"], **bad)


def test_nproc_with_a_launcher_is_refused(capsys):
    from pisa_train.cli.train import main

    assert main(["c.py", "--nproc", "2", "--launcher", "slurm"]) == 2
    assert "leave out --launcher slurm" in capsys.readouterr().err


def test_cpu_model_wrapper_only_for_distributed_cpu_runs():
    from mmengine.config import Config

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
    from mmengine.config import Config

    cfg = Config(dict(launcher="pytorch", default_hooks=dict(logger=dict(interval=5)), custom_hooks=[]))
    assert rewrite.log_losses_per_rank(cfg).custom_hooks == [dict(type="PerRankLossHook", interval=5)]
    single = Config(dict(launcher="none", default_hooks=dict(logger=dict(interval=5))))
    assert "custom_hooks" not in rewrite.log_losses_per_rank(single)


def test_describe_run_states_world_size_total_batch_and_scaled_lr(monkeypatch):
    from mmengine.config import Config

    from pisa_train.engine import describe_run

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


# ---- the upstream behaviours worked around ---------------------------------------------------

def test_mmengine_still_needs_a_gpu_to_init_a_pytorch_launched_run():
    """mmengine 0.10.7 calls torch.cuda.set_device before init_process_group whatever the
    backend, and skips its own init when the process group exists. If either changes,
    distributed_on_cpu.init_process_group_on_cpu must be revisited (or removed)."""
    from mmengine.dist import utils as dist_utils
    from mmengine.runner import Runner

    init_source = inspect.getsource(dist_utils._init_dist_pytorch)
    assert re.search(r"else:\s*\n\s*torch\.cuda\.set_device\(local_rank\)", init_source)
    assert "if self.distributed and not is_distributed():" in inspect.getsource(Runner.setup_env)
    assert "device_ids=[int(os.environ['LOCAL_RANK'])]" in inspect.getsource(Runner.wrap_model)


def test_cpu_model_wrapper_accepts_what_torch_refuses_on_the_cpu(tmp_path):
    import torch.distributed as torch_dist
    from mmengine.model import MMDistributedDataParallel

    from pisa_train.distributed_on_cpu import CpuDistributedDataParallel

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
    from conftest import run_command
    from tiny_training import tiny_demo

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
    # One set of checkpoints (rank 0 writes them), no temporary files left behind.
    assert sorted(p.name for p in work_dir.iterdir() if p.is_file() and not p.name.endswith(".py")
                  and not p.name.endswith(".png")) == ["iter_1.pth", "iter_2.pth", "last_checkpoint"]
    assert not [p for p in work_dir.rglob(".*") if p.is_file()]

    second = run_command("train", tiny_demo(work_dir, 3, "--nproc", "2", "--auto-scale-lr", "--resume"),
                         cwd=tmp_path, timeout=300)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-5000:]
    assert "resumed epoch: 0, iter: 2" in log
    assert "Iter(train) [3/3]" in log
    assert (work_dir / "last_checkpoint").read_text().strip().endswith("iter_3.pth")


def test_dist_train_and_slurm_train_scripts_start_pisa_train(tmp_path):
    """The scripts' command lines, with `echo` standing in for python and srun."""
    import subprocess

    from conftest import REPO_ROOT

    env = dict(os.environ, PYTHON="echo", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", PORT="29511")
    out = subprocess.run(["bash", str(REPO_ROOT / "tools" / "dist_train.sh"), "c.py", "4", "--amp"], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1",
                   "--nproc-per-node=4", "--master-port=29511", "--module", "pisa_train.cli.train", "c.py",
                   "--launcher", "pytorch", "--amp"]
    from torch.distributed.run import get_args_parser

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


def test_synthetic_data_generated_by_two_processes_at_once(tmp_path, monkeypatch):
    """--nproc starts every worker at once, and each generates the demo's data if it is not
    there; the one that finishes second must use the first one's (this failed with
    'Directory not empty' before)."""
    from mmengine.config import Config

    from pisa_train import synthetic_shapes

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
