"""A small synthetic COCO-format dataset: coloured shapes on textured backgrounds, with boxes and masks.

It lets the demo config train and evaluate on a fresh machine with no download.
The images are deterministic for a given seed and size, so two machines that
generate it get the same dataset. It is for demonstrations and tests, not a
benchmark. Each shape has its box and its outline as a COCO polygon (a circle as
a 32-gon), so that Mask R-CNN trains on it too; the polygons are computed from
the shapes, drawing no random numbers, so a seed gives the same pixels and boxes
as before they were added. ``area`` stays the box's area, as it was, so that the
small/medium/large split of the demo's metrics is unchanged.

A config asks for it with a top-level ``synthetic_dataset`` dict (see
``configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py``); ``ensure_synthetic_dataset``
generates it under the config's ``data_root`` on first use, and
``write_synthetic_dataset`` anywhere (``pisa-data synthetic --dest DIR``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pisa_train.errors import ConfigError, DataError

CLASSES = ("circle", "square", "triangle")
MANIFEST = "synthetic_dataset.json"  # written last: its presence means the dataset is complete
# The demo config's settings (configs/pisa_faster_rcnn_r18_fpn_demo_shapes.py), pisa-data synthetic's defaults.
DEMO_SETTINGS = dict(seed=0, num_train_images=300, num_val_images=60, image_size=128)
_CIRCLE_POINTS = 32


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A background of low-frequency colour blobs, stripes and pixel noise, so that
    the detector has to tell shapes from clutter rather than from a flat colour."""
    from PIL import Image

    coarse = rng.uniform(60, 200, size=(4, 4, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float64)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 20)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    image = image + stripes[..., None] * rng.uniform(5, 25) + rng.normal(0, 8, size=image.shape)
    return image.clip(0, 255).astype(np.uint8)


def _iou(a: list[float], b: list[float]) -> float:
    ax1, ay1, aw, ah = a
    bx1, by1, bw, bh = b
    iw = max(0.0, min(ax1 + aw, bx1 + bw) - max(ax1, bx1))
    ih = max(0.0, min(ay1 + ah, by1 + bh) - max(ay1, by1))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _outline(shape: str, x1: float, y1: float, side: float) -> list[tuple[float, float]]:
    """The shape's outline as polygon vertices, as it is drawn."""
    if shape == "circle":
        radius = side / 2
        return [(x1 + radius + radius * math.cos(2 * math.pi * k / _CIRCLE_POINTS),
                 y1 + radius + radius * math.sin(2 * math.pi * k / _CIRCLE_POINTS)) for k in range(_CIRCLE_POINTS)]
    if shape == "square":
        return [(x1, y1), (x1 + side, y1), (x1 + side, y1 + side), (x1, y1 + side)]
    return [(x1 + side / 2, y1), (x1, y1 + side), (x1 + side, y1 + side)]


def _draw_image(rng: np.random.Generator, size: int, max_objects: int):
    """The image and its objects: (label, [x, y, w, h], outline vertices)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(_texture(rng, size))
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[int, list[float], list[tuple[float, float]]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = float(rng.uniform(0.15, 0.4) * size)
            x1 = float(rng.uniform(0, size - side))
            y1 = float(rng.uniform(0, size - side))
            box = [x1, y1, side, side]
            if all(_iou(box, other) < 0.1 for _, other, _ in boxes):
                break
        else:
            continue
        label = int(rng.integers(len(CLASSES)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if CLASSES[label] == "circle":
            draw.ellipse([x1, y1, x1 + side, y1 + side], fill=colour)
        elif CLASSES[label] == "square":
            draw.rectangle([x1, y1, x1 + side, y1 + side], fill=colour)
        else:
            draw.polygon(_outline("triangle", x1, y1, side), fill=colour)
        boxes.append((label, box, _outline(CLASSES[label], x1, y1, side)))
    return image, boxes


def generate_shapes_dataset(root: Path, seed: int, num_train_images: int, num_val_images: int,
                            image_size: int, max_objects: int = 4) -> None:
    """Write train/, val/ and annotations/{train,val}.json under ``root`` (which must not exist)."""
    root.mkdir(parents=True)
    (root / "annotations").mkdir()
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    for split, count, split_seed in (("train", num_train_images, seed), ("val", num_val_images, seed + 1)):
        rng = np.random.default_rng(split_seed)
        (root / split).mkdir()
        images, annotations = [], []
        for index in range(count):
            image, boxes = _draw_image(rng, image_size, max_objects)
            file_name = f"{index:05d}.jpg"
            image.save(root / split / file_name, quality=92)
            images.append({"id": index + 1, "file_name": file_name, "width": image_size, "height": image_size})
            for label, (x, y, w, h), outline in boxes:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2), "iscrowd": 0,
                    "segmentation": [[round(c, 2) for point in outline for c in point]]})
        with open(root / "annotations" / f"{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def ensure_synthetic_dataset(cfg) -> str | None:
    """Generate the config's synthetic dataset under its ``data_root`` if it is not there yet.

    Returns a line saying what was done, or None when the config names no synthetic dataset.
    """
    spec = cfg.get("synthetic_dataset")
    if not spec:
        return None
    spec = dict(spec)
    if spec.pop("generator", None) != "shapes":
        raise ConfigError("synthetic_dataset.generator must be 'shapes' (the only generator pisa-train has)")
    data_root = cfg.get("data_root")
    if not data_root:
        raise ConfigError("a config with synthetic_dataset must set data_root, the folder to generate it in")
    return write_synthetic_dataset(data_root, **spec, whose="the config's synthetic_dataset",
                                   other_place="set data_root to another folder")


def write_synthetic_dataset(dest: str | Path, seed: int, num_train_images: int, num_val_images: int,
                            image_size: int, whose: str = "pisa-data synthetic",
                            other_place: str = "choose another --dest") -> str:
    """Generate the shapes dataset into ``dest`` unless it is there already with these settings;
    a line saying what was done. Never over a folder that holds anything else.

    Safe when several processes start at once (distributed runs): each generates into its own
    temporary folder and the first rename wins.
    """
    spec = dict(seed=seed, num_train_images=num_train_images, num_val_images=num_val_images,
                image_size=image_size)
    root = Path(dest)
    manifest = root / MANIFEST
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        if recorded == spec:
            return f"synthetic dataset in {root} is ready"
        # Ours, but made with other settings: regenerate it to match.
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise DataError(f"{root} exists and is not a pisa-train synthetic dataset; {whose} would generate into "
                        f"it. Move it away, or {other_place}")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.generating-", dir=root.parent))
    try:
        generate_shapes_dataset(staging / "dataset", **spec)
        (staging / "dataset" / MANIFEST).write_text(json.dumps(spec))
        try:
            # Another process (--nproc) may have removed the empty folder, or renamed its dataset in, since
            # the check above: then rmdir or rename fails, and the manifest says whether that is why.
            if root.exists():
                try:
                    root.rmdir()  # empty (checked above)
                except FileNotFoundError:
                    pass
            os.rename(staging / "dataset", root)
        except OSError:
            if not manifest.exists():  # not another process that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (f"generated the synthetic shapes dataset in {root} ({num_train_images} train and {num_val_images} val "
            f"images of {image_size} px with boxes and masks, seed {seed})")
