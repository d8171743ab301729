"""Time training iterations of PISA Faster R-CNN X101-32x4d FPN on generated COCO-like images.

    .venv/bin/python benchmarks/train_speed.py [--iters 20] [--warmup 3] [--batch 2]
        [--size 1333 800] [--mode fp32|amp|bf16] [--ops-backend auto|mmcv|torchvision]
        [--json out.json] [--device cpu|cuda]

The model is the real config's (configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py, random
weights); each batch is images of --size (default 1333x800 on a GPU, 448x256 on the CPU) with
5-15 random boxes, made on the fly: "data time" is the time to make and preprocess a batch
(normalise, pad), as the dataloader plus DetDataPreprocessor would. It reports s/iter, data
time, images/s and peak memory (GPU: torch.cuda.max_memory_allocated; CPU: peak RSS), prints
a JSON record and a markdown row naming the machine. A measurement, not a test; no dataset,
no checkpoints, no MMEngine Runner (the loop is forward, backward and an SGD step, which is
what MMEngine's train loop does per iteration, minus hooks).

Modes: fp32; amp: fp16 autocast with a dynamic loss scale (CUDA only, as --amp trains);
bf16: bfloat16 autocast without a loss scale.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"


def machine_name(device: str) -> str:
    import torch

    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} ({cpu})"
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores available"


def make_batch(generator, batch: int, width: int, height: int, num_classes: int):
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
        count = int(torch.randint(5, 16, (1,), generator=generator))
        xy = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
        wh = (torch.rand(count, 2, generator=generator) * 0.3 + 0.02) * torch.tensor([width, height])
        sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             scale_factor=(1.0, 1.0), flip=False, img_id=0))
        sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                           labels=torch.randint(0, num_classes, (count,), generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"))
    parser.add_argument("--mode", choices=["fp32", "amp", "bf16"], default="fp32")
    parser.add_argument("--ops-backend", choices=["auto", "mmcv", "torchvision"], default="auto")
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--json", metavar="FILE", help="also write the record to FILE")
    args = parser.parse_args(argv)

    from pisa_train.device import choose_device

    device = choose_device(args.device)
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from pisa_train import config_rewrites as rewrite
    from pisa_train.config_loading import load_config
    from pisa_train.ops_backend import choose_ops_backend, install_ops_backend, mmcv_kernel_devices

    if args.mode == "amp" and device != "cuda":
        parser.error("--mode amp (fp16 with a loss scale) needs CUDA, as pisa-train --amp does; try --mode bf16")
    width, height = args.size or ((1333, 800) if device == "cuda" else (448, 256))
    register_all_modules()
    cfg = load_config(str(CONFIG), {}, {})
    cfg = rewrite.apply_ops_backend(cfg, choose_ops_backend(args.ops_backend, device, mmcv_kernel_devices()))
    install_ops_backend(cfg)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=args.mode == "amp")
    autocast_dtype = {"amp": torch.float16, "bf16": torch.bfloat16}.get(args.mode)
    generator = torch.Generator().manual_seed(0)
    num_classes = cfg.model.roi_head.bbox_head.num_classes

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    iter_times, data_times = [], []
    for step in range(args.warmup + args.iters):
        if step == args.warmup and device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        synchronize()
        start = time.perf_counter()
        batch = model.data_preprocessor(make_batch(generator, args.batch, width, height, num_classes), True)
        synchronize()
        data_done = time.perf_counter()
        with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            losses = model(**batch, mode="loss")
        loss, _ = model.parse_losses(losses)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        synchronize()
        if step >= args.warmup:
            iter_times.append(time.perf_counter() - start)
            data_times.append(data_done - start)
        if not torch.isfinite(loss):
            print(f"warning: non-finite loss at step {step} ({args.mode})", file=sys.stderr)

    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    seconds = sum(iter_times) / len(iter_times)
    record = dict(machine=machine_name(device), device=device, mode=args.mode, ops_backend=cfg.ops_backend,
                  image_size=[width, height], batch=args.batch, iterations=args.iters,
                  s_per_iter=round(seconds, 4), data_s_per_iter=round(sum(data_times) / len(data_times), 4),
                  images_per_s=round(args.batch / seconds, 3),
                  peak_memory_mib=round(peak, 1),
                  peak_memory_kind="torch.cuda.max_memory_allocated" if device == "cuda" else "process peak RSS",
                  torch=torch.__version__, python=platform.python_version())
    print(json.dumps(record, indent=2))
    print("| machine | mode | ops | image | batch | s/iter | data s/iter | images/s | peak memory (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {record['machine']} | {args.mode} | {record['ops_backend']} | {width}x{height} | {args.batch} | "
          f"{record['s_per_iter']:.3f} | {record['data_s_per_iter']:.3f} | {record['images_per_s']:.2f} | "
          f"{record['peak_memory_mib']:.0f} ({record['peak_memory_kind']}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
