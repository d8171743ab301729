"""``pisa-eval CONFIG CHECKPOINT``: run a config's test loop on a checkpoint and report COCO bbox metrics.

It does what MMDetection 3's tools/test.py does (config, ``--cfg-options``,
``--work-dir``, ``--show-dir``) and then prints AP, AP50, AP75 and AP for small,
medium and large objects as a table, and writes them as JSON with ``--out``.
It also prints AP per class and draws a precision-recall curve per class
(PNG files in ``pr_curves/`` beside ``--out``, else in the work dir).
mmdet's CocoMetric writes the detections; faster-coco-eval (or, with
``--coco-backend pycocotools``, pycocotools) evaluates them once, in
pisa_train.coco_evaluation. It is not a benchmark harness or a visualiser of
its own: MMEngine's test loop runs the model.
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.shared_options import (DEVICE_HELP, add_config_overrides, add_debug, add_no_progress,
                                           add_ops_backend, add_trust_checkpoint, load_config_with_overrides)
from pisa_train.error_reporting import run_reporting_errors

PROG = "pisa-eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Evaluate a checkpoint with the config's test loop (COCO bbox metrics).",
        epilog="Example: pisa-eval configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py "
               "work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes/epoch_8.pth --out metrics.json")
    parser.add_argument("config", help="MMDetection config file (.py)")
    parser.add_argument("checkpoint", help="checkpoint file (.pth)")
    parser.add_argument("--out", metavar="FILE.json", help="write the metrics to this JSON file")
    parser.add_argument("--work-dir", help="where the evaluation logs go (default: as pisa-train)")
    parser.add_argument("--show-dir", metavar="DIR", help="write the test images with predicted boxes drawn into DIR")
    # faster-coco-eval is the default because tests/test_coco_evaluation.py shows its numbers equal to
    # pycocotools' (to 1e-9, on thousands of generated images), and benchmarks/coco_eval_speed.py that it is faster.
    parser.add_argument("--coco-backend", choices=["faster-coco-eval", "pycocotools"], default="faster-coco-eval",
                        help="what computes the COCO metrics: faster-coco-eval (default; a C++ reimplementation "
                             "that gives pycocotools' numbers, faster) or pycocotools")
    parser.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    add_config_overrides(parser)
    add_trust_checkpoint(parser)
    add_ops_backend(parser)
    add_no_progress(parser)
    add_debug(parser)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def build_config(args: argparse.Namespace, device: str):
    from pisa_train import config_rewrites as rewrite

    if args.out is not None and not args.out.endswith(".json"):
        from pisa_train.errors import UsageError

        raise UsageError(f"--out {args.out}: the metrics are written as JSON; give a file name ending in .json")
    cfg, notes = load_config_with_overrides(args)
    cfg = rewrite.set_launcher(cfg, args.launcher)
    cfg = rewrite.apply_work_dir(cfg, args.work_dir, args.config)
    cfg = rewrite.apply_device(cfg, device)
    from pisa_train.ops_backend import backend_to_apply, mmcv_kernel_devices

    ops_backend = backend_to_apply(args.ops_backend, device, mmcv_kernel_devices())
    if ops_backend is not None:
        cfg = rewrite.apply_ops_backend(cfg, ops_backend)
    cfg = rewrite.apply_checkpoint_for_testing(cfg, args.checkpoint)
    cfg = rewrite.enable_show_dir(cfg, args.show_dir)
    cfg = rewrite.dump_detections_for_evaluation(cfg)
    cfg = rewrite.check_checkpoint_fits_model(cfg)
    if args.progress:
        cfg = rewrite.show_progress_bars(cfg)
    return cfg, notes


def evaluate(args: argparse.Namespace) -> int:
    from pisa_train.device import choose_device

    device = choose_device(args.device)
    cfg, notes = build_config(args, device)
    for line in notes:
        print(f"[{PROG}] {line}", flush=True)

    from pathlib import Path

    from mmengine.dist import is_main_process

    from pisa_train import coco_evaluation, engine
    from pisa_train.dataset_presence import innermost_dataset
    from pisa_train.metrics_report import format_metrics_table, summary_from_stats, write_metrics_json

    coco_evaluation.coco_api(args.coco_backend)  # a missing backend is reported before the model runs
    engine.prepare_datasets(cfg, ("test_dataloader",))
    print(f"[{PROG}] evaluating {args.checkpoint} on {device} with {args.config}", flush=True)
    engine.run_testing(cfg, args.trust_checkpoint)
    if not is_main_process():  # rank 0 gathered and wrote the detections, and reports them
        return 0
    detections = f"{cfg.test_evaluator.outfile_prefix}.bbox.json"
    classes = ((innermost_dataset(cfg.test_dataloader.get("dataset")) or {}).get("metainfo") or {}).get("classes")
    evaluation = coco_evaluation.evaluate_bbox(cfg.test_evaluator.ann_file, detections, args.coco_backend,
                                               classes=classes)
    summary = summary_from_stats(evaluation.stats)
    per_class = coco_evaluation.per_class_ap(evaluation)
    print(format_metrics_table(summary), flush=True)
    print(coco_evaluation.format_per_class_table(per_class), flush=True)
    plots_dir = (Path(args.out).parent if args.out else Path(cfg.work_dir)) / "pr_curves"
    curves = coco_evaluation.plot_precision_recall_curves(evaluation, plots_dir)
    print(f"[{PROG}] detections: {detections}; precision-recall curves of {len(curves)} classes in {plots_dir}",
          flush=True)
    if args.out:
        write_metrics_json(args.out, summary, per_class=per_class, config=args.config,
                           checkpoint=args.checkpoint, coco_backend=args.coco_backend)
        print(f"[{PROG}] metrics written to {args.out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(PROG, lambda: evaluate(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
