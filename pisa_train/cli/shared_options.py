"""Command-line options that several pisa-* commands share, defined once so that
they mean the same everywhere, and the config loading they drive."""
from __future__ import annotations

import argparse

DEVICE_HELP = "run on this device (default: cuda when a GPU is visible, else cpu)"


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


def add_trust_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-checkpoint", action="append", default=[], metavar="FILE",
                        help="unpickle this checkpoint in full, even if it holds more than weights and mmengine's "
                             "training state (which can run code from the file: only for files you trust)")


def add_ops_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops-backend", choices=["auto", "mmcv", "torchvision"], default="auto",
                        help="kernels for RoIAlign and NMS: mmcv's compiled ops or torchvision's (default auto: "
                             "mmcv's where mmcv has kernels for the device, else torchvision's)")


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar on a terminal (there is none when the output is not a terminal)")


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def load_config_with_overrides(args: argparse.Namespace):
    """The config file with --cfg-options, --cfg-add and --data applied, and the lines
    that say what --data resolved, for the log."""
    from pisa_train.config_loading import load_config, parse_cfg_options

    cfg = load_config(args.config, parse_cfg_options(args.cfg_options), parse_cfg_options(args.cfg_add))
    if not getattr(args, "data", None):
        return cfg, []
    from pisa_train.dataset_layout import use_dataset_folder

    return use_dataset_folder(cfg, args.data)
