"""Reading COCO-format annotation files, with errors that name the file and the fix."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pisa_train.errors import DataError

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
