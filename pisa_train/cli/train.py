"""``pisa-train CONFIG``: train a detector from an MMDetection config.

It does what MMDetection 3's tools/train.py does: read the config, merge
``--cfg-options``, let a few flags rewrite it, build MMEngine's Runner and call
``train()``. It adds ``--max-iters`` (a quick check of a config), ``--device``,
resume that works on torch >= 2.6, generation of the demo's synthetic dataset,
and one-line errors. It is not a training loop of its own: MMEngine runs it.
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.shared_options import (DEVICE_HELP, add_config_overrides, add_debug, add_no_progress,
                                           add_ops_backend, add_trust_checkpoint, load_config_with_overrides)
from pisa_train.error_reporting import run_reporting_errors

PROG = "pisa-train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a PISA (or any MMDetection 3) detector from a config file.",
        epilog="Example: pisa-train configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py "
               "--cfg-options train_dataloader.batch_size=4")
    parser.add_argument("config", nargs="?", help="MMDetection config file (.py); optional with --doctor")
    parser.add_argument("--doctor", action="store_true",
                        help="report versions, mmcv's kernels, GPUs, free disk and, with a CONFIG, whether its "
                             "dataset and pretrained weights are in place; train nothing (exit 6 if something "
                             "the config needs is missing)")
    parser.add_argument("--work-dir", help="where checkpoints and logs go (default: the config's work_dir, "
                                           "else work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                        help="resume training: alone, from the newest checkpoint in the work dir; "
                             "with a path, from that checkpoint")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision (fp16) training")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the learning rate by total batch size / auto_scale_lr.base_batch_size")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="how the processes were started (torchrun: pytorch; srun: slurm)")
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="start N training processes on this machine through torch's elastic launcher "
                             "(torchrun), one per GPU (nccl) or N on the CPU (gloo)")
    parser.add_argument("--nnodes", type=int, default=1, help="with --nproc: number of machines (torchrun's)")
    parser.add_argument("--node-rank", type=int, default=0, help="with --nproc: this machine's rank (torchrun's)")
    parser.add_argument("--master-addr", help="with --nproc: address of the machine with --node-rank 0")
    parser.add_argument("--master-port", type=int, help="with --nproc: its free port (torchrun's, default 29500)")
    parser.add_argument("--seed", type=int, help="random seed (sets randomness.seed)")
    parser.add_argument("--max-iters", type=int, metavar="N",
                        help="stop after N iterations and save a checkpoint, without validation: "
                             "a quick check that a config trains")
    parser.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)
    add_config_overrides(parser)
    add_trust_checkpoint(parser)
    add_ops_backend(parser)
    add_no_progress(parser)
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log to TensorBoard (MMEngine's TensorboardVisBackend, under "
                             "WORK_DIR/<timestamp>/vis_data/); needs the tensorboard package")
    add_debug(parser)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def build_config(args: argparse.Namespace, device: str):
    """The config that will be handed to MMEngine (the file, --cfg-options, then the
    flags), and the lines that say what --data resolved, for the log."""
    from pisa_train import config_rewrites as rewrite

    cfg, notes = load_config_with_overrides(args)
    cfg = rewrite.set_launcher(cfg, args.launcher)
    cfg = rewrite.apply_work_dir(cfg, args.work_dir, args.config)
    cfg = rewrite.apply_device(cfg, device)
    cfg = rewrite.use_cpu_model_wrapper(cfg, device)
    from pisa_train.ops_backend import backend_to_apply, mmcv_kernel_devices

    ops_backend = backend_to_apply(args.ops_backend, device, mmcv_kernel_devices())
    if ops_backend is not None:
        cfg = rewrite.apply_ops_backend(cfg, ops_backend)
    if args.amp:
        cfg = rewrite.enable_amp(cfg)
    if args.auto_scale_lr:
        cfg = rewrite.enable_auto_scale_lr(cfg)
    cfg = rewrite.apply_resume(cfg, args.resume)
    cfg = rewrite.apply_seed(cfg, args.seed)
    cfg = rewrite.limit_iterations(cfg, args.max_iters)
    cfg = rewrite.add_training_safeguards(cfg)
    cfg = rewrite.log_losses_per_rank(cfg)  # after limit_iterations, which sets the logger interval
    if args.progress:
        cfg = rewrite.show_progress_bars(cfg)
    if args.tensorboard:
        from pisa_train.optional_packages import require_tensorboard

        require_tensorboard()
        cfg = rewrite.enable_tensorboard(cfg)
    return cfg, notes


def train(args: argparse.Namespace) -> int:
    import os

    from pisa_train.device import choose_device

    # As mmdet's tools/train.py: launchers that pass --local-rank instead of setting LOCAL_RANK.
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))

    device = choose_device(args.device)  # first: --device cpu must hide GPUs before CUDA starts
    cfg, notes = build_config(args, device)
    for line in notes:
        print(f"[{PROG}] {line}", flush=True)

    from pisa_train import engine

    engine.prepare_datasets(cfg, ("train_dataloader", "val_dataloader"))
    if engine.launched_rank(cfg) == 0:  # once per run, not once per process
        for line in engine.describe_run(cfg, device):
            print(f"[{PROG}] {line}", flush=True)
    engine.run_training(cfg, args.trust_checkpoint)
    from mmengine.dist import is_main_process

    if is_main_process():
        from pisa_train.errors import DataError
        from pisa_train.training_curves import plot_training_curves

        try:
            print(f"[{PROG}] training curves: {plot_training_curves(cfg.work_dir)} "
                  f"(redraw them with pisa-plot {cfg.work_dir})", flush=True)
        except DataError as no_logs:  # a run shorter than the logging interval: nothing to draw, not a failure
            print(f"[{PROG}] no training curves drawn: {no_logs}", flush=True)
        print(f"[{PROG}] done; checkpoints and logs are in {cfg.work_dir}", flush=True)
    return 0


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """--nproc N: this process starts the N workers (each one runs train()) and waits for them."""
    from pisa_train.errors import UsageError
    from pisa_train.local_launch import launch_local_workers, torchrun_arguments

    if args.launcher != "none":
        raise UsageError(f"--nproc starts the processes itself; leave out --launcher {args.launcher}")
    torchrun_args = torchrun_arguments(argv, args.nproc, args.nnodes, args.node_rank, args.master_addr,
                                       args.master_port)
    print(f"[{PROG}] starting {args.nproc} processes on this machine (node {args.node_rank} of {args.nnodes}): "
          f"torchrun {' '.join(torchrun_args)}", flush=True)
    return launch_local_workers(torchrun_args)


def doctor(args: argparse.Namespace) -> int:
    from pisa_train.device import choose_device
    from pisa_train.doctor import run_doctor

    cfg = None
    if args.config:
        cfg, _ = build_config(args, choose_device(args.device))
    run_doctor(cfg, args.work_dir or ".", print_line=lambda line: print(f"[{PROG}] {line}", flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.doctor:
        return run_reporting_errors(PROG, lambda: doctor(args), debug=args.debug)
    if args.config is None:
        parser.error("the following arguments are required: config (or --doctor)")
    if args.nproc is not None:
        return run_reporting_errors(PROG, lambda: launch(args, sys.argv[1:] if argv is None else argv),
                                    debug=args.debug)
    return run_reporting_errors(PROG, lambda: train(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
