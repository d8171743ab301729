"""Small datasets written in the formats and folder structures that labelling tools export, for
tests/test_dataset_formats.py: CVAT "COCO 1.0", Label Studio COCO, COCO-style
annotations/instances_<split>.json with images/<split>/, a Roboflow export with val/, Pascal VOC with
ImageSets/Main (CVAT's labelmap.txt) and Ultralytics YOLO with data.yaml.

Every dataset has the classes ``CLASSES``, in that order (not alphabetical, so that an order taken
from anywhere else shows), 8 training and 4 validation images of 64 px: a grey background with each
object a filled rectangle of its class's colour, so that a model can learn them.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("zebra", "apple")
COLOURS = ((230, 30, 30), (30, 30, 230))  # pure enough to be found in a drawn grid
SIZE = 64
TRAIN_IMAGES, VAL_IMAGES = 8, 4


def objects(index: int) -> list[tuple[int, list[float]]]:
    """(class index, [x, y, w, h]) of the objects in image ``index``: a zebra, an apple or both."""
    found = []
    if index % 3 != 1:
        found.append((0, [4.0 + index % 4, 6.0, 24.0, 20.0]))
    if index % 3 != 0:
        found.append((1, [32.0, 30.0 + index % 3, 22.0, 26.0]))
    return found


def write_picture(path: Path, index: int, size=(SIZE, SIZE)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for class_index, (x, y, w, h) in objects(index):
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[class_index])
    image.save(path, quality=95)


def _split_indices():
    return {"train": range(TRAIN_IMAGES), "val": range(TRAIN_IMAGES, TRAIN_IMAGES + VAL_IMAGES)}


def _coco(names: list[str], indices, first_id: int, category_ids: list[int], image: dict | None = None,
          annotation: dict | None = None) -> dict:
    """COCO with images ``names`` (of the scenes ``indices``), ids from ``first_id``, and the extra keys each
    tool writes into its image and annotation entries."""
    images, annotations = [], []
    for number, (name, index) in enumerate(zip(names, indices)):
        image_id = first_id + number
        images.append({"id": image_id, "width": SIZE, "height": SIZE, "file_name": name, **(image or {})})
        for class_index, box in objects(index):
            annotations.append({"id": first_id + len(annotations), "image_id": image_id,
                                "category_id": category_ids[class_index], "segmentation": [],
                                "area": box[2] * box[3], "bbox": box, "iscrowd": 0, **(annotation or {})})
    return {"images": images, "annotations": annotations}


def write_cvat_coco(root: Path) -> Path:
    """CVAT's "COCO 1.0" export of one task: annotations/instances_default.json beside images/."""
    indices = [*_split_indices()["train"], *_split_indices()["val"]]
    names = [f"frame_{index:06d}.jpg" for index in indices]
    data = {"licenses": [{"name": "", "id": 0, "url": ""}],
            "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
            "categories": [{"id": number, "name": name, "supercategory": ""}
                           for number, name in enumerate(CLASSES, start=1)],
            **_coco(names, indices, 1, [1, 2], image={"license": 0, "flickr_url": "", "coco_url": "",
                                                      "date_captured": 0},
                    annotation={"attributes": {"occluded": False, "rotation": 0.0}})}
    for name, index in zip(names, indices):
        write_picture(root / "images" / name, index)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(data))
    return root


def write_label_studio_coco(root: Path) -> Path:
    """Label Studio's COCO export: result.json, whose file_names say images/<upload hash>-<name>."""
    indices = [*_split_indices()["train"], *_split_indices()["val"]]
    names = [f"images/{index:04x}c0ffee-photo_{index}.jpg" for index in indices]
    data = {**_coco(names, indices, 0, [0, 1], annotation={"ignore": 0}),
            "categories": [{"id": number, "name": name} for number, name in enumerate(CLASSES)],
            "info": {"year": 2024, "version": "1.0", "description": "", "contributor": "Label Studio", "url": "",
                     "date_created": "2024-05-01 10:00:00.000000"}}
    for name, index in zip(names, indices):
        write_picture(root / name, index)
    root.mkdir(parents=True, exist_ok=True)
    (root / "result.json").write_text(json.dumps(data))
    return root


