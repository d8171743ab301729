"""Time COCO bbox evaluation with pycocotools and with faster-coco-eval on the same generated
ground truth and detections (tests/generated_coco.py), and check that they agree.

    .venv/bin/python benchmarks/coco_eval_speed.py [--images 5000] [--classes 10] [--repeats 3]

Prints the machine (platform, CPU model, cores), the best of ``--repeats`` wall times of
each evaluator (load, evaluate, accumulate, summarize) and their ratio. A measurement, not a test.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pisa_train.results.coco_metrics import evaluate_bbox

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from generated_coco import generate_ground_truth_and_detections  # tests/generated_coco.py, on the path just above


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    ground_truth, detections = generate_ground_truth_and_detections(args.images, args.classes, seed=0)
    print(f"machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; "
          f"Python {platform.python_version()}")
    print(f"data: {args.images} images, {len(ground_truth['annotations'])} objects, {len(detections)} detections, "
          f"{args.classes} classes")
    times, stats = {}, {}
    for backend in ("pycocotools", "faster-coco-eval"):
        best = float("inf")
        for _ in range(args.repeats):
            gt, dt = copy.deepcopy(ground_truth), copy.deepcopy(detections)
            start = time.perf_counter()
            evaluation = evaluate_bbox(gt, dt, backend)
            best = min(best, time.perf_counter() - start)
        times[backend], stats[backend] = best, np.asarray(evaluation.stats)
        print(f"{backend:>16}: {best:7.2f} s (best of {args.repeats})")
    difference = float(np.abs(stats["pycocotools"] - stats["faster-coco-eval"]).max())
    print(f"faster-coco-eval is {times['pycocotools'] / times['faster-coco-eval']:.1f}x as fast; "
          f"largest difference of the 12 summary numbers: {difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
