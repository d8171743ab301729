"""``pisa-eval CONFIG CHECKPOINT``: run a config's test loop on a checkpoint and report COCO metrics.

It does what MMDetection 3's tools/test.py does (config, ``--cfg-options``,
``--work-dir``, ``--show-dir``), then prints AP, AP50, AP75 and AP for small,
medium and large objects (of the boxes, and of the masks for Mask R-CNN: the
config's test_evaluator.metric), AP per class, draws a precision-recall curve per
class (``pr_curves/`` beside ``--out``, else in the work dir), and beside them what
the model gets wrong: a confusion matrix, COCO's error breakdown, the worst images
(results/evaluation_analysis.py); it writes the metrics as JSON (``--out``, and
WORK_DIR/evaluation.json) and the run's report page (results/report.py). mmdet's
CocoMetric writes the detections; faster-coco-eval (or pycocotools) evaluates them
once (results/coco_metrics.py). It is not a benchmark harness: MMEngine's test loop
runs the model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pisa_train.cli.options import add_amp_options, add_config_overrides, add_print_config, add_run_options
from pisa_train.cli.running import request_parser, run_request
from pisa_train.config.build import build_test_config
from pisa_train.config.requests import TestRequest
from pisa_train.terminal import write_line

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
    parser.add_argument("--score-thr", type=float, default=0.3, metavar="T", help="detections scoring at least T "
                        "count in the confusion matrix and the worst images (default 0.3)")
    parser.add_argument("--worst-images", type=int, default=8, metavar="N",
                        help="draw the N images with the most missed and false boxes (default 8)")
    add_config_overrides(parser)
    add_print_config(parser)
    add_amp_options(parser, training=False)
    add_run_options(parser, trackers=True)
    return parser


parse_request = request_parser(build_parser, TestRequest)  # the request main() hands on, for tests and tools


def evaluate(request: TestRequest) -> dict:
    """Evaluate as ``request`` says (the command line's, or pisa_train.evaluate's); the metrics as --out
    writes them (an empty dict in the processes of a distributed run other than rank 0)."""
    from pisa_train.data.presence import dataset_classes, dataset_image_folder
    from pisa_train.engine import runner
    from pisa_train.engine.device import choose_device
    from pisa_train.engine.trackers import log_evaluation_to_trackers
    from pisa_train.files import write_json_atomically
    from pisa_train.results import coco_metrics
    from pisa_train.terminal import announcer

    say = announcer(PROG)
    device = choose_device(request.device)
    cfg, notes = build_test_config(request, device)
    for line in notes:
        say(line)
    coco_metrics.coco_api(request.coco_backend)  # a missing backend is reported before the model runs
    runner.prepare_datasets(cfg, ("test_dataloader",), say)
    say(f"evaluating {request.checkpoint} on {device} with {request.config}; "
        f"{runner.describe_precision(cfg, testing=True)}")
    runner.run_testing(cfg, request.trust_checkpoint, say)
    from mmengine.dist import is_main_process

    if not is_main_process():  # rank 0 gathered and wrote the detections, and reports them
        return {}
    from pisa_train.results.evaluation_analysis import EVALUATION_INDEX, evaluate_and_analyse
    from pisa_train.results.report import write_report

    analysis_dir = Path(request.out).parent if request.out else Path(cfg.work_dir)
    iou_types = coco_metrics.evaluated_iou_types(cfg.test_evaluator.get("metric", "bbox"))
    record = evaluate_and_analyse(cfg.test_evaluator.ann_file, cfg.test_evaluator.outfile_prefix, iou_types,
                                  request.coco_backend, dataset_classes(cfg, "test_dataloader"),
                                  dataset_image_folder(cfg, "test_dataloader"), analysis_dir, request.score_thr,
                                  request.worst_images, config=request.config, checkpoint=request.checkpoint,
                                  coco_backend=request.coco_backend)
    for iou_type, per_class in (("bbox", "per_class"), ("segm", "per_class_segm")):
        if iou_type in record:
            write_line(coco_metrics.format_metrics_table(record[iou_type], iou_type))
            write_line(coco_metrics.format_per_class_table(record[per_class]))
    say(f"detections: {cfg.test_evaluator.outfile_prefix}.{'|'.join(iou_types)}.json; precision-recall curves, "
        f"confusion matrix, error breakdown and worst images in {analysis_dir}")
    written = [str(Path(cfg.work_dir) / EVALUATION_INDEX), *([request.out] if request.out else [])]
    for path in written:
        write_json_atomically(path, record)
    log_evaluation_to_trackers(cfg, record, say)  # --vis-backend (engine/trackers.py)
    say(f"metrics written to {' and '.join(written)}; report: {write_report(cfg.work_dir, analysis_dir)}")
    return record


def main(argv: list[str] | None = None) -> int:
    return run_request(PROG, build_parser, TestRequest, evaluate, argv, build_test_config)


if __name__ == "__main__":
    sys.exit(main())
