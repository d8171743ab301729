"""What each ``pisa-data`` command does, once cli/data.py has parsed its command line.

Each imports the layer it needs when it runs (the data checks bring numpy, the plots matplotlib), so that
``pisa-data --help`` answers at once.
"""
from __future__ import annotations

import argparse

from pisa_train.errors import DataError
from pisa_train.fetch.weights import cached_sha256sums, fetch_weights, where_mmengine_looks
from pisa_train.terminal import write_line


def run_download(args: argparse.Namespace) -> int:
    from pisa_train.data.layout import describe_dataset
    from pisa_train.fetch import datasets as dataset_downloads

    limits = dataset_downloads.DownloadLimits(max_bytes=args.max_download_size, max_expansion=args.max_expansion)
    layout = (dataset_downloads.download_coco2017(args.dest, keep_archives=args.keep_archives, progress=args.progress,
                                                  limits=limits)
              if args.source == "coco2017" else
              dataset_downloads.download_dataset_url(args.source, args.dest, sha256=args.sha256, md5=args.md5,
                                                     keep_archive=args.keep_archives, progress=args.progress,
                                                     limits=limits))
    write_line(describe_dataset(layout))
    write_line(f"next: pisa-data check {args.dest}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from pisa_train.data.check import check_dataset, render_report

    report = check_dataset(args.folder, open_images=not args.quick, progress=args.progress)
    write_line(render_report(report))
    if args.plots is not None and report.classes:
        from pisa_train.results.dataset_plots import plot_dataset

        write_line(f"plots: {', '.join(map(str, plot_dataset(args.folder, report.classes, args.plots, report)))}")
    if report.errors:
        raise DataError(f"{len(report.errors)} errors in dataset {args.folder} (listed above); fix them and run "
                        f"`pisa-data check {args.folder}` again")
    return 0


def run_split_or_convert(args: argparse.Namespace) -> int:
    from pisa_train.data.convert import convert_dataset
    from pisa_train.data.split import split_dataset

    lines = (split_dataset(args.folder, args.dest, args.val, args.test, args.seed) if args.command == "split"
             else convert_dataset(args.folder, args.dest))
    write_line("\n".join([*lines, f"next: pisa-data check {args.dest}, then pisa-train CONFIG --data {args.dest}"]))
    return 0


def run_weights(args: argparse.Namespace) -> int:
    if args.print_sha256:
        write_line("\n".join(cached_sha256sums(args.dest)))
        return 0
    paths = fetch_weights(args.only, args.dest, progress=args.progress, max_bytes=args.max_download_size)
    for line in [f"ready: {path}" for path in paths] + where_mmengine_looks(paths):
        write_line(line)
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from pisa_train.data.synthetic_shapes import DEMO_SETTINGS, write_synthetic_dataset

    write_line(write_synthetic_dataset(args.dest, **{**DEMO_SETTINGS, "seed": args.seed}))
    write_line(f"next: pisa-train pisa_mask_rcnn_r50_fpn_1x_coco --data {args.dest}")
    return 0
