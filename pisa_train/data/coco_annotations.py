"""Reading COCO-format annotation files, with errors that name the file and the fix; the annotation
ids COCO evaluation cannot use, and the corrected copy that --data reads instead.

COCOeval (pycocotools, and faster-coco-eval alike) records for each detection the ``id`` of the
ground-truth box it matched, 0 meaning "unmatched": a box with id 0 counts as missed and the detection
that found it as a false detection. Roboflow numbers annotations from 0, so AP comes out silently low on
every Roboflow export. Duplicate ids are worse: COCO's index keeps one box per id, and mmdet's
CocoDataset refuses them ("Annotation ids ... are not unique!"). ``annotation_id_problems`` says what is
wrong with a file's ids; ``renumber_annotation_ids`` numbers the annotations 1..N in file order, which
changes no match and no box.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pisa_train.errors import DataError
from pisa_train.files import write_json_atomically

REQUIRED_KEYS = ("images", "annotations", "categories")
# Above this size, reading only the "categories" list saves seconds and
# gigabytes (COCO's instances_train2017.json is 448 MB; its categories are a
# few kilobytes at the end of the file).
_FULL_PARSE_LIMIT_BYTES = 50 * 2**20
_REEXPORT = "export the dataset again in COCO JSON format"


def load_annotation_file(path: str | Path) -> dict:
    """The parsed file; DataError if it is not JSON or lacks the COCO lists."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = json.load(file)
    except OSError as error:
        raise DataError(f"cannot read annotation file {path} ({error.strerror}); check that it exists "
                        f"and is readable") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"annotation file {path} is not valid JSON ({error}); {_REEXPORT}") from None
    _require_coco_structure(path, data)
    return data


def _require_coco_structure(path: Path, data: object) -> None:
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path} is not COCO: the top level is a JSON "
                        f"{type(data).__name__}, not an object with {', '.join(REQUIRED_KEYS)}; {_REEXPORT}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise DataError(f"annotation file {path} is not COCO: missing {', '.join(repr(k) for k in missing)}; "
                        f"{_REEXPORT}")
    not_lists = [key for key in REQUIRED_KEYS if not isinstance(data[key], list)]
    if not_lists:
        raise DataError(f"annotation file {path} is not COCO: {', '.join(repr(k) for k in not_lists)} "
                        f"should be a list; {_REEXPORT}")
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise DataError(f"annotation file {path} is not COCO: categories[{index}] has no 'id' and 'name'; "
                            f"{_REEXPORT}")


def read_categories(path: str | Path) -> list[dict]:
    """The ``categories`` list of an annotation file, in file order."""
    path = Path(path)
    if path.stat().st_size <= _FULL_PARSE_LIMIT_BYTES:
        return load_annotation_file(path)["categories"]
    categories = _list_without_full_parse(path, "categories", ("id", "name"))
    return categories if categories is not None else load_annotation_file(path)["categories"]


def read_image_file_names(path: str | Path) -> list[str]:
    """The ``file_name`` of each entry of ``images`` that has one, in file order."""
    path = Path(path)
    images = _list_without_full_parse(path, "images", ("id", "file_name")) \
        if path.stat().st_size > _FULL_PARSE_LIMIT_BYTES else None
    return image_file_names(images if images is not None else load_annotation_file(path)["images"])


def image_file_names(images: list) -> list[str]:
    """The ``file_name`` of each entry of an ``images`` list that has one."""
    return [image["file_name"] for image in images
            if isinstance(image, dict) and isinstance(image.get("file_name"), str)]


def _list_without_full_parse(path: Path, key: str, required: tuple[str, ...]) -> list[dict] | None:
    """Decode only the list after a ``"<key>":``, whose items all have ``required`` keys;
    None when that is not conclusive."""
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    marker = f'"{key}"'
    position = text.find(marker)
    while position != -1:
        after = position + len(marker)
        rest = text[after:after + 64].lstrip()
        if rest.startswith(":"):
            start = text.index(":", after) + 1
            while text[start].isspace():
                start += 1
            try:
                value, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, list) and value and all(
                    isinstance(item, dict) and all(name in item for name in required) for item in value):
                return value
        position = text.find(marker, after)
    return None


def boxes_per_category(data: dict) -> Counter:
    """Number of annotations per category id."""
    return Counter(annotation.get("category_id") for annotation in data["annotations"]
                   if isinstance(annotation, dict))


def synthetic_root_categories(categories: list[dict], box_counts: Counter) -> list[str]:
    """Names of categories that only group the others and own no boxes.

    Roboflow exports put the dataset's name first (id 0) as the supercategory
    of every real class; it is not a class. A real class with few or no boxes
    is not named as another category's supercategory, so it stays.
    """
    # COCO's "person" is its own supercategory; only other categories count.
    named_by_others = {
        category["name"] for category in categories
        if any(other is not category and other.get("supercategory") == category["name"] for other in categories)
    }
    return [category["name"] for category in categories
            if category["name"] in named_by_others and box_counts.get(category["id"], 0) == 0]


