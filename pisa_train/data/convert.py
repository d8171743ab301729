"""``pisa-data convert``: a Pascal VOC or YOLO dataset as COCO annotation files, without copying images.

The boxes are read by globox (2.9, MIT), a kept converter library with light dependencies (numpy,
rich, tqdm; pure Python, Python 3.9 and later). supervision 0.31 reads the same formats, but pulls in
PyAV, SciPy and matplotlib for it. What globox does not decide is decided here, from the dataset's own
files:

* the classes and their order: VOC's ``labels.txt``, ``classes.txt`` or CVAT's ``labelmap.txt`` (else the class names of
  ``ImageSets/Main/<class>_train.txt``, else the names in the XML files, sorted), without ``void`` and
  ``background``; YOLO's ``data.yaml`` ``names`` (else ``classes.txt`` or ``obj.names``), whose position
  is the class id in the label files;
* the splits: VOC's ``ImageSets/Main/{train,val,test}.txt`` (``trainval.txt`` for train where there is
  no ``train.txt``); YOLO's ``data.yaml`` ``train``, ``val`` and ``test`` image folders (their labels in
  the ``labels`` folder beside, as Ultralytics finds them); everything in one split where there is none;
* images without boxes (a YOLO image without a label file, a VOC file without objects) are kept, as
  background images.

The COCO files go into ``--dest`` with the record that names the dataset (data/split.py's
``write_derived_dataset``): each ``file_name`` is the image's path in the dataset.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from pisa_train.data.layout import other_dataset_format
from pisa_train.data.split import prepare_destination, write_derived_dataset
from pisa_train.errors import DataError, EnvironmentProblem
from pisa_train.files import IMAGE_EXTENSIONS

NOT_CLASSES = {"void", "background", "__background__"}
_CLASS_LISTS = ("labels.txt", "classes.txt", "labelmap.txt", "obj.names")
_GLOBOX = "globox is not installed; install it with `pip install 'pisa-train[convert]'` (or `pip install globox`)"


def _globox():
    try:
        import globox  # noqa: PLC0415 - an optional extra, needed by this command alone
    except ImportError:
        raise EnvironmentProblem(f"pisa-data convert needs the globox package: {_GLOBOX}") from None
    return globox


def _class_list(folder: Path) -> list[str] | None:
    """The names in the dataset's own class list, in its order; None without one. CVAT's labelmap.txt
    has a line `name:color:parts:actions` per class, after comment lines."""
    for name in _CLASS_LISTS:
        if (folder / name).is_file():
            lines = [line.strip() for line in (folder / name).read_text(encoding="utf-8").splitlines()]
            if name == "labelmap.txt":
                lines = [line.split(":", 1)[0] for line in lines if not line.startswith("#")]
            return [line for line in lines if line and line not in NOT_CLASSES]
    return None


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height as the loader decodes the image (after its EXIF orientation)."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _coco(entries: list[tuple[str, tuple[int, int], list]], classes: list[str]) -> dict:
    """COCO from (file_name, (width, height), [(class name, [x, y, w, h])])."""
    category_ids = {name: number for number, name in enumerate(classes, start=1)}
    images, annotations = [], []
    for image_id, (file_name, (width, height), boxes) in enumerate(entries, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for name, box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[name],
                                "bbox": [round(value, 3) for value in box], "area": round(box[2] * box[3], 3),
                                "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": number, "name": name, "supercategory": "none"}
                           for name, number in category_ids.items()]}


def _voc(folder: Path) -> tuple[dict[str, dict], list[str]]:
    globox = _globox()
    try:
        parsed = globox.AnnotationSet.from_pascal_voc(folder / "Annotations")
    except (globox.errors.ParsingError, ValueError) as error:
        raise DataError(f"Pascal VOC annotations in {folder / 'Annotations'} cannot be read ({error}); "
                        f"fix or remove the broken .xml file") from None
    by_stem = {Path(annotation.image_id).stem: annotation for annotation in parsed}
    lists = folder / "ImageSets" / "Main"
    classes = _class_list(folder)
    if classes is None and lists.is_dir():
        classes = sorted({path.stem.rsplit("_", 1)[0] for path in lists.glob("*_train.txt")} - NOT_CLASSES) or None
    if classes is None:
        classes = sorted({box.label for annotation in parsed for box in annotation.boxes} - NOT_CLASSES)
    split_files = {split: lists / f"{split}.txt" for split in ("train", "val", "test")}
    if not split_files["train"].is_file() and (lists / "trainval.txt").is_file():
        split_files["train"] = lists / "trainval.txt"
    stems = {split: [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
             for split, path in split_files.items() if path.is_file()}
    if not stems:
        stems = {"train": sorted(by_stem)}
    files = {}
    for split, names in stems.items():
        missing = [stem for stem in names if stem not in by_stem]
        if missing:
            raise DataError(f"{len(missing)} images listed for the {split} split in {split_files[split]} have no "
                            f"annotation file in {folder / 'Annotations'} (e.g. {missing[0]}.xml); restore them or "
                            f"remove them from the list")
        entries = []
        for stem in names:
            annotation = by_stem[stem]
            boxes = [(box.label, [box.xmin, box.ymin, box.xmax - box.xmin, box.ymax - box.ymin])
                     for box in annotation.boxes if box.label in classes]
            entries.append((f"JPEGImages/{annotation.image_id}", annotation.image_size, boxes))
        files[split] = _coco(entries, classes)
    return files, classes


def _yolo_names(folder: Path) -> tuple[list[str] | None, dict]:
    """The class names and the data.yaml (empty without one)."""
    for name in ("data.yaml", "data.yml"):
        if (folder / name).is_file():
            try:
                spec = yaml.safe_load((folder / name).read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as error:
                raise DataError(f"{folder / name} is not valid YAML ({error}); fix it") from None
            names = spec.get("names") if isinstance(spec, dict) else None
            if isinstance(names, dict):  # {0: person, 1: car}
                names = [names[key] for key in sorted(names, key=int)]
            return ([str(name) for name in names] if isinstance(names, list) else _class_list(folder)), \
                (spec if isinstance(spec, dict) else {})
    return _class_list(folder), {}


def _yolo_image_folder(folder: Path, spec: dict, split: str) -> Path | None:
    value = spec.get(split)
    if not isinstance(value, str):
        return None
    base = folder / spec["path"] if isinstance(spec.get("path"), str) and not Path(spec["path"]).is_absolute() \
        else folder
    candidates = [base / value, folder / value]
    # Roboflow writes `train: ../train/images`, relative to a folder above the dataset.
    stripped = value
    while stripped.startswith("../"):
        stripped = stripped[3:]
        candidates.append(folder / stripped)
    return next((candidate.resolve() for candidate in candidates if candidate.is_dir()), None)


def _labels_folder(images: Path) -> Path:
    """Ultralytics' rule: the last 'images' in the path becomes 'labels'."""
    parts = list(images.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts)
    return images.parent / "labels"


