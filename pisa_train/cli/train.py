"""``pisa-train CONFIG``: train a detector from an MMDetection config.

It does what MMDetection 3's tools/train.py does: read the config, merge
``--cfg-options``, let a few flags rewrite it (config/build.py), build MMEngine's
Runner and call ``train()`` (engine/runner.py). It is not a training loop of its
own: MMEngine runs it. ``--nproc`` starts the processes (engine/launch.py);
``--doctor`` reports instead of training (engine/doctor.py).
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.options import (add_config_overrides, add_launch_options, add_model_zoo_options,
                                    add_print_config, add_run_options, add_training_options)
from pisa_train.cli.running import print_config, run_command
from pisa_train.config.build import build_train_config
from pisa_train.engine.device import choose_device
from pisa_train.errors import UsageError
from pisa_train.terminal import announcer

PROG = "pisa-train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Train a PISA (or any MMDetection 3) detector from a config file.",
        epilog="Example: pisa-train configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py "
               "--cfg-options train_dataloader.batch_size=4")
    parser.add_argument("config", nargs="?", help="MMDetection config file (.py) or a model name from --list "
                                                  "(pisa_ssd300_coco); optional with --doctor")
    parser.add_argument("--doctor", action="store_true",
                        help="report versions, mmcv's kernels, GPUs, free disk and, with a CONFIG, whether its "
                             "dataset and pretrained weights are in place; train nothing (exit 6 if something "
                             "the config needs is missing)")
    add_training_options(parser)
    add_model_zoo_options(parser)
    add_config_overrides(parser)
    add_print_config(parser)
    add_run_options(parser)
    add_launch_options(parser)
    return parser


def train(args: argparse.Namespace) -> int:
    import os
    import time

    from pisa_train.engine import runner

    say = announcer(PROG)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))  # as mmdet's tools/train.py
    device = choose_device(args.device)  # first: --device cpu must hide GPUs before CUDA starts
    cfg, notes = build_train_config(args, device)
    for line in notes:
        say(line)
    runner.prepare_datasets(cfg, ("train_dataloader", "val_dataloader"), say)
    description, started = runner.describe_run(cfg, device), time.time()
    if runner.launched_rank(cfg) == 0:  # once per run, not once per process
        for line in description:
            say(line)
    runner.run_training(cfg, args.trust_checkpoint, say)
    if runner.launched_rank(cfg) == 0:  # the process group is gone: the launcher's rank says who is rank 0
        from pisa_train.results.report import report_training_run
        from pisa_train.results.training_curves import draw_curves_of_run

        say(draw_curves_of_run(cfg.work_dir))
        say(f"report: {report_training_run(cfg.work_dir, description, started)}")
        say(f"done; checkpoints and logs are in {cfg.work_dir}")
    return 0


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """--nproc N: this process starts the N workers (each one runs train()) and waits for them."""
    from pisa_train.engine.launch import launch_local_workers, torchrun_arguments

    if args.launcher != "none":
        raise UsageError(f"--nproc starts the processes itself; leave out --launcher {args.launcher}")
    torchrun_args = torchrun_arguments(argv, args.nproc, args.nnodes, args.node_rank, args.master_addr,
                                       args.master_port)
    print(f"[{PROG}] starting {args.nproc} processes on this machine (node {args.node_rank} of {args.nnodes}): "
          f"torchrun {' '.join(torchrun_args)}", flush=True)
    return launch_local_workers(torchrun_args)


def doctor(args: argparse.Namespace) -> int:
    from pisa_train.engine.doctor import run_doctor

    cfg = build_train_config(args, choose_device(args.device)).cfg if args.config else None
    run_doctor(cfg, args.work_dir or ".", print_line=announcer(PROG))
    return 0


def main(argv: list[str] | None = None) -> int:
    def work(args: argparse.Namespace) -> int:
        if args.list:
            from pisa_train.config.loading import model_zoo_table
            print(model_zoo_table(), flush=True)
            return 0
        if args.doctor:
            return doctor(args)
        if args.config is None:
            raise UsageError("the following arguments are required: config (or --doctor)")
        if args.print_config is not None:
            return print_config(PROG, args, build_train_config)
        if args.nproc is not None:
            return launch(args, sys.argv[1:] if argv is None else argv)
        return train(args)

    return run_command(PROG, build_parser(), work, argv)


if __name__ == "__main__":
    sys.exit(main())
