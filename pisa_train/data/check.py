"""Validate a COCO-format dataset folder and summarise it as a table.

``check_dataset`` collects every problem it finds (not only the first), each
with its file and the fix. Errors are what would break or silently corrupt
training; warnings are worth knowing but legitimate (background images,
classes not annotated yet).
"""
from __future__ import annotations

import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pisa_train import terminal
from pisa_train.data.coco_annotations import (
    annotation_id_problems,
    boxes_without_area,
    image_file_names,
    load_annotation_file,
    synthetic_root_categories,
)
from pisa_train.data.image_lookup import ImageLocation, describe_ignored, describe_locations
from pisa_train.data.layout import (
    SPLITS,
    DatasetLayout,
    FolderLayout,
    find_layout,
    ignored_beside,
    layout_name,
    locate_split_images,
    resolve_dataset,
)
from pisa_train.errors import DataError
from pisa_train.terminal import ProgressReporter

ERROR = "error"
WARNING = "warning"
# Exporters round coordinates; a box that overhangs by less than a pixel is not a mistake.
_BOX_TOLERANCE_PX = 1.0
_EXAMPLES_IN_WARNING = 3
# How far check opens each image: not at all (--quick: the file is there and not empty), its header (size,
# EXIF orientation: what --data reads before training) or in full (Pillow's verify).
NOT_OPENED, HEADER, VERIFIED = "not opened", "header", "verified"
# EXIF orientations that turn the image by 90 degrees: the decoded image's width is the stored height.
_TURNED = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Problem:
    severity: str  # ERROR or WARNING
    kind: str  # groups similar problems in the report, e.g. "missing-image"
    file: str
    message: str  # what is wrong and how to fix it


@dataclass
class SplitReport:
    split: str
    ann_file: str
    images: int = 0
    boxes: int = 0
    boxes_per_class: Counter = field(default_factory=Counter)


