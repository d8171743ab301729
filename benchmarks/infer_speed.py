"""pisa-infer's seconds per image with PyTorch eager against onnxruntime, on the same images and machine.

    .venv/bin/python benchmarks/infer_speed.py [--models demo x101] [--images 4] [--checkpoint-demo FILE]

For each model: PyTorch as pisa-infer runs a .pth (mmdet's ``inference_detector``: the test pipeline,
the data preprocessor, the model, the post-processing) and onnxruntime as pisa-infer runs a .onnx
(the same test pipeline and padding, then the graph of pisa-export). Both on the CPU, float32, one
image at a time, timed after one warm-up image; the image is read from disk each time in both.
``demo`` is configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py at 128x128 (a trained checkpoint with
``--checkpoint-demo``, else random weights); ``x101`` is PISA Faster R-CNN X101-32x4d at 1333x800 with
random weights (the speed of a network does not depend on its weights; its post-processing does a
little, through the number of boxes above the score threshold, which both runtimes see alike).
Prints the machine and a markdown table. A measurement, not a test.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pisa_train  # noqa: F401  (mmcv's kernels on torchvision, as every pisa-train command)
from pisa_train.config import rewrites
from pisa_train.config.loading import load_config
from pisa_train.engine import onnx_export
from pisa_train.engine.runner import load_detector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coco_eval_speed import cpu_model  # benchmarks/coco_eval_speed.py, on the path just above

REPO_ROOT = Path(__file__).resolve().parent.parent

MODELS = {
    "demo": ("configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py", (128, 128)),
    "x101": ("configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py", (1333, 800)),
}


def build_model(config: str, checkpoint: str | None, scratch: str):
    """The config's model on the CPU with torchvision's kernels (what pisa-export exports), as
    pisa-infer loads it; random weights saved as a checkpoint when none is given."""
    import torch
    from mmdet.apis import init_detector


    cfg = rewrites.apply_ops_backend(rewrites.apply_device(load_config(str(REPO_ROOT / config), {}, {}), "cpu"),
                                     "torchvision")
    cfg.work_dir = scratch
    if checkpoint is None:
        random_cfg = cfg.copy()
        random_cfg.model.backbone.init_cfg = None
        torch.manual_seed(0)
        checkpoint = os.path.join(scratch, "random.pth")
        torch.save({"state_dict": init_detector(random_cfg, None, device="cpu").state_dict()}, checkpoint)
    return cfg, load_detector(cfg, checkpoint, "cpu", say=lambda line: None)


def seconds_per_image(detect, images) -> float:
    detect(images[0])  # warm-up: lazy initialisation, caches
    start = time.perf_counter()
    for image in images:
        detect(image)
    return (time.perf_counter() - start) / len(images)


def measure(name: str, checkpoint: str | None, count: int, scratch: str) -> dict:
    from mmdet.apis import inference_detector


    config, size = MODELS[name]
    cfg, model = build_model(config, checkpoint, scratch)
    images = onnx_export.write_check_images(scratch, size, count, seed=1)
    size = onnx_export.export_size(cfg, size)
    prepare = onnx_export.ImagePreparer(cfg, size)
    model_path = os.path.join(scratch, f"{name}.onnx")
    start = time.perf_counter()
    onnx_export.export_detector(model, size, prepare(images[0]), model_path, onnx_export.DEFAULT_OPSET)
    export_s = time.perf_counter() - start
    detect, _, providers = onnx_export.onnxruntime_detection(cfg, model_path, "cpu")
    torch_s = seconds_per_image(lambda image: inference_detector(model, str(image)), images)
    onnx_s = seconds_per_image(detect, images)
    return dict(model=name, config=config, size=f"{size[0]}x{size[1]}", images=len(images), export_s=export_s,
                torch_s=torch_s, onnx_s=onnx_s, providers=", ".join(providers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["demo", "x101"])
    parser.add_argument("--images", type=int, default=4, help="timed images per model (after one warm-up)")
    parser.add_argument("--checkpoint-demo", help="a trained checkpoint of the demo config (default: random weights)")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch


    print(f"machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); onnxruntime {onnxruntime.__version__}; "
          f"{time.strftime('%Y-%m-%d')}")
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="infer-speed-") as scratch:
            rows.append(measure(name, args.checkpoint_demo if name == "demo" else None, args.images, scratch))
        row = rows[-1]
        print(f"{name}: PyTorch {row['torch_s']:.3f} s/image, onnxruntime {row['onnx_s']:.3f} s/image "
              f"({row['torch_s'] / row['onnx_s']:.2f}x); export {row['export_s']:.1f} s", flush=True)
    print("\n| model | input | PyTorch eager s/image | onnxruntime s/image | PyTorch / onnxruntime |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['config'].split('/')[-1][:-3]} | {row['size']} | {row['torch_s']:.3f} | {row['onnx_s']:.3f} | "
              f"{row['torch_s'] / row['onnx_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
