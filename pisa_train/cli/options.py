"""Command-line options that several pisa-* commands share, defined once so that they
mean the same everywhere, and the one way a command runs (``run_command``)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pisa_train.engine.device import OPS_BACKENDS
from pisa_train.engine.launch import LAUNCHERS
from pisa_train.error_reporting import run_reporting_errors


def add_config_overrides(parser: argparse.ArgumentParser, with_data: bool = True) -> None:
    """--data, --cfg-options and --cfg-add."""
    if with_data:
        parser.add_argument("--data", metavar="DIR",
                            help="a COCO-format dataset folder (Roboflow export, COCO 2017 layout, or annotations "
                                 "beside images/): sets the data paths, classes and num_classes of the config")
    parser.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=[],
                        help="override config settings, e.g. model.roi_head.bbox_head.num_classes=3 "
                             "train_dataloader.batch_size=4 (values parsed as mmengine's DictAction does); "
                             "a key the config does not have is refused with the closest keys it has")
    parser.add_argument("--cfg-add", nargs="+", metavar="KEY=VALUE", default=[],
                        help="add settings the config does not have yet, e.g. "
                             "train_dataloader.dataset.metainfo.classes=(a,b) (as --cfg-options, without the check)")


def add_model_zoo_options(parser: argparse.ArgumentParser) -> None:
    """--load-from and --list: pisa-train's use of the released models (fetch/model_zoo.py)."""
    parser.add_argument("--load-from", metavar="CHECKPOINT|URL|MODEL_NAME",
                        help="start from these weights (not their optimizer state or iteration): a .pth file, an "
                             "URL, or a released model's name (see --list); trained on other classes, its class "
                             "layers start fresh. Fetched from $PISA_TRAIN_WEIGHT_MIRRORS, the URL, then "
                             "mmassets.onedl.ai, verified, cached in $TORCH_HOME/hub/checkpoints")
    parser.add_argument("--list", action="store_true",
                        help="list the models in configs/ (usable as CONFIG without path or .py): published COCO "
                             "box and mask AP, checkpoint file, and whether it is already downloaded")


def add_run_options(parser: argparse.ArgumentParser, launcher: bool = True, progress: bool = True) -> None:
    """--device, --launcher, --ops-backend, --trust-checkpoint, --no-progress, --debug: how a run runs."""
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        help="run on this device (default: cuda when a GPU is visible, else cpu)")
    if launcher:
        parser.add_argument("--launcher", choices=LAUNCHERS, default="none",
                            help="how the processes were started (torchrun: pytorch; srun: slurm; mpirun: mpi)")
        # As mmdet's tools: launchers that pass --local-rank instead of setting LOCAL_RANK.
        parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ops-backend", choices=OPS_BACKENDS, default="auto",
                        help="kernels for RoIAlign and NMS: mmcv's compiled ops or torchvision's (default auto: "
                             "mmcv's where mmcv has kernels for the device, else torchvision's)")
    parser.add_argument("--trust-checkpoint", action="append", default=[], metavar="FILE",
                        help="unpickle this checkpoint in full, even if it holds more than weights and mmengine's "
                             "training state (which can run code from the file: only for files you trust)")
    if progress:
        add_no_progress(parser)
    add_debug(parser)


def add_launch_options(parser: argparse.ArgumentParser) -> None:
    """--nproc and the torchrun flags that go with it (engine/launch.py)."""
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="start N training processes on this machine through torch's elastic launcher "
                             "(torchrun), one per GPU (nccl) or N on the CPU (gloo)")
    parser.add_argument("--nnodes", type=int, default=1, help="with --nproc: number of machines (torchrun's)")
    parser.add_argument("--node-rank", type=int, default=0, help="with --nproc: this machine's rank (torchrun's)")
    parser.add_argument("--master-addr", help="with --nproc: address of the machine with --node-rank 0")
    parser.add_argument("--master-port", type=int, help="with --nproc: its free port (torchrun's, default 29500)")


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress display on a terminal (there is none when the output is not a terminal)")


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def run_command(prog: str, parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], int | None],
                argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``work(args)`` through the one place that turns errors into exit codes.
    --help and usage errors end with argparse's own exit code (0 or 2), returned, not raised."""
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    return run_reporting_errors(prog, lambda: work(args), debug=args.debug)