def write_instances_with_image_folders(root: Path) -> Path:
    """annotations/instances_train.json and instances_val.json, with images/train/ and images/val/."""
    for split, indices in _split_indices().items():
        names = [f"{split}_{index}.jpg" for index in indices]
        data = {**_coco(names, indices, 1, [1, 2]),
                "categories": [{"id": number, "name": name, "supercategory": "object"}
                               for number, name in enumerate(CLASSES, start=1)]}
        for name, index in zip(names, indices):
            write_picture(root / "images" / split / name, index)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def write_roboflow_with_val(root: Path) -> Path:
    """A Roboflow COCO export with val/ (not valid/): ids from 0 and the dataset's root category first."""
    for split, indices in _split_indices().items():
        names = [f"img{index}_jpg.rf.{index:08x}.jpg" for index in indices]
        data = {"info": {"description": "fruit-zoo"},
                "categories": [{"id": 0, "name": "fruit-zoo", "supercategory": "none"},
                               *({"id": number, "name": name, "supercategory": "fruit-zoo"}
                                 for number, name in enumerate(CLASSES, start=1))],
                **_coco(names, indices, 0, [1, 2])}
        for name, index in zip(names, indices):
            write_picture(root / split / name, index)
        (root / split / "_annotations.coco.json").write_text(json.dumps(data))
    return root


def write_pascal_voc(root: Path) -> Path:
    """Pascal VOC as CVAT exports it: Annotations/*.xml (1-based pixel corners), JPEGImages/,
    ImageSets/Main/{train,val}.txt and labelmap.txt (background first)."""
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for split, indices in _split_indices().items():
        stems = [f"{split}_{index:03d}" for index in indices]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))
        for stem, index in zip(stems, indices):
            write_picture(root / "JPEGImages" / f"{stem}.jpg", index)
            boxes = "".join(
                f"<object><name>{CLASSES[class_index]}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>0</difficult><bndbox><xmin>{x:g}</xmin><ymin>{y:g}</ymin><xmax>{x + w:g}</xmax>"
                f"<ymax>{y + h:g}</ymax></bndbox></object>" for class_index, (x, y, w, h) in objects(index))
            (root / "Annotations" / f"{stem}.xml").write_text(
                f"<annotation><folder></folder><filename>{stem}.jpg</filename><source><database>Unknown"
                f"</database></source><size><width>{SIZE}</width><height>{SIZE}</height><depth>3</depth></size>"
                f"<segmented>0</segmented>{boxes}</annotation>")
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                       + "".join(f"{name}:{i * 100},0,0::\n" for i, name in enumerate(CLASSES)))
    return root


def write_yolo(root: Path, with_names: bool = True) -> Path:
    """Ultralytics YOLO: data.yaml (path, train, val, names), images/<split>/ and labels/<split>/ with
    `class x_center y_center width height` relative to the image; one background image without labels."""
    for split, indices in _split_indices().items():
        for index in indices:
            write_picture(root / "images" / split / f"{index}.jpg", index)
            label = root / "labels" / split / f"{index}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{class_index} {(x + w / 2) / SIZE:.6f} {(y + h / 2) / SIZE:.6f} "
                                     f"{w / SIZE:.6f} {h / SIZE:.6f}\n" for class_index, (x, y, w, h) in objects(index)))
    background = root / "images" / "train" / "background.jpg"
    Image.new("RGB", (SIZE, SIZE), (128, 128, 128)).save(background)
    names = "names:\n" + "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES)) if with_names else ""
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n{names}")
    return root


LAYOUTS = {"cvat-coco": write_cvat_coco, "label-studio-coco": write_label_studio_coco,
           "instances-with-image-folders": write_instances_with_image_folders,
           "roboflow-with-val": write_roboflow_with_val, "pascal-voc": write_pascal_voc, "yolo": write_yolo}
ONE_FILE = {"cvat-coco", "label-studio-coco"}  # pisa-data split before validating or evaluating
CONVERTED = {"pascal-voc", "yolo"}  # pisa-data convert first
