"""``pisa-infer CONFIG CHECKPOINT IMAGE_OR_DIR... --out DIR``: detect objects in image files.

It writes each image with its detections drawn (box, class name, score) into
DIR, and DIR/detections.json: per image, its detections in COCO's result format
(``image_id``, ``category_id`` = the model's class index, ``bbox`` = [x, y, width,
height] in pixels, ``score``), with the class names under "categories". It uses
mmdet's ``inference_detector`` and the config's test pipeline; the checkpoint is
loaded weights-only. It is not an evaluation (pisa-eval) and not a video or
webcam demo.
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.shared_options import (DEVICE_HELP, add_config_overrides, add_debug, add_trust_checkpoint,
                                           load_config_with_overrides)
from pisa_train.error_reporting import run_reporting_errors

PROG = "pisa-infer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Detect objects in images with a trained checkpoint; draw them and write them as JSON.",
        epilog="Example: pisa-infer configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py "
               "work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes/epoch_8.pth data/demo_shapes/val --out detections/")
    parser.add_argument("config", help="MMDetection config file (.py) the checkpoint was trained with")
    parser.add_argument("checkpoint", help="checkpoint file (.pth)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders of images")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where the drawn images and detections.json go")
    parser.add_argument("--score-thr", type=float, default=0.3, metavar="T",
                        help="keep detections with a score of at least T (default 0.3)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help=DEVICE_HELP)
    add_config_overrides(parser, with_data=False)
    add_trust_checkpoint(parser)
    add_debug(parser)
    return parser


def infer(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pisa_train.errors import UsageError

    if not 0 <= args.score_thr <= 1:
        raise UsageError(f"--score-thr must be between 0 and 1, not {args.score_thr}")
    from pisa_train.device import choose_device
    from pisa_train.inference import find_images

    device = choose_device(args.device)
    images = find_images(args.inputs)
    cfg, _ = load_config_with_overrides(args)

    from mmdet.apis import inference_detector

    from pisa_train.inference import detections_of, draw_detections, load_detector, output_names

    model = load_detector(cfg, args.checkpoint, device, args.trust_checkpoint)
    classes = list(model.dataset_meta.get("classes") or [])
    print(f"[{PROG}] detecting {', '.join(classes)} in {len(images)} images on {device} "
          f"(score >= {args.score_thr})", flush=True)
    from pisa_train.progress import ProgressReporter

    out_dir = Path(args.out)
    records = []
    # Redrawn in place on a terminal; plain lines every tenth of the way in logs (no \r, no escape codes).
    progress = ProgressReporter(f"[{PROG}] images", len(images), unit="images")
    for image_id, (image, name) in enumerate(zip(images, output_names(images))):
        result = inference_detector(model, str(image))
        detections = detections_of(result, image_id, args.score_thr)
        draw_detections(image, detections, classes, out_dir / name)
        height, width = result.ori_shape
        records.append({"id": image_id, "file_name": str(image), "width": int(width), "height": int(height),
                        "drawn": str(out_dir / name), "detections": detections})
        progress.update(image_id + 1)
    progress.finish()
    summary = {"categories": [{"id": index, "name": name} for index, name in enumerate(classes)],
               "config": args.config, "checkpoint": args.checkpoint, "score_thr": args.score_thr,
               "images": records}
    (out_dir / "detections.json").write_text(json.dumps(summary, indent=1) + "\n")
    total = sum(len(record["detections"]) for record in records)
    print(f"[{PROG}] {total} detections in {len(images)} images; drawn images and detections.json in {out_dir}",
          flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(PROG, lambda: infer(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