def _yolo(folder: Path) -> tuple[dict[str, dict], list[str]]:
    globox = _globox()
    classes, spec = _yolo_names(folder)
    if not classes:
        raise DataError(f"YOLO dataset {folder} has no class list: its label files number the classes, and "
                        f"nothing names them; write the names one a line, in the order of their ids, into "
                        f"{folder / 'classes.txt'} (or as `names:` in data.yaml)")
    image_folders = {split: _yolo_image_folder(folder, spec, split) for split in ("train", "val", "test")}
    image_folders = {split: path for split, path in image_folders.items() if path is not None}
    if not image_folders:
        image_folders = {"train": next((path for path in (folder / "images", folder / "train" / "images")
                                        if path.is_dir()), folder)}
    root = folder.resolve()
    files = {}
    for split, images in image_folders.items():
        if not images.is_relative_to(root):
            raise DataError(f"data.yaml's {split} folder {images} is outside {folder}; move it into the dataset")
        labels = _labels_folder(images)
        entries = []
        for image in sorted(path for path in images.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS):
            size = _image_size(image)
            label = labels / image.relative_to(images).with_suffix(".txt")
            boxes = []
            if label.is_file():
                try:
                    parsed = globox.Annotation.from_yolo_v5(label, image_size=size, image_id=image.name)
                except (globox.errors.ParsingError, ValueError) as error:
                    raise DataError(f"YOLO label file {label} cannot be read ({error}); each line should be "
                                    f"`class x_center y_center width height`, relative to the image") from None
                for box in parsed.boxes:
                    number = int(float(box.label))
                    if not 0 <= number < len(classes):
                        raise DataError(f"YOLO label file {label} has class {number}, but the class list names "
                                        f"{len(classes)} classes (0 to {len(classes) - 1}); fix the label or the list")
                    boxes.append((classes[number], [box.xmin, box.ymin, box.xmax - box.xmin, box.ymax - box.ymin]))
            entries.append((image.relative_to(root).as_posix(), size, boxes))
        files[split] = _coco(entries, classes)
    return files, classes


def convert_dataset(source: str | Path, dest: str | Path) -> list[str]:
    """Convert the VOC or YOLO dataset at ``source`` into COCO files in ``dest``; the lines that say so."""
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} not found; give the folder of a Pascal VOC or YOLO dataset")
    found = other_dataset_format(folder)
    if found is None:
        raise DataError(f"{folder} is neither Pascal VOC (Annotations/ with JPEGImages/) nor YOLO (data.yaml, or "
                        f"labels/ beside images/); pisa-data convert reads those two formats")
    files, classes = (_voc if found.name == "voc" else _yolo)(folder)
    dest = Path(dest)
    prepare_destination(dest)
    lines = write_derived_dataset(dest, folder.resolve(), files, f"pisa-data convert {source}")
    return [f"converted the {found.description} {folder} into {dest} (images stay in {folder}):",
            f"  classes ({len(classes)}): {', '.join(classes)}", *lines]