def _is_usable_id(value) -> bool:
    """An integer of 0 or more: what COCO indexes by (0 is usable as a key, though not as a match)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def annotation_id_problems(annotations: list) -> list[str]:
    """Why COCO evaluation cannot use the ``id``s of an ``annotations`` list as they are, one phrase per
    kind of problem; none when every id is a distinct integer of 1 or more."""
    entries = [annotation for annotation in annotations if isinstance(annotation, dict)]
    without = sum("id" not in annotation for annotation in entries)
    ids = [annotation["id"] for annotation in entries if "id" in annotation]
    usable = [value for value in ids if _is_usable_id(value)]
    others = [value for value in ids if not _is_usable_id(value)]
    repeated = [value for value, count in Counter(usable).items() if count > 1]
    problems = []
    if 0 in usable:
        problems.append("the file numbers them from 0, which COCO evaluation reads as 'unmatched'")
    if repeated:
        problems.append(f"the file repeats {len(repeated)} of its ids, e.g. {repeated[0]}, which mmdet refuses "
                        f"and COCO evaluation reads as one box")
    if without:
        problems.append(f"{without} of {len(entries)} annotations have no id")
    if others:
        problems.append(f"{len(others)} of {len(ids)} ids are not positive integers, e.g. {json.dumps(others[0])}")
    return problems


def renumber_annotation_ids(data: dict) -> dict:
    """A copy of the COCO dict ``data`` whose annotations are numbered 1..N in file order; everything
    else is as it was (``data`` itself is not changed)."""
    annotations, number = [], 0
    for annotation in data["annotations"]:
        if isinstance(annotation, dict):
            number += 1
            annotation = {**annotation, "id": number}
        annotations.append(annotation)
    return {**data, "annotations": annotations}


def with_usable_annotation_ids(data: dict) -> dict:
    """``data`` itself where COCO evaluation can use its annotation ids (or it has no annotation list),
    else its renumbered copy."""
    if not isinstance(data.get("annotations"), list) or not annotation_id_problems(data["annotations"]):
        return data
    return renumber_annotation_ids(data)


def _has_area(annotation: dict) -> bool:
    area = annotation.get("area")
    return isinstance(area, (int, float)) and not isinstance(area, bool) and math.isfinite(area)


def boxes_without_area(annotations: list) -> int:
    """How many annotations lack a numeric ``area``, which COCO evaluation reads (KeyError: 'area')."""
    return sum(isinstance(annotation, dict) and not _has_area(annotation) for annotation in annotations)


def with_areas(data: dict) -> dict:
    """``data`` with each annotation that has no numeric ``area`` given its box's width x height (what
    the COCO evaluation compares with its area ranges; a segmentation's own area is not computed)."""
    annotations = []
    for annotation in data["annotations"]:
        if isinstance(annotation, dict) and not _has_area(annotation):
            box = annotation.get("bbox")
            if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
                annotation = {**annotation, "area": float(box[2]) * float(box[3])}
        annotations.append(annotation)
    return {**data, "annotations": annotations}


@dataclass(frozen=True)
class AnnotationFileSummary:
    """What recognising a dataset needs of one annotation file, read once."""

    categories: list[dict]
    file_names: list[str]  # of its images, in file order
    # None for a file above the full-parse limit: its annotations are not read.
    boxes_per_category: Counter | None
    id_problems: tuple[str, ...] | None  # annotation_id_problems; None: not checked
    without_area: int = 0  # boxes_without_area


def summarise_annotations(data: dict) -> AnnotationFileSummary:
    """The summary of an annotation file already parsed (``load_annotation_file``)."""
    return AnnotationFileSummary(data["categories"], image_file_names(data["images"]), boxes_per_category(data),
                                 tuple(annotation_id_problems(data["annotations"])),
                                 boxes_without_area(data["annotations"]))


def summarise_annotation_file(path: str | Path) -> AnnotationFileSummary:
    """The categories and image file names of an annotation file, and (unless it is too large to
    parse in full) its boxes per category and what is wrong with its annotation ids."""
    path = Path(path)
    if path.stat().st_size > _FULL_PARSE_LIMIT_BYTES:
        return AnnotationFileSummary(read_categories(path), read_image_file_names(path), None, None)
    return summarise_annotations(load_annotation_file(path))


def write_corrected_copy(source: Path, target: Path, renamed_images: dict | None = None,
                         renumber_ids: bool = False, data: dict | None = None) -> None:
    """A copy of the annotation file ``source`` at ``target``: each image ``file_name`` that
    ``renamed_images`` maps replaced by the path it maps to (data/image_lookup.py found it there),
    each box without an ``area`` given one and, with ``renumber_ids``, the annotations numbered 1..N
    in file order; everything else as it is. ``data``: the file, if already parsed (not changed)."""
    data = data if data is not None else load_annotation_file(source)
    # The images are changed below: copies of them, so that ``data`` stays as it was.
    data = with_areas({**data, "images": [dict(image) if isinstance(image, dict) else image
                                          for image in data["images"]]})
    for image in data["images"]:
        if isinstance(image, dict) and image.get("file_name") in (renamed_images or {}):
            image["file_name"] = renamed_images[image["file_name"]]
    write_json_atomically(target, renumber_annotation_ids(data) if renumber_ids else data, indent=None)
