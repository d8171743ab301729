"""``pisa-infer CONFIG CHECKPOINT IMAGE_OR_DIR_OR_VIDEO... --out DIR``: detect objects in images and videos.

It writes each image with its detections drawn into DIR (by mmdet's visualizer,
as ``pisa-eval --show-dir`` draws them), and DIR/detections.json: per image, its
detections in COCO's result format (``image_id``, ``category_id`` = the model's
class index, ``bbox`` = [x, y, width, height] in pixels, ``score``), with the
class names under "categories". It uses mmdet's ``inference_detector`` and the
config's test pipeline; the checkpoint is loaded weights-only and refused if it
does not fit the model. A video file gives a video of the same frame rate with the
detections drawn, and one detections.json entry per frame (data/media.py,
results/detection_outputs.py); detections.json is written as the run goes, so a
stop leaves it valid for what was done. It is not an evaluation (pisa-eval) and
not a webcam demo.
"""
from __future__ import annotations

import argparse
import sys

from pisa_train.cli.options import add_amp_options, add_config_overrides, add_run_options
from pisa_train.cli.running import request_parser, run_request
from pisa_train.config.requests import InferRequest

PROG = "pisa-infer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Detect objects in images with a trained checkpoint; draw them and write them as JSON.",
        epilog="Example: pisa-infer configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py "
               "work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes/epoch_8.pth data/demo_shapes/val --out detections/")
    parser.add_argument("config", help="MMDetection config file (.py) the checkpoint was trained with")
    parser.add_argument("checkpoint", help="checkpoint file (.pth), or a model of pisa-export (.onnx), run on "
                                           "onnxruntime")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_DIR_OR_VIDEO",
                        help="image files, folders of images (or of a video's frames), or video files (.mp4, .avi, "
                             ".mkv, .mov, .webm...: drawn into DIR as a video of the same frame rate)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the drawn images and detections.json go")
    parser.add_argument("--score-thr", type=float, default=0.3, metavar="T",
                        help="keep detections with a score of at least T (default 0.3)")
    add_config_overrides(parser, with_data=False)
    add_amp_options(parser, training=False)
    add_run_options(parser, launcher=False)
    return parser


parse_request = request_parser(build_parser, InferRequest)  # the request main() hands on, for tests and tools


def infer(request: InferRequest) -> list[dict]:
    """Detect as ``request`` says (the command line's, or pisa_train.infer's); per image, its entry of
    detections.json. Without ``out`` (from Python only) nothing is drawn or written."""
    from pisa_train.config.build import build_infer_config
    from pisa_train.data.media import describe_media, find_media, media_unit
    from pisa_train.engine.device import choose_device
    from pisa_train.results.detection_outputs import detect_and_write
    from pisa_train.terminal import announcer

    say = announcer(PROG)
    device = choose_device(request.device)
    cfg, _ = build_infer_config(request, device)
    media = find_media(request.inputs)  # an unreadable video is refused before the model loads
    if request.checkpoint.endswith(".onnx"):  # a model of pisa-export, on onnxruntime
        detect, classes, running_on = onnxruntime_detection(cfg, request, device)
    else:
        detect, classes, running_on = pytorch_detection(cfg, request, device, say)
    say(f"detecting {', '.join(classes)} in {describe_media(media)} on {running_on} (score >= {request.score_thr})")
    header = {"categories": [{"id": index, "name": name} for index, name in enumerate(classes)],
              "config": request.config, "checkpoint": request.checkpoint, "score_thr": request.score_thr}
    records = detect_and_write(detect, media, request.out, header,
                               classes, request.score_thr, f"[{PROG}]", request.progress, say)
    total = sum(len(record["detections"]) for record in records)
    where = f"; drawings and detections.json in {request.out}" if request.out is not None else ""
    say(f"{total} detections in {len(records)} {media_unit(media)}{where}")
    return records


def pytorch_detection(cfg, request: InferRequest, device: str, say):
    """(image -> mmdet's DetDataSample, the class names, what it runs on) for a checkpoint, with mmdet's
    ``inference_detector``."""
    from mmdet.apis import inference_detector

    from pisa_train.engine.runner import describe_precision, load_detector

    model = load_detector(cfg, request.checkpoint, device, request.trust_checkpoint, say)
    return (lambda image: inference_detector(model, image), list(model.dataset_meta.get("classes") or []),
            f"{device}; {describe_precision(cfg, testing=True)}")


def onnxruntime_detection(cfg, request: InferRequest, device: str):
    """The same for an exported model (engine/onnx_export.py), on onnxruntime."""
    from pisa_train.engine.onnx_export import onnxruntime_detection as detection
    from pisa_train.errors import UsageError

    if request.amp:
        raise UsageError(f"--amp runs a PyTorch model under autocast; {request.checkpoint} is an ONNX model, "
                         f"which runs in float32: leave out --amp")
    detect, classes, providers = detection(cfg, request.checkpoint, device)
    return detect, classes, f"onnxruntime ({', '.join(providers)})"


def main(argv: list[str] | None = None) -> int:
    return run_request(PROG, build_parser, InferRequest, infer, argv)


if __name__ == "__main__":
    sys.exit(main())
