"""Build tiny COCO-format datasets in tmp_path for the data-layer tests."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def write_image(path: Path, width: int = 64, height: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 200)).save(path)


def coco_dict(image_names=("a.jpg", "b.jpg"), boxes=None, categories=None, size=(64, 48)) -> dict:
    """``boxes``: list of (image index, category id, [x, y, w, h])."""
    categories = categories if categories is not None else [
        {"id": 0, "name": "things", "supercategory": "none"},
        {"id": 1, "name": "cat", "supercategory": "things"},
        {"id": 2, "name": "dog", "supercategory": "things"},
    ]
    boxes = boxes if boxes is not None else [(0, 1, [5, 5, 20, 10]), (1, 2, [10, 10, 30, 20])]
    return {
        "images": [{"id": i, "file_name": name, "width": size[0], "height": size[1]}
                   for i, name in enumerate(image_names)],
        "annotations": [{"id": i, "image_id": image, "category_id": category, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0}
                        for i, (image, category, box) in enumerate(boxes)],
        "categories": categories,
    }


def write_split(image_dir: Path, ann_file: Path, data: dict, size=(64, 48)) -> None:
    for image in data["images"]:
        write_image(image_dir / image["file_name"], *size)
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(data))


def make_roboflow(root: Path, splits=("train", "valid", "test"), data: dict | None = None) -> Path:
    for folder in splits:
        write_split(root / folder, root / folder / "_annotations.coco.json", data or coco_dict())
    return root


def make_coco2017(root: Path, data: dict | None = None) -> Path:
    for split in ("train", "val"):
        write_split(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json", data or coco_dict())
    return root


def make_images_folder(root: Path, json_names=("train.json", "val.json"), data: dict | None = None) -> Path:
    for name in json_names:
        write_split(root / "images", root / name, data or coco_dict())
    return root


def make_repacked_roboflow(root: Path, splits=("train", "valid"), data: dict | None = None) -> Path:
    """A Roboflow export as re-packs keep it: each split's _annotations.coco.json beside an images/
    folder and YOLO labels/, a README and a data.yaml at the top."""
    for folder in splits:
        split_data = data or coco_dict()
        write_split(root / folder / "images", root / folder / "_annotations.coco.json", split_data)
        for image in split_data["images"]:
            label = root / folder / "labels" / (Path(image["file_name"]).stem + ".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "README.dataset.txt").write_text("exported from a re-pack\n")
    (root / "data.yaml").write_text("names: [cat, dog]\nnc: 2\n")
    return root
