"""The Roboflow export the tests use: the real one when PISA_TRAIN_REAL_EXPORT names its folder (.ci/run sets
it to ../shared/fixtures/roboflow-badminton where that exists), else one generated in its exact layout, so
that a clone of the repository alone runs every test.

The generated export is what Roboflow writes for a one-class project, as in the real export: train/ with
9 JPEG images of 416x416 named ``<ULID>_jpeg.rf.<md5>.jpg`` beside ``_annotations.coco.json`` (indented by 4,
its keys in Roboflow's order: info, licenses, categories, images, annotations), the project itself as a
root category with id 0 ('badminton') above the one real class ('shuttlecock', id 1), annotation ids
numbered from 0, integer box corners with fractional sizes, and a README.roboflow.txt at the top. The
images show small shuttlecocks on a court where the boxes are. Tests read what they expect (counts,
class names) from the export in use, through ``read_export``, never from a number of their own.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

REAL_EXPORT_VARIABLE = "PISA_TRAIN_REAL_EXPORT"
ANNOTATIONS = "_annotations.coco.json"
IMAGE_SIZE = 416
# Boxes per image, as in the real export: 36 in all.
BOXES_PER_IMAGE = (4, 3, 2, 3, 5, 8, 3, 4, 4)
EXPORTED_AT = "2021-06-10T16:09:07+00:00"
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base 32, as in Roboflow's upload ids

README = """
test - v1 test
==============================

This dataset was exported via roboflow.ai on June 10, 2021 at 4:09 PM GMT

It includes 9 images.
Badminton are annotated in COCO format.

The following pre-processing was applied to each image:
* Auto-orientation of pixel data (with EXIF-orientation stripping)
* Resize to 416x416 (Stretch)

No image augmentation techniques were applied.


"""


@dataclass(frozen=True)
class ExportContents:
    """What a test may expect of the export in use, read from its train/_annotations.coco.json."""
    images: int
    boxes: int
    classes: tuple[str, ...]  # the real classes, in id order (the root category left out)
    class_ids: tuple[int, ...]
    root_category: str  # Roboflow's project name, the category every class has as its supercategory


def read_export(root: Path) -> ExportContents:
    data = json.loads((root / "train" / ANNOTATIONS).read_text())
    categories = sorted(data["categories"], key=lambda category: category["id"])
    root_category = categories[0]
    classes = [category for category in categories[1:] if category["supercategory"] == root_category["name"]]
    return ExportContents(images=len(data["images"]), boxes=len(data["annotations"]),
                          classes=tuple(category["name"] for category in classes),
                          class_ids=tuple(category["id"] for category in classes),
                          root_category=root_category["name"])


def _upload_name(rng: random.Random) -> str:
    """A file name as Roboflow writes it: the upload's ULID, its original extension, and the md5 of the
    processed image."""
    ulid = "01F7F0" + "".join(rng.choice(ULID_ALPHABET) for _ in range(20))
    digest = hashlib.md5(ulid.encode()).hexdigest()
    return f"{ulid}_jpeg.rf.{digest}.jpg"


def _draw_court(rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (34 + rng.randrange(20), 110 + rng.randrange(30), 70))
    draw = ImageDraw.Draw(image)
    for _ in range(4):  # court lines
        if rng.random() < 0.5:
            x = rng.randrange(20, IMAGE_SIZE - 20)
            draw.line([(x, 0), (x + rng.randrange(-60, 60), IMAGE_SIZE)], fill=(225, 225, 215), width=3)
        else:
            y = rng.randrange(20, IMAGE_SIZE - 20)
            draw.line([(0, y), (IMAGE_SIZE, y + rng.randrange(-60, 60))], fill=(225, 225, 215), width=3)
    return image


def write_badminton_export(root: Path, seed: int = 0) -> Path:
    """Write a Roboflow export of 9 images and 36 shuttlecocks into ``root`` (which must not exist yet)."""
    rng = random.Random(seed)
    train = root / "train"
    train.mkdir(parents=True)
    (root / "README.roboflow.txt").write_text(README)
    images, annotations = [], []
    for image_id, count in enumerate(BOXES_PER_IMAGE):
        name = _upload_name(rng)
        image = _draw_court(rng)
        draw = ImageDraw.Draw(image)
        for _ in range(count):
            width, height = rng.uniform(3.2, 14.5), rng.uniform(2.1, 13.0)
            x, y = rng.randrange(60, IMAGE_SIZE - 60), rng.randrange(60, IMAGE_SIZE - 60)
            # A shuttlecock: white feathers and a darker cork, filling its box.
            draw.ellipse([x, y, x + width, y + height], fill=(245, 245, 240))
            draw.ellipse([x + width * 0.6, y + height * 0.3, x + width, y + height * 0.7], fill=(150, 110, 70))
            annotations.append({"id": len(annotations), "image_id": image_id, "category_id": 1,
                                "bbox": [x, y, width, height], "area": width * height, "segmentation": [],
                                "iscrowd": 0})
        image.save(train / name, quality=90)
        images.append({"id": image_id, "license": 1, "file_name": name, "height": IMAGE_SIZE, "width": IMAGE_SIZE,
                       "date_captured": EXPORTED_AT})
    data = {
        "info": {"year": "2021", "version": "1", "description": "Exported from roboflow.ai", "contributor": "",
                 "url": "https://app.roboflow.ai/datasets/test-brypn/1", "date_created": EXPORTED_AT},
        "licenses": [{"id": 1, "url": "", "name": "Unknown"}],
        "categories": [{"id": 0, "name": "badminton", "supercategory": "none"},
                       {"id": 1, "name": "shuttlecock", "supercategory": "badminton"}],
        "images": images,
        "annotations": annotations,
    }
    (train / ANNOTATIONS).write_text(json.dumps(data, indent=4))
    return root


def real_export() -> Path | None:
    """The real export PISA_TRAIN_REAL_EXPORT names, or None when it is unset."""
    folder = os.environ.get(REAL_EXPORT_VARIABLE)
    return Path(folder) if folder else None
