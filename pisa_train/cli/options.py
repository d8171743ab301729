"""Command-line options of the pisa-* commands, defined once so that they mean the same everywhere."""
from __future__ import annotations

import argparse

from pisa_train.engine.device import AMP_DTYPES, OPS_BACKENDS
from pisa_train.engine.launch import LAUNCHERS
from pisa_train.engine.trackers import TRACKERS


def add_config_overrides(parser: argparse.ArgumentParser, with_data: bool = True) -> None:
    """--data, --cfg-options and --cfg-add."""
    if with_data:
        parser.add_argument("--data", metavar="DIR",
                            help="a COCO-format dataset folder (Roboflow, CVAT or Label Studio export, COCO 2017 layout, "
                                 "annotations beside images/, or a pisa-data split/convert folder): sets the data "
                                 "paths, classes and num_classes of the config")
    parser.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=[],
                        help="override config settings, e.g. model.roi_head.bbox_head.num_classes=3 "
                             "train_dataloader.batch_size=4 (values parsed as mmengine's DictAction does); "
                             "a key that is neither in the config nor a parameter of the class its dict builds "
                             "(default_hooks.checkpoint.max_keep_ckpts) is refused with the closest real ones")
    parser.add_argument("--cfg-add", nargs="+", metavar="KEY=VALUE", default=[],
                        help="add settings that are neither in the config nor parameters of its classes, e.g. "
                             "model.test_cfg.rcnn.mask_thr_binary=0.5 (as --cfg-options, without the check)")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """pisa-train's own flags: where the run goes, how it starts, what it does differently."""
    parser.add_argument("--work-dir", help="where checkpoints and logs go (default: the config's work_dir, "
                                           "else work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                        help="resume training: alone, from the newest checkpoint in the work dir; "
                             "with a path, from that checkpoint")
    add_amp_options(parser)
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the learning rate by total batch size / auto_scale_lr.base_batch_size")
    parser.add_argument("--seed", type=int, help="random seed (sets randomness.seed)")
    parser.add_argument("--max-iters", type=int, metavar="N", help="stop after N iterations and save a "
                        "checkpoint, without validation: a quick check that a config trains")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (MMEngine's "
                        "TensorboardVisBackend, under WORK_DIR/<timestamp>/vis_data/); --vis-backend tensorboard")
    parser.add_argument("--patience", type=int, metavar="N", help="stop after N validations in a row without a "
                        "higher bbox mAP (EarlyStoppingHook); the best checkpoint is kept whenever a run validates")


def add_print_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-config", nargs="?", const="", metavar="KEY",
                        help="print the config as the run would hand it to MMEngine (after _base_, --cfg-options, "
                             "--data and the flags), or only the part under KEY (e.g. model.roi_head), and stop: "
                             "nothing is trained or written")


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


def add_run_options(parser: argparse.ArgumentParser, launcher: bool = True, progress: bool = True,
                    trackers: bool = False) -> None:
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
    if trackers:  # pisa-train and pisa-eval
        parser.add_argument("--vis-backend", action="append", default=[], metavar="NAME", help=f"also log to this "
                            f"tracker (repeatable): {', '.join(TRACKERS)} (MLflow: WORK_DIR/mlruns; W&B: offline)")
    if progress:
        add_no_progress(parser)
    add_debug(parser)


def add_amp_options(parser: argparse.ArgumentParser, training: bool = True) -> None:
    """--amp and --amp-dtype: mixed precision for training (pisa-train) or inference (pisa-eval, pisa-infer)."""
    parser.add_argument("--amp", action="store_true", help=(
        "automatic mixed precision training (MMEngine's AmpOptimWrapper): float16 autocast with a dynamic loss "
        "scale on a GPU, bfloat16 autocast on the CPU" if training else
        "run the model under autocast: float16 on a GPU (faster, less memory), bfloat16 on the CPU"))
    parser.add_argument("--amp-dtype", choices=AMP_DTYPES,
                        help="with --amp: autocast to this dtype (default float16 on a GPU, bfloat16 on the CPU, "
                             "where float16 is refused)")


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
