"""``pisa-plot WORK_DIR [--report]``: draw a work dir's training curves (losses, learning rate, bbox mAP)
as a PNG, and with ``--report`` its report page (results/report.py).

pisa-train draws them by itself at the end of a run; this command draws them on
demand (during a run, or for an older one) from MMEngine's logs in the work dir
(see results/training_curves.py). It is not a live dashboard: use
``pisa-train --tensorboard`` and TensorBoard for that.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pisa_train.cli.options import add_debug
from pisa_train.cli.running import run_command
from pisa_train.errors import DataError, UsageError
from pisa_train.results.report import write_report
from pisa_train.results.training_curves import draw_curves_of_run, plot_training_curves
from pisa_train.terminal import write_line

PROG = "pisa-plot"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Draw the training curves of a pisa-train work dir into a PNG.",
        epilog="Example: pisa-plot work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes")
    parser.add_argument("work_dir", help="the work dir of a pisa-train run (with <timestamp>/vis_data/scalars.json)")
    parser.add_argument("--out", metavar="FILE.png", help="where to write the PNG (default: WORK_DIR/training_curves.png)")
    parser.add_argument("--report", action="store_true",
                        help="also write WORK_DIR/report.html: the run, its curves, and pisa-eval's metrics and analyses")
    add_debug(parser)
    return parser


def plot(args: argparse.Namespace) -> int:
    if args.out is not None and not args.out.endswith(".png"):
        raise UsageError(f"--out {args.out}: the curves are written as PNG; give a file name ending in .png")
    if not Path(args.work_dir).is_dir():
        raise DataError(f"work dir {args.work_dir} not found; give the folder pisa-train wrote its checkpoints "
                        f"and logs to (work_dirs/<config name> by default)")

    if not args.report:
        write_line(f"[{PROG}] training curves written to {plot_training_curves(args.work_dir, args.out)}")
        return 0

    write_line(f"[{PROG}] {draw_curves_of_run(args.work_dir)}")  # a report without curves is still one
    write_line(f"[{PROG}] report written to {write_report(args.work_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), plot, argv)


if __name__ == "__main__":
    sys.exit(main())
