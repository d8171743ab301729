"""Time what pisa-eval adds to an evaluation: the confusion matrix, COCO's error breakdown and the
ranking of images by errors (results/error_analysis.py), on generated ground truth and detections
(tests/generated_coco.py).

    .venv/bin/python benchmarks/error_analysis_speed.py [--images 5000] [--classes 10]

Prints the machine and the wall time of each. A measurement, not a test.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from pisa_train.results.error_analysis import confusion_matrix, error_breakdown, image_errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# tests/generated_coco.py and benchmarks/coco_eval_speed.py, on the path just above
from coco_eval_speed import cpu_model
from generated_coco import generate_ground_truth_and_detections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args(argv)

    ground_truth, detections = generate_ground_truth_and_detections(args.images, args.classes, seed=0)
    classes = [category["name"] for category in ground_truth["categories"]]
    print(f"machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; "
          f"Python {platform.python_version()}")
    print(f"data: {args.images} images, {len(ground_truth['annotations'])} objects, {len(detections)} detections, "
          f"{args.classes} classes")
    for name, analyse in (("confusion matrix", lambda: confusion_matrix(ground_truth, detections, classes, 0.3)),
                          ("error breakdown", lambda: error_breakdown(ground_truth, detections, classes)),
                          ("images by errors", lambda: image_errors(ground_truth, detections, classes, 0.3))):
        start = time.perf_counter()
        analyse()
        print(f"{name:>17}: {time.perf_counter() - start:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
