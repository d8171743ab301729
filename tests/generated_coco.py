"""Generated COCO ground truth and detections for comparing COCO evaluators: many images,
several classes, objects of every COCO size range, crowd boxes, images without objects,
and detections that are shifted copies of the objects, duplicates, and false positives."""
from __future__ import annotations

import numpy as np


def generate_ground_truth_and_detections(num_images: int = 3000, num_classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    categories = [{"id": 10 + 3 * k, "name": f"class_{k}"} for k in range(num_classes)]  # ids not 1..K
    cat_ids = [c["id"] for c in categories]
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(200, 800)), int(rng.integers(200, 800))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:06d}.jpg"})
        num_objects = 0 if rng.random() < 0.1 else int(rng.integers(1, 12))  # a tenth are empty
        for _ in range(num_objects):
            # Sizes spread over small (< 32^2), medium and large (> 96^2) areas.
            w, h = (float(v) for v in rng.uniform(4, min(width, height) / 1.5, size=2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            cat = int(rng.choice(cat_ids))
            crowd = int(rng.random() < 0.05)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 detections of it, some with the wrong class
                jitter = rng.normal(0, 0.08, size=4) * [w, h, w, h]
                detections.append({"image_id": image_id,
                                   "category_id": cat if rng.random() < 0.85 else int(rng.choice(cat_ids)),
                                   "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]),
                                            max(1.0, h + jitter[3])],
                                   "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 4))):  # false positives, on empty images too
            w, h = (float(v) for v in rng.uniform(4, 150, size=2))
            detections.append({"image_id": image_id, "category_id": int(rng.choice(cat_ids)),
                               "bbox": [float(rng.uniform(0, width - 4)), float(rng.uniform(0, height - 4)), w, h],
                               "score": float(rng.random()) * 0.7})
    ground_truth = {"images": images, "annotations": annotations, "categories": categories}
    return ground_truth, detections