@dataclass
class DatasetReport:
    data_root: Path
    kind: str
    classes: list[str] = field(default_factory=list)
    root_categories: list[str] = field(default_factory=list)
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # where the images are, what is ignored
    # Per split, the parsed annotation file, so that --data reads each file once (resolve_checked_dataset).
    annotations: dict[str, dict] = field(default_factory=dict, repr=False)
    image_locations: dict[str, ImageLocation] = field(default_factory=dict, repr=False)  # per split

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == WARNING]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pixel_limit() -> int:
    """The most pixels an image may have: what Pillow refuses as a decompression bomb (twice its
    MAX_IMAGE_PIXELS). mmcv's decoders have no limit, so training would take it (a 20000x20000 JPEG
    takes 2.9 GB); check and --data refuse it alike."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS


def _open_image(path: Path, verify: bool) -> tuple[tuple[int, int], int]:
    """The stored size of the image and its EXIF orientation (1 when it has none)."""
    from PIL import Image  # only `check` needs Pillow

    with Image.open(path) as image:
        size = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if image.format in ("JPEG", "TIFF", "WEBP",
                                                                                      "PNG", "MPO") else 1
        if verify:
            image.verify()
    return size, orientation if isinstance(orientation, int) else 1


def resolves_outside(data_root: Path, path: Path) -> Path | None:
    """Where ``path`` resolves (links followed) when that is outside ``data_root``, else None. An absolute
    file_name, one that climbs out with ../, or a link inside the dataset that points out would bring a
    file from elsewhere into training, the plots and the report page that people send around."""
    real = Path(os.path.realpath(path))
    return None if real.is_relative_to(Path(os.path.realpath(data_root))) else real


def _image_problem(path: Path, shown: str, image: dict, ann: str, opened: str) -> Problem | None:
    """What is wrong with one image file: empty, undecodable, over the pixel limit, or of another size
    than the annotation file says (compared as the loader decodes it: after its EXIF orientation)."""
    from PIL import Image

    fix = f"replace the file or remove its entry from {ann}"
    try:
        if path.stat().st_size == 0:
            return Problem(ERROR, "unreadable-image", ann, f"image {shown} is empty (0 bytes); {fix}")
    except OSError as error:
        return Problem(ERROR, "unreadable-image", ann, f"image {shown} cannot be read ({error.strerror}); {fix}")
    expected = (image.get("width"), image.get("height"))
    limit = pixel_limit()
    too_large = (f"image {shown} is over the decoder's limit of {limit} pixels (a decompression bomb, or a "
                 f"photo far larger than training needs); downscale it and its boxes, or remove its entry "
                 f"from {ann}")
    if opened == NOT_OPENED:
        if all(map(_is_number, expected)) and expected[0] * expected[1] > limit:
            return Problem(ERROR, "too-large-image", ann, too_large)
        return None
    try:
        stored, orientation = _open_image(path, verify=opened == VERIFIED)
    except Image.DecompressionBombError:
        return Problem(ERROR, "too-large-image", ann, too_large)
    except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
        return Problem(ERROR, "unreadable-image", ann, f"image {shown} cannot be read "
                                                      f"({type(error).__name__}: {error}); {fix}")
    if stored[0] * stored[1] > limit:
        return Problem(ERROR, "too-large-image", ann, too_large)
    decoded = (stored[1], stored[0]) if orientation in _TURNED else stored
    if expected == decoded:
        return None
    if expected == stored:
        return Problem(ERROR, "exif-orientation", ann,
                       f"image {shown} is stored {stored[0]}x{stored[1]} with EXIF orientation {orientation}, "
                       f"which the loader applies ({decoded[0]}x{decoded[1]}), but {ann} gives it as "
                       f"{stored[0]}x{stored[1]}: its boxes are in the stored orientation and would land beside "
                       f"the objects; remove the orientation tag (exiftool -Orientation= -n FILE) or annotate "
                       f"the image as it is displayed")
    return Problem(WARNING, "size-mismatch", ann,
                   f"image {shown} is {decoded[0]}x{decoded[1]} as the loader decodes it but {ann} says "
                   f"{expected[0]}x{expected[1]}; boxes may be off, export again")


def _check_split(layout: FolderLayout, split: str, data: dict, location: ImageLocation, report: DatasetReport,
                 split_report: SplitReport, opened: str, progress: bool, output: TextIO) -> None:
    files = layout.splits[split]
    ann = files.ann_file
    unresolved = set(location.unresolved)  # reported once, grouped (check_dataset)
    problems = report.problems
    category_names = {category["id"]: category["name"] for category in data["categories"]}

    images: dict[object, dict] = {}
    reporter = ProgressReporter(f"checking {split} images", len(data["images"]), unit="images",
                                stream=output) if progress else None
    for index, image in enumerate(data["images"], start=1):
        if reporter:
            reporter.update(index)
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            problems.append(Problem(ERROR, "malformed-image-entry", ann,
                                    f"images[{index - 1}] has no 'id' or 'file_name'; fix or remove the entry"))
            continue
        if image["id"] in images:
            problems.append(Problem(ERROR, "duplicate-image-id", ann,
                                    f"images {images[image['id']]['file_name']} and {image['file_name']} share the "
                                    f"id {image['id']!r}: the loader would give one of them the boxes of both and "
                                    f"drop the other; give each image its own id (export again)"))
            continue
        images[image["id"]] = image
        if image["file_name"] in unresolved:
            continue
        found = location.renamed.get(image["file_name"], image["file_name"])
        outside = resolves_outside(layout.data_root, layout.data_root / location.folder / found)
        if outside is not None:
            problems.append(Problem(ERROR, "image-outside-dataset", ann,
                                    f"image entry {image['file_name']!r} resolves to {outside}, outside the dataset "
                                    f"{layout.data_root}; copy the image into the dataset and name it by its path "
                                    f"there"))
            continue
        problem = _image_problem(layout.data_root / location.folder / found, f"{location.folder}{found}", image,
                                 ann, opened)
        if problem is not None:
            problems.append(problem)
    if reporter:
        reporter.finish()
    split_report.images = len(images)

    images_with_boxes: set = set()
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotation {annotation.get('id', index) if isinstance(annotation, dict) else index}"
        if not isinstance(annotation, dict):
            problems.append(Problem(ERROR, "malformed-box", ann, f"{where} is not an object; remove it"))
            continue
        image = images.get(annotation.get("image_id"))
        if image is None:
            problems.append(Problem(ERROR, "unknown-image", ann, f"{where} refers to image_id "
                                    f"{annotation.get('image_id')!r}, which is not in 'images'; remove it"))
            continue
        name = category_names.get(annotation.get("category_id"))
        if name is None:
            problems.append(Problem(ERROR, "unknown-category", ann, f"{where} (image {image['file_name']}) has "
                                    f"category_id {annotation.get('category_id')!r}, which is not in "
                                    f"'categories'; fix its category"))
            continue
        box = annotation.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(map(_is_number, box))):
            problems.append(Problem(ERROR, "malformed-box", ann, f"{where} (image {image['file_name']}) has bbox "
                                    f"{box!r}, not [x, y, width, height]; fix or remove it"))
            continue
        x, y, width, height = box
        if width <= 0 or height <= 0:
            problems.append(Problem(ERROR, "empty-box", ann, f"{where} (image {image['file_name']}) has a box of "
                                    f"zero or negative size ({width}x{height}); remove it or redraw it"))
            continue
        image_width, image_height = image.get("width"), image.get("height")
        if _is_number(image_width) and _is_number(image_height) and (
                x < -_BOX_TOLERANCE_PX or y < -_BOX_TOLERANCE_PX
                or x + width > image_width + _BOX_TOLERANCE_PX or y + height > image_height + _BOX_TOLERANCE_PX):
            problems.append(Problem(ERROR, "box-outside", ann, f"{where} (image {image['file_name']}) box "
                                    f"[{x}, {y}, {width}, {height}] lies outside the {image_width}x{image_height} "
                                    f"image; clip or redraw it"))
            continue
        split_report.boxes += 1
        split_report.boxes_per_class[name] += 1
        images_with_boxes.add(image["id"])

    empty = [image["file_name"] for image_id, image in images.items() if image_id not in images_with_boxes]
    if empty:
        examples = ", ".join(empty[:_EXAMPLES_IN_WARNING]) + (", ..." if len(empty) > _EXAMPLES_IN_WARNING else "")
        problems.append(Problem(WARNING, "images-without-boxes", ann,
                                f"{len(empty)} of {len(images)} images have no boxes ({examples}): trained on as "
                                f"background images; annotate them if they should have boxes"))
    id_problems = annotation_id_problems(data["annotations"])
    if id_problems:
        report.notes.append(f"{ann}: the run reads a copy whose annotation ids are renumbered from 1 "
                            f"({'; '.join(id_problems)})")
    without_area = boxes_without_area(data["annotations"])
    if without_area:
        report.notes.append(f"{ann}: {without_area} boxes have no 'area'; the run reads a copy that gives each "
                            f"box its width x height")


def check_dataset(path: str | Path, *, open_images: bool | str = True, progress: bool = False,
                  output: TextIO | None = None) -> DatasetReport:
    """Check the dataset at ``path``; DataError only if no layout is recognised at all.
    ``open_images``: True (VERIFIED), HEADER, or False (NOT_OPENED)."""
    opened = VERIFIED if open_images is True else NOT_OPENED if open_images is False else open_images
    output = output if output is not None else sys.stdout
    layout = find_layout(path)
    report = DatasetReport(layout.data_root, layout.kind)
    loaded: dict[str, dict] = {}
    for split, files in layout.splits.items():
        try:
            loaded[split] = load_annotation_file(layout.data_root / files.ann_file)
        except DataError as error:
            report.problems.append(Problem(ERROR, "not-coco", files.ann_file, str(error)))
            continue
        split_report = SplitReport(split, files.ann_file)
        report.splits.append(split_report)
        if not (layout.data_root / files.img_prefix).is_dir():
            report.problems.append(Problem(ERROR, "missing-image-folder", files.ann_file,
                                           f"image folder {files.img_prefix} not found; restore it"))
    file_names = {split: image_file_names(data["images"]) for split, data in loaded.items()}
    locations = locate_split_images(FolderLayout(layout.data_root, layout.kind,
                                                 {split: layout.splits[split] for split in loaded}), file_names)
    report.notes = describe_locations(locations) + [line for line in [describe_ignored(
        ignored_beside(layout, locations))] if line]
    for split_report in report.splits:
        split, location = split_report.split, locations[split_report.split]
        if location.unresolved:
            report.problems.append(Problem(ERROR, "missing-image", split_report.ann_file,
                                           location.missing_message(split_report.ann_file, name_the_file=False)))
        _check_split(layout, split, loaded[split], location, report, split_report, opened, progress, output)

    report.annotations, report.image_locations = loaded, locations
    if not loaded:
        return report
    first_split, first = next(iter(loaded.items()))
    categories = first["categories"]
    signature = [(category.get("id"), category.get("name")) for category in categories]
    for split, data in loaded.items():
        other = [(category.get("id"), category.get("name")) for category in data["categories"]]
        if other != signature:
            missing = [name for _, name in signature if name not in {n for _, n in other}]
            extra = [name for _, name in other if name not in {n for _, n in signature}]
            detail = (f"missing {missing}, extra {extra}" if missing or extra else "same names, other ids or order")
            report.problems.append(Problem(
                ERROR, "category-mismatch", layout.splits[split].ann_file,
                f"categories differ from {layout.splits[first_split].ann_file} ({detail}); "
                f"export all splits together so they share one category list"))
    for name, count in Counter(category.get("name") for category in categories).items():
        if count > 1:
            report.problems.append(Problem(
                ERROR, "duplicate-class", layout.splits[first_split].ann_file,
                f"class name {name!r} is used by {count} categories; merge or rename them"))

    total_boxes: Counter = Counter()
    for data in loaded.values():
        total_boxes.update(annotation.get("category_id") for annotation in data["annotations"]
                           if isinstance(annotation, dict))
    report.root_categories = synthetic_root_categories(categories, total_boxes)
    report.classes = [category["name"] for category in categories if category["name"] not in report.root_categories]
    boxes_by_name = sum((split_report.boxes_per_class for split_report in report.splits), Counter())
    for name in report.classes:
        if boxes_by_name[name] == 0:
            report.problems.append(Problem(
                WARNING, "class-without-boxes", layout.splits[first_split].ann_file,
                f"class {name!r} has no boxes in any split; the model will never learn it, annotate it "
                f"or remove the category"))
    order = {split: index for index, split in enumerate(SPLITS)}
    report.splits.sort(key=lambda split_report: order[split_report.split])
    return report


def _table(rows: list[list[str]], right_aligned_from: int) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.rjust(widths[i]) if i >= right_aligned_from else cell.ljust(widths[i])
                      for i, cell in enumerate(row)).rstrip() for row in rows]


def render_report(report: DatasetReport, max_per_group: int = 10) -> str:
    """The report as plain text: split table, class table, problems, verdict."""
    lines = [f"dataset {report.data_root} ({layout_name(report.kind, [s.split for s in report.splits])})",
             *report.notes, ""]
    rows = [["split", "annotation file", "images", "boxes"]]
    rows += [[s.split, s.ann_file, str(s.images), str(s.boxes)] for s in report.splits]
    lines += _table(rows, right_aligned_from=2)
    if report.classes:
        lines.append("")
        rows = [["class"] + [s.split for s in report.splits] + ["total"]]
        for name in report.classes:
            counts = [s.boxes_per_class[name] for s in report.splits]
            rows.append([terminal.shown(name)] + [str(count) for count in counts] + [str(sum(counts))])  # aligned
        lines += _table(rows, right_aligned_from=1)
    if report.root_categories:
        lines.append(f"(not a class: {', '.join(report.root_categories)}: the export's root category, "
                     f"with no boxes)")
    for title, problems in (("errors", report.errors), ("warnings", report.warnings)):
        if not problems:
            continue
        lines += ["", f"{title} ({len(problems)}):"]
        shown: Counter = Counter()
        hidden: Counter = Counter()
        for problem in problems:
            group = (problem.kind, problem.file)
            if shown[group] < max_per_group:
                shown[group] += 1
                lines.append(f"  {problem.file}: {problem.message}")
            else:
                hidden[group] += 1
        for (kind, file), count in hidden.items():
            lines.append(f"  {file}: ... and {count} more {kind} problems like those above")
    lines += ["", f"{len(report.errors)} errors, {len(report.warnings)} warnings"]
    return "\n".join(lines)


def resolve_checked_dataset(path: str | Path) -> tuple[DatasetLayout, dict[str, dict]]:
    """``--data DIR``: the dataset, refused in one line where ``pisa-data check`` finds an error (the same
    rules, with each image's header read rather than its whole file), and its annotation files per split,
    each read once."""
    report = check_dataset(path, open_images=HEADER)
    layout = resolve_dataset(path, report.annotations)  # its own lines for what it refuses itself
    if report.errors:
        first = report.errors[0]
        more = f" (and {len(report.errors) - 1} more errors)" if len(report.errors) > 1 else ""
        raise DataError(f"{first.file}: {first.message}{more}; `pisa-data check {path}` lists every problem")
    return layout, report.annotations
