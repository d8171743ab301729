"""``pisa-export CONFIG CHECKPOINT --out FILE.onnx``: a trained detector as an ONNX model, checked first.

It traces the detector (normalisation, network, NMS, score threshold) at a fixed input size with
torch's TorchScript-based exporter, on torchvision's RoIAlign and NMS, so that the graph holds only
standard ONNX operators. Before it writes the file it runs onnxruntime and PyTorch on a few images
(the test images of ``--data``, else generated ones) and refuses a model whose detections differ by
more than 1 px or a score of 1e-3, printing the largest differences either way. The model's input
contract and what it returns: engine/onnx_export.py and docs/export.md. It is not a deployment tool
for TensorRT or OpenVINO, and it exports boxes only (no masks).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from pisa_train.cli.options import add_config_overrides, add_debug
from pisa_train.cli.running import request_parser, run_command
from pisa_train.config.requests import ExportRequest

PROG = "pisa-export"
CHECK_IMAGES = 3  # images the export is checked on


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Export a trained detector to ONNX, checked against PyTorch before it is written.",
        epilog="Example: pisa-export configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py "
               "work_dirs/pisa_faster_rcnn_r18_fpn_demo_shapes/epoch_8.pth --out demo.onnx")
    parser.add_argument("config", help="MMDetection config file (.py) or a model name (pisa-train --list)")
    parser.add_argument("checkpoint", help="checkpoint file (.pth)")
    parser.add_argument("--out", required=True, metavar="FILE.onnx", help="where the ONNX model goes")
    parser.add_argument("--size", nargs=2, type=int, metavar=("W", "H"),
                        help="the model's input size (default: the test pipeline's Resize scale); images are "
                             "resized to fit it, keeping their aspect ratio, and padded to it")
    parser.add_argument("--dynamic", action="store_true", help="an input of any size (refused: see docs/export.md)")
    parser.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset, 16 to 20 (default 17)")
    add_config_overrides(parser)
    parser.add_argument("--trust-checkpoint", action="append", default=[], metavar="FILE",
                        help="unpickle this checkpoint in full (which can run code from the file: only for "
                             "files you trust)")
    add_debug(parser)
    return parser


parse_request = request_parser(build_parser, ExportRequest)


def export(request: ExportRequest) -> None:
    from pisa_train.config.build import build_export_config
    from pisa_train.data.images import find_images
    from pisa_train.data.presence import dataset_image_folder
    from pisa_train.engine import onnx_export
    from pisa_train.engine.runner import load_detector
    from pisa_train.errors import ExportMismatch, UsageError
    from pisa_train.files import publish_atomically
    from pisa_train.terminal import announcer

    say = announcer(PROG)
    if not request.out.endswith(".onnx"):
        raise UsageError(f"--out {request.out}: give a file name ending in .onnx")
    onnx_export.check_opset(request.opset)
    onnx_export.require_onnx(), onnx_export.require_onnxruntime()  # before the model is built
    cfg, notes = build_export_config(request)
    for line in notes:
        say(line)
    onnx_export.refuse_unexportable_model(cfg)
    size = onnx_export.export_size(cfg, request.size)
    model = load_detector(cfg, request.checkpoint, "cpu", request.trust_checkpoint, say)
    classes = list(model.dataset_meta.get("classes") or [])
    with tempfile.TemporaryDirectory(prefix="pisa-export-") as scratch:
        if request.data:
            images = find_images([dataset_image_folder(cfg, "test_dataloader")])[:CHECK_IMAGES]
        else:
            images = onnx_export.write_check_images(scratch, size, CHECK_IMAGES)
        prepare = onnx_export.ImagePreparer(cfg, size)
        prepared = [prepare(image) for image in images]
        say(f"exporting {request.config} at {size[0]}x{size[1]} (opset {request.opset}) and checking it on "
            f"{len(images)} {'images of ' + request.data if request.data else 'generated images'}")
        partial = os.path.join(scratch, "model.onnx")
        onnx_export.export_detector(model, size, prepared[0], partial, request.opset)
        onnx_export.add_metadata(partial, {
            "classes": json.dumps(classes), "config": str(request.config), "checkpoint": str(request.checkpoint),
            "input_size": f"{size[0]}x{size[1]}", "exported_by": "pisa-export"})
        detector = onnx_export.OnnxDetector(partial)
        pairs = [(image.name, onnx_export.reference_detections(model, item), detector.detect(item))
                 for image, item in zip(images, prepared)]
        disagreement = onnx_export.compare_detections(pairs, max_per_img=onnx_export.detections_per_image(model))
        if not disagreement.within_tolerance:
            raise ExportMismatch(f"onnxruntime and PyTorch disagree on {request.config}: {disagreement.describe()}; "
                                 f"nothing written to {request.out}")
        say(f"onnxruntime agrees with PyTorch: {disagreement.describe()}")
        os.makedirs(os.path.dirname(os.path.abspath(request.out)), exist_ok=True)
        publish_atomically(request.out, lambda temp: shutil.copyfile(partial, temp))
    say(f"wrote {request.out}: input image float32 [1, 3, {size[1]}, {size[0]}], image_shape, scale_factor; "
        f"outputs boxes, scores, labels (docs/export.md)")


def main(argv: list[str] | None = None) -> int:
    def work(args: argparse.Namespace) -> int:
        export(ExportRequest.from_namespace(args))
        return 0

    return run_command(PROG, build_parser(), work, argv)


if __name__ == "__main__":
    sys.exit(main())
