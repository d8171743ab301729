"""``pisa-infer CONFIG CHECKPOINT IMAGE_OR_DIR... --out DIR``: detect objects in image files.

It writes each image with its detections drawn into DIR (by mmdet's visualizer,
as ``pisa-eval --show-dir`` draws them), and DIR/detections.json: per image, its
detections in COCO's result format (``image_id``, ``category_id`` = the model's
class index, ``bbox`` = [x, y, width, height] in pixels, ``score``), with the
class names under "categories". It uses mmdet's ``inference_detector`` and the
config's test pipeline; the checkpoint is loaded weights-only and refused if it
does not fit the model. It is not an evaluation (pisa-eval) and not a video or
webcam demo.
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.options import add_amp_options, add_config_overrides, add_run_options
from pisa_train.cli.running import run_command

PROG = "pisa-infer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Detect objects in images with a trained checkpoint; draw them and write them as JSON.",
        epilog="Example: pisa-infer configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py "
               "work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes/epoch_8.pth data/demo_shapes/val --out detections/")
    parser.add_argument("config", help="MMDetection config file (.py) the checkpoint was trained with")
    parser.add_argument("checkpoint", help="checkpoint file (.pth)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders of images")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the drawn images and detections.json go")
    parser.add_argument("--score-thr", type=float, default=0.3, metavar="T",
                        help="keep detections with a score of at least T (default 0.3)")
    add_config_overrides(parser, with_data=False)
    add_amp_options(parser, training=False)
    add_run_options(parser, launcher=False)
    return parser


def infer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pisa_train.config.build import build_infer_config
    from pisa_train.data.images import find_images
    from pisa_train.engine.device import choose_device
    from pisa_train.engine.runner import describe_precision, load_detector
    from pisa_train.files import write_json_atomically
    from pisa_train.results import predictions
    from pisa_train.terminal import ProgressReporter, announcer

    say = announcer(PROG)
    device = choose_device(args.device)
    cfg, _ = build_infer_config(args, device)
    images = find_images(args.inputs)
    model = load_detector(cfg, args.checkpoint, device, args.trust_checkpoint, say)
    classes = list(model.dataset_meta.get("classes") or [])
    say(f"detecting {', '.join(classes)} in {len(images)} images on {device} (score >= {args.score_thr}; "
        f"{describe_precision(cfg, testing=True)})")
    from mmdet.apis import inference_detector

    out_dir, records = Path(args.out), []
    visualizer = predictions.prediction_visualizer(classes)
    # Redrawn in place on a terminal; plain lines every tenth of the way in logs (no \r, no escape codes).
    progress = ProgressReporter(f"[{PROG}] images", len(images), unit="images",
                                interactive=None if args.progress else False)
    for image_id, (image, name) in enumerate(zip(images, predictions.output_names(images))):
        result = inference_detector(model, str(image))
        predictions.draw_predictions(visualizer, image, result, out_dir / name, args.score_thr)
        height, width = result.ori_shape
        records.append({"id": image_id, "file_name": str(image), "width": int(width), "height": int(height),
                        "drawn": str(out_dir / name),
                        "detections": predictions.detections_of(result, image_id, args.score_thr)})
        progress.update(image_id + 1)
    progress.finish()
    write_json_atomically(out_dir / "detections.json", {
        "categories": [{"id": index, "name": name} for index, name in enumerate(classes)],
        "config": args.config, "checkpoint": args.checkpoint, "score_thr": args.score_thr, "images": records},
        indent=1)
    total = sum(len(record["detections"]) for record in records)
    say(f"{total} detections in {len(images)} images; drawn images and detections.json in {out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), infer, argv)


if __name__ == "__main__":
    sys.exit(main())
