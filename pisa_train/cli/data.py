"""``pisa-data``: get datasets and pretrained weights, check a dataset folder, write the synthetic one.

    pisa-data download coco2017 --dest data/coco
    pisa-data download URL --dest data/NAME      (Roboflow COCO export link, or a zip/tar)
    pisa-data check DIR [--plots]
    pisa-data weights [--dest DIR] [--only NAME]  (fetch/weights.py: mirrors, verified)
    pisa-data synthetic --dest DIR [--seed N]

Downloads resume, are verified, and are skipped when done; pisa-train trains.
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.options import add_debug, add_no_progress
from pisa_train.cli.running import run_command
from pisa_train.errors import DataError

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

    check = commands.add_parser(
        "check", parents=[common], help="validate a dataset folder and print its table",
        description="Check a COCO dataset folder (annotations, images, boxes); exit non-zero on errors, not warnings.")
    check.add_argument("folder", metavar="DIR", help="dataset folder (Roboflow, COCO 2017, or json + images/)")
    check.add_argument("--quick", action="store_true", help="only check that image files exist, without opening them")
    check.add_argument("--plots", nargs="?", const="", metavar="OUT_DIR", help="also draw label statistics and "
                       "training images with their boxes into OUT_DIR (default: check_plots/<folder name>)")

    weights = commands.add_parser(
        "weights", parents=[common], help="download the pretrained weights the configs use",
        description="Fetch checkpoints (default: ResNeXt-101 32x4d and the PISA X101 model) from the mirrors in "
                    "$PISA_TRAIN_WEIGHT_MIRRORS, their URL, then mmassets.onedl.ai, verified, into the torch hub.")
    weights.add_argument("--dest", help="folder to put them in instead (then point TORCH_HOME or the config at it)")
    weights.add_argument("--only", action="append", metavar="NAME",
                         help="fetch these instead (repeatable): a released model (pisa-train --list), a name of "
                              "mmengine's open-mmlab:// table (resnext101_32x4d), torchvision://resnet50, an URL")

    synthetic = commands.add_parser(
        "synthetic", parents=[common], help="write the synthetic shapes dataset (boxes and masks)",
        description="Write the demo's synthetic COCO dataset (300+60 images of 128 px, boxes and masks) into --dest.")
    synthetic.add_argument("--dest", required=True, help="dataset folder to create")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed (default 0: the demo's dataset)")
    return parser


def run_download(args: argparse.Namespace) -> int:
    from pisa_train.data.layout import describe_dataset
    from pisa_train.fetch import datasets as dataset_downloads

    layout = (dataset_downloads.download_coco2017(args.dest, keep_archives=args.keep_archives, progress=args.progress)
              if args.source == "coco2017" else
              dataset_downloads.download_dataset_url(args.source, args.dest, sha256=args.sha256, md5=args.md5,
                                                     keep_archive=args.keep_archives, progress=args.progress))
    print(describe_dataset(layout), flush=True)
    print(f"next: pisa-data check {args.dest}", flush=True)
    return 0


def run_check(args: argparse.Namespace) -> int:
    from pisa_train.data.check import check_dataset, render_report

    report = check_dataset(args.folder, open_images=not args.quick, progress=args.progress)
    print(render_report(report), flush=True)
    if args.plots is not None and report.classes:
        from pisa_train.results.dataset_plots import plot_dataset

        print(f"plots: {', '.join(map(str, plot_dataset(args.folder, report.classes, args.plots)))}", flush=True)
    if report.errors:
        raise DataError(f"{len(report.errors)} errors in dataset {args.folder} (listed above); fix them and run "
                        f"`pisa-data check {args.folder}` again")
    return 0


def run_weights(args: argparse.Namespace) -> int:
    from pisa_train.fetch.weights import fetch_weights, where_mmengine_looks

    paths = fetch_weights(args.only, args.dest, progress=args.progress)
    for line in [f"ready: {path}" for path in paths] + where_mmengine_looks(paths):
        print(line, flush=True)
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from pisa_train.data.synthetic_shapes import DEMO_SETTINGS, write_synthetic_dataset

    print(write_synthetic_dataset(args.dest, **{**DEMO_SETTINGS, "seed": args.seed}), flush=True)
    print(f"next: pisa-train pisa_mask_rcnn_r50_fpn_1x_coco --data {args.dest}", flush=True)
    return 0


_COMMANDS = {"download": run_download, "check": run_check, "weights": run_weights, "synthetic": run_synthetic}


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), lambda args: _COMMANDS[args.command](args), argv)


if __name__ == "__main__":
    sys.exit(main())
