"""``pisa-data``: get datasets and pretrained weights, check a dataset folder, write the synthetic one.

    pisa-data download coco2017 --dest data/coco
    pisa-data download URL --dest data/NAME      (Roboflow COCO export link, or a zip/tar)
    pisa-data check DIR [--plots]
    pisa-data split|convert DIR --dest OUT        (hold images out; Pascal VOC or YOLO into COCO)
    pisa-data weights [--dest DIR] [--only NAME]  (fetch/weights.py: mirrors, verified)
    pisa-data weights --print-sha256 > pins.txt   (then PISA_TRAIN_WEIGHTS_SHA256=pins.txt)
    pisa-data synthetic --dest DIR [--seed N]

Downloads resume, are verified, and are skipped when done; pisa-train trains.
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.data_commands import run_check, run_download, run_split_or_convert, run_synthetic, run_weights
from pisa_train.cli.options import add_debug, add_no_progress
from pisa_train.cli.running import run_command
from pisa_train.fetch.archives import DEFAULT_MAX_EXPANSION
from pisa_train.fetch.http import DEFAULT_MAX_DOWNLOAD_BYTES, full_disk_is_one_line
from pisa_train.fetch.weights import DEFAULT_MAX_WEIGHTS_BYTES
from pisa_train.terminal import byte_size, format_bytes

PROG = "pisa-data"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Download and check datasets and pretrained weights for pisa-train.")
    common = argparse.ArgumentParser(add_help=False)
    add_debug(common)
    add_no_progress(common)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    download = commands.add_parser(
        "download", parents=[common], help="download and extract a dataset",
        description="Download a dataset archive, verify it, and extract it safely into --dest, e.g. "
                    "pisa-data download 'https://public.roboflow.com/ds/ID?key=KEY' --dest data/NAME")
    download.add_argument("source", metavar="coco2017|URL",
                          help="`coco2017`, a Roboflow COCO JSON export link, or the URL of a zip/tar archive")
    download.add_argument("--dest", required=True, help="dataset folder to create or complete")
    download.add_argument("--keep-archives", action="store_true", help="keep the archives after extracting them")
    download.add_argument("--sha256", help="expected SHA-256 of the archive at URL (checked if given)")
    download.add_argument("--md5", help="expected MD5 of the archive at URL (checked if given)")
    download.add_argument("--max-download-size", type=byte_size, default=DEFAULT_MAX_DOWNLOAD_BYTES, metavar="SIZE",
                          help=f"largest download of unknown size ({format_bytes(DEFAULT_MAX_DOWNLOAD_BYTES)})")
    download.add_argument("--max-expansion", type=float, default=DEFAULT_MAX_EXPANSION, metavar="RATIO",
                          help=f"refuse archives expanding more than RATIO times (default {DEFAULT_MAX_EXPANSION:g})")

    check = commands.add_parser(
        "check", parents=[common], help="validate a dataset folder and print its table",
        description="Check a COCO dataset folder (annotations, images, boxes); exit non-zero on errors, not warnings.")
    check.add_argument("folder", metavar="DIR", help="dataset folder (Roboflow, COCO 2017, or json + images/)")
    check.add_argument("--quick", action="store_true", help="only check that image files exist, without opening them")
    check.add_argument("--plots", nargs="?", const="", metavar="OUT_DIR", help="also draw label statistics and "
                       "training images with their boxes into OUT_DIR (default: check_plots/<folder name>)")

    for name, what in (("split", "hold images out for validation and testing: train.json, val.json (test.json), "
                                 "stratified by class, deterministic"),
                       ("convert", "convert a Pascal VOC or YOLO dataset into COCO annotation files")):
        derive = commands.add_parser(name, parents=[common], help=what, description=f"{what}; no image is copied.")
        derive.add_argument("folder", metavar="DIR", help="the dataset folder")
        derive.add_argument("--dest", required=True, help="a new folder for the annotation files")
    for flag, default, what in (("--val", 0.2, "fraction of the images to validate on"),
                                ("--test", 0.0, "fraction of the images to test on"), ("--seed", 0, "random seed")):
        commands.choices["split"].add_argument(flag, type=type(default), default=default,
                                               help=f"{what} (default {default})")

    weights = commands.add_parser(
        "weights", parents=[common], help="download the pretrained weights the configs use",
        description="Fetch checkpoints (default: ResNeXt-101 32x4d and the PISA X101 model) from the mirrors in "
                    "$PISA_TRAIN_WEIGHT_MIRRORS, their URL, then mmassets.onedl.ai, verified, into the torch hub.")
    weights.add_argument("--dest", help="folder to put them in instead (then point TORCH_HOME or the config at it)")
    weights.add_argument("--only", action="append", metavar="NAME",
                         help="fetch these instead (repeatable): a released model (pisa-train --list), a name of "
                              "mmengine's open-mmlab:// table (resnext101_32x4d), torchvision://resnet50, an URL")
    weights.add_argument("--max-download-size", type=byte_size, default=DEFAULT_MAX_WEIGHTS_BYTES, metavar="SIZE",
                         help=f"largest download of unknown size ({format_bytes(DEFAULT_MAX_WEIGHTS_BYTES)})")
    weights.add_argument("--print-sha256", action="store_true", help="download nothing: print the folder's SHA-256s "
                         "as sha256sum does, the pins PISA_TRAIN_WEIGHTS_SHA256 takes")

    synthetic = commands.add_parser(
        "synthetic", parents=[common], help="write the synthetic shapes dataset (boxes and masks)",
        description="Write the demo's synthetic COCO dataset (300+60 images of 128 px, boxes and masks) into --dest.")
    synthetic.add_argument("--dest", required=True, help="dataset folder to create")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed (default 0: the demo's dataset)")
    return parser


_COMMANDS = {"download": run_download, "check": run_check, "split": run_split_or_convert,
             "convert": run_split_or_convert, "weights": run_weights, "synthetic": run_synthetic}


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), lambda args: full_disk_is_one_line(
        lambda: _COMMANDS[args.command](args), getattr(args, "dest", None) or getattr(args, "folder", ".")), argv)


if __name__ == "__main__":
    sys.exit(main())
