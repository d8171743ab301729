"""``pisa-eval CONFIG CHECKPOINT``: run a config's test loop on a checkpoint and report COCO metrics.

It does what MMDetection 3's tools/test.py does (config, ``--cfg-options``,
``--work-dir``, ``--show-dir``), then prints AP, AP50, AP75 and AP for small,
medium and large objects (of the boxes, and of the masks for Mask R-CNN: the
config's test_evaluator.metric), AP per class, draws a precision-recall curve per class
(``pr_curves/`` beside ``--out``, else in the work dir) and writes the metrics as
JSON with ``--out``. mmdet's CocoMetric writes the detections; faster-coco-eval
(or pycocotools) evaluates them once (results/coco_metrics.py). It is not a
benchmark harness: MMEngine's test loop runs the model.
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.options import add_config_overrides, add_run_options, run_command

PROG = "pisa-eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Evaluate a checkpoint with the config's test loop (COCO bbox and segm metrics).",
        epilog="Example: pisa-eval configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py "
               "work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes/epoch_8.pth --out metrics.json")
    parser.add_argument("config", help="MMDetection config file (.py) or a model name (pisa-train --list)")
    parser.add_argument("checkpoint", help="checkpoint file (.pth)")
    parser.add_argument("--out", metavar="FILE.json", help="write the metrics to this JSON file")
    parser.add_argument("--work-dir", help="where the evaluation logs go (default: as pisa-train)")
    parser.add_argument("--show-dir", metavar="DIR", help="write the test images with predicted boxes drawn into DIR")
    # faster-coco-eval is the default because tests/test_coco_evaluation.py shows its numbers equal to
    # pycocotools' (to 1e-9, on thousands of generated images), and benchmarks/coco_eval_speed.py that it is faster.
    parser.add_argument("--coco-backend", choices=["faster-coco-eval", "pycocotools"], default="faster-coco-eval",
                        help="what computes the COCO metrics: faster-coco-eval (default; a C++ reimplementation "
                             "that gives pycocotools' numbers, faster) or pycocotools")
    add_config_overrides(parser)
    add_run_options(parser)
    return parser


def evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pisa_train.config.build import build_test_config
    from pisa_train.data.presence import dataset_classes
    from pisa_train.engine import runner
    from pisa_train.engine.device import choose_device
    from pisa_train.results import coco_metrics
    from pisa_train.terminal import announcer

    say = announcer(PROG)
    device = choose_device(args.device)
    cfg, notes = build_test_config(args, device)
    for line in notes:
        say(line)
    coco_metrics.coco_api(args.coco_backend)  # a missing backend is reported before the model runs
    runner.prepare_datasets(cfg, ("test_dataloader",), say)
    say(f"evaluating {args.checkpoint} on {device} with {args.config}")
    runner.run_testing(cfg, args.trust_checkpoint, say)
    from mmengine.dist import is_main_process

    if not is_main_process():  # rank 0 gathered and wrote the detections, and reports them
        return 0
    summaries, per_class, evaluations = {}, {}, {}
    for iou_type in coco_metrics.evaluated_iou_types(cfg.test_evaluator.get("metric", "bbox")):  # bbox first
        detections = f"{cfg.test_evaluator.outfile_prefix}.{iou_type}.json"
        evaluations[iou_type] = coco_metrics.evaluate_bbox(cfg.test_evaluator.ann_file, detections, args.coco_backend,
                                                           classes=dataset_classes(cfg, "test_dataloader"),
                                                           iou_type=iou_type)
        summaries[iou_type] = coco_metrics.summary_from_stats(evaluations[iou_type].stats)
        per_class[iou_type] = coco_metrics.per_class_ap(evaluations[iou_type])
        print(coco_metrics.format_metrics_table(summaries[iou_type], iou_type), flush=True)
        print(coco_metrics.format_per_class_table(per_class[iou_type]), flush=True)
    plots_dir = (Path(args.out).parent if args.out else Path(cfg.work_dir)) / "pr_curves"
    curves = coco_metrics.plot_precision_recall_curves(evaluations["bbox"], plots_dir)
    say(f"detections: {cfg.test_evaluator.outfile_prefix}.{'|'.join(evaluations)}.json; precision-recall curves "
        f"of {len(curves)} classes (boxes) in {plots_dir}")
    if args.out:
        masks = {"segm": summaries["segm"], "per_class_segm": per_class["segm"]} if "segm" in summaries else {}
        coco_metrics.write_metrics_json(args.out, summaries["bbox"], per_class=per_class["bbox"], **masks,
                                        config=args.config, checkpoint=args.checkpoint, coco_backend=args.coco_backend)
        say(f"metrics written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
