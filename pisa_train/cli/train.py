"""``pisa-train CONFIG``: train a detector from an MMDetection config.

It does what MMDetection 3's tools/train.py does: read the config, merge ``--cfg-options``, let a few flags
rewrite it (config/build.py), build MMEngine's Runner and call ``train()`` (engine/runner.py). It is not a training
loop of its own: MMEngine runs it. ``--nproc`` starts the processes (engine/launch.py); ``--doctor`` reports.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from pisa_train.cli import options
from pisa_train.cli.running import print_config, request_parser, run_command
from pisa_train.config.build import build_train_config
from pisa_train.config.loading import model_zoo_table
from pisa_train.config.requests import TrainRequest
from pisa_train.engine.device import choose_device
from pisa_train.errors import UsageError
from pisa_train.results import report
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
    options.add_training_options(parser)
    options.add_model_zoo_options(parser)
    options.add_config_overrides(parser)
    options.add_print_config(parser)
    options.add_run_options(parser, trackers=True)
    options.add_launch_options(parser)
    return parser


parse_request = request_parser(build_parser, TrainRequest)  # the request main() hands on, for tests and tools


def train(request: TrainRequest) -> str:
    """Train as ``request`` says (the command line's, or pisa_train.train's); the work dir."""
    from pisa_train.engine import runner

    say = announcer(PROG)
    device = choose_device(request.device)  # first: --device cpu must hide GPUs before CUDA starts
    cfg, notes = build_train_config(request, device)
    for line in notes:
        say(line)
    runner.prepare_datasets(cfg, ("train_dataloader", "val_dataloader"), say)
    description, started = runner.describe_run(cfg, device), time.time()
    rank_0 = runner.launched_rank(cfg) == 0  # the launcher's: it outlives the process group
    for line in description if rank_0 else ():  # once per run, not once per process
        say(line)
    outcome = runner.run_training(cfg, request.trust_checkpoint, say, on_start=report.start_recorder(
        cfg.work_dir, description, started) if rank_0 else None)  # in run.json at the start: a stopped run is listed
    if rank_0:
        from pisa_train.results.training_curves import draw_curves_of_run

        for line in report.outcome_lines(outcome):
            say(line)
        say(draw_curves_of_run(cfg.work_dir))
        say(f"report: {report.report_training_run(cfg.work_dir, description, started, outcome)}")
        say(f"done; checkpoints and logs are in {cfg.work_dir}")
    return cfg.work_dir


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """--nproc N: this process starts the N workers (each one runs train()) and waits for them."""
    from pisa_train.engine.launch import launch_local_workers, torchrun_arguments

    if args.launcher != "none":
        raise UsageError(f"--nproc starts the processes itself; leave out --launcher {args.launcher}")
    torchrun_args = torchrun_arguments(argv, args.nproc, args.nnodes, args.node_rank, args.master_addr,
                                       args.master_port)
    announcer(PROG)(f"starting {args.nproc} processes on this machine (node {args.node_rank} of {args.nnodes}): "
                    f"torchrun {' '.join(torchrun_args)}")
    return launch_local_workers(torchrun_args)


def doctor(args: argparse.Namespace) -> int:
    from pisa_train.engine.doctor import run_doctor

    cfg = (build_train_config(TrainRequest.from_namespace(args), choose_device(args.device)).cfg
           if args.config else None)
    run_doctor(cfg, args.work_dir or ".", print_line=announcer(PROG))
    return 0


def main(argv: list[str] | None = None) -> int:
    def work(args: argparse.Namespace) -> int:
        if args.list:
            print(model_zoo_table(), flush=True)
            return 0
        if args.doctor:
            return doctor(args)
        if args.config is None:
            raise UsageError("the following arguments are required: config (or --doctor)")
        if args.print_config is not None:
            return print_config(PROG, TrainRequest.from_namespace(args), build_train_config)
        if args.nproc is not None:
            return launch(args, sys.argv[1:] if argv is None else argv)
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))  # as mmdet's tools/train.py
        train(TrainRequest.from_namespace(args))
        return 0

    return run_command(PROG, build_parser(), work, argv)


if __name__ == "__main__":
    sys.exit(main())
