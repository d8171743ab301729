"""Recognise a COCO-format dataset folder and point a config at it.

Three layouts are recognised:

* Roboflow export: ``train/``, ``valid/``, ``test/``, each holding its images
  and ``_annotations.coco.json``;
* COCO 2017: ``annotations/instances_{train,val}2017.json`` with ``train2017/``
  and ``val2017/`` (also ``annotations/train.json`` with ``train/``, and so on);
* annotation ``.json`` files (split named in the file name, or a single file
  for training) beside an ``images/`` folder.

``resolve_dataset(path)`` returns a ``DatasetLayout`` (config/dataset_folder.py
points a config at it). Classes follow the annotation file's category order, as
mmdet's CocoDataset numbers them, without the synthetic root category that
Roboflow prepends. Each split's images are looked for where exports put them
(data/image_lookup.py: an ``images/`` subfolder of the split, file names whose
folders are not on disk, another case); a split whose images are not all found
is refused, and what else lies beside the dataset is named in one line. A split
whose annotation ids COCO evaluation cannot use (0, as Roboflow numbers them,
duplicates, none: data/coco_annotations.py) is noted with the reason, so that
the run reads a renumbered copy. Each annotation file is parsed once (those
above the full-parse limit not at all, and their ids are not checked).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pisa_train.data.coco_annotations import (AnnotationFileSummary, boxes_per_category, load_annotation_file,
                                              read_image_file_names, summarise_annotation_file,
                                              synthetic_root_categories)
from pisa_train.data.image_lookup import (ImageLocation, describe_ignored, describe_locations, ignored_entries,
                                          locate_images)
from pisa_train.data.synthetic_shapes import MANIFEST
from pisa_train.errors import DataError

SPLITS = ("train", "val", "test")
ROBOFLOW_ANNOTATIONS = "_annotations.coco.json"
_ROBOFLOW_FOLDERS = (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test"))
_COCO_STYLE_ANNOTATION = re.compile(r"^instances_(train|val|test)(\w*)\.json$")
_SPLIT_WORDS = (("train", "train"), ("val", "val"), ("test", "test"))
_EXPECTED_LAYOUTS = ("train/_annotations.coco.json (Roboflow; the images beside it or in train/images/), "
                     "annotations/instances_train2017.json with train2017/ (COCO 2017) or annotations/train.json "
                     "with train/, or an annotation .json beside an images/ folder")


@dataclass(frozen=True)
class SplitFiles:
    """Where one split's files are, relative to the dataset's ``data_root``."""

    ann_file: str
    img_prefix: str  # ends with "/"


@dataclass(frozen=True)
class FolderLayout:
    """What the folder's file names say, before any annotation file is read."""

    data_root: Path
    kind: str  # "roboflow", "coco2017" or "images-folder"
    splits: dict[str, SplitFiles]


@dataclass(frozen=True)
class DatasetLayout:
    """A recognised dataset: its files per split and its classes."""

    data_root: Path
    kind: str
    splits: dict[str, SplitFiles]
    classes: tuple[str, ...]
    category_ids: tuple[int, ...]
    dropped_categories: tuple[str, ...] = field(default=())
    # Per split, file_name -> the image's path under img_prefix, where the two differ (data/image_lookup.py).
    renamed_images: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default=())  # where the images are, what is ignored: one line each
    # Per split whose annotation ids COCO evaluation cannot use as they are, why (coco_annotations.py).
    ids_to_renumber: dict[str, str] = field(default_factory=dict)


def _roboflow(folder: Path) -> dict[str, SplitFiles]:
    splits: dict[str, SplitFiles] = {}
    for subfolder, split in _ROBOFLOW_FOLDERS:
        if split not in splits and (folder / subfolder / ROBOFLOW_ANNOTATIONS).is_file():
            splits[split] = SplitFiles(f"{subfolder}/{ROBOFLOW_ANNOTATIONS}", f"{subfolder}/")
    return splits


def _coco_style(folder: Path) -> dict[str, SplitFiles]:
    annotations = folder / "annotations"
    if not annotations.is_dir():
        return {}
    found: dict[str, list[SplitFiles]] = {}
    for path in sorted(annotations.glob("*.json")):
        match = _COCO_STYLE_ANNOTATION.match(path.name)
        if match:  # instances_train2017.json -> train2017/
            split, suffix = match.groups()
            found.setdefault(split, []).append(SplitFiles(f"annotations/{path.name}", f"{split}{suffix}/"))
            continue
        # annotations/train.json with train/ (mmdet tutorials, our demo dataset);
        # captions_*.json and the like have no folder of their name and are skipped.
        split = next((split for word, split in _SPLIT_WORDS if word in path.stem.lower()), None)
        if split is not None and (folder / path.stem).is_dir():
            found.setdefault(split, []).append(SplitFiles(f"annotations/{path.name}", f"{path.stem}/"))
    for split, candidates in found.items():
        if len(candidates) > 1:
            names = ", ".join(candidate.ann_file for candidate in candidates)
            raise DataError(f"{folder} has several {split} annotation files ({names}); keep one of them "
                            f"in annotations/ or move the others away")
    return {split: candidates[0] for split, candidates in found.items()}


def _images_folder(folder: Path) -> dict[str, SplitFiles]:
    if not (folder / "images").is_dir():
        return {}
    def visible_json(directory: Path) -> list[Path]:
        return sorted(path for path in directory.glob("*.json") if not path.name.startswith("."))

    json_files = visible_json(folder) or visible_json(folder / "annotations")
    if not json_files:
        return {}
    splits: dict[str, SplitFiles] = {}
    unmatched = []
    for path in json_files:
        relative = path.relative_to(folder).as_posix()
        split = next((split for word, split in _SPLIT_WORDS if word in path.stem.lower()), None)
        if split is None:
            unmatched.append(relative)
        elif split in splits:
            raise DataError(f"{folder} has several {split} annotation files ({splits[split].ann_file}, "
                            f"{relative}); keep one of them")
        else:
            splits[split] = SplitFiles(relative, "images/")
    if len(json_files) == 1 and unmatched:
        return {"train": SplitFiles(unmatched[0], "images/")}
    if unmatched and not splits:
        raise DataError(f"{folder} has annotation files {', '.join(unmatched)} beside images/ but their names "
                        f"do not say which is train, val or test; rename them (e.g. train.json, val.json)")
    return splits


def find_layout(path: str | Path) -> FolderLayout:
    """Recognise the folder's layout from file names alone; DataError if none fits."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} not found; download one with "
                        f"`pisa-data download coco2017 --dest {folder}` or `pisa-data download URL --dest {folder}`")
    for kind, detect in (("roboflow", _roboflow), ("coco2017", _coco_style), ("images-folder", _images_folder)):
        splits = detect(folder)
        if splits:
            return FolderLayout(folder.resolve(), kind, dict(sorted(splits.items(), key=lambda s: SPLITS.index(s[0]))))
    # Archives often wrap everything in one folder named after the dataset.
    subfolders = [child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")]
    if len(subfolders) == 1:
        try:
            return find_layout(subfolders[0])
        except NoLayoutRecognised:
            pass  # said below, of the folder the user named
    raise NoLayoutRecognised(f"no COCO-format dataset recognised in {folder}: expected {_EXPECTED_LAYOUTS}")


class NoLayoutRecognised(DataError):
    """No layout's file names are in the folder (as against a layout found with something wrong in it,
    whose own message says what)."""


def resolve_dataset(path: str | Path) -> DatasetLayout:
    """Recognise the dataset at ``path`` and read its classes."""
    layout = find_layout(path)
    for split, files in layout.splits.items():
        if not (layout.data_root / files.img_prefix).is_dir():
            raise DataError(f"image folder {layout.data_root / files.img_prefix} for the {split} split "
                            f"({files.ann_file}) not found; restore it or download the dataset again")
    summaries = {split: summarise_annotation_file(layout.data_root / files.ann_file)
                 for split, files in layout.splits.items()}
    categories = {split: summary.categories for split, summary in summaries.items()}
    first_split, first = next(iter(categories.items()))
    signature = [(category["id"], category["name"]) for category in first]
    for split, others in categories.items():
        if [(category["id"], category["name"]) for category in others] != signature:
            raise DataError(f"the categories of {layout.splits[split].ann_file} differ from those of "
                            f"{layout.splits[first_split].ann_file}; export all splits together "
                            f"(`pisa-data check {path}` shows the difference)")
    duplicates = sorted(name for name, count in Counter(category["name"] for category in first).items() if count > 1)
    if duplicates:
        raise DataError(f"class names {', '.join(repr(name) for name in duplicates)} appear more than once in "
                        f"{layout.splits[first_split].ann_file}; merge or rename the duplicate categories")
    dropped = _dropped_root_categories(layout, first, summaries)
    kept = [category for category in first if category["name"] not in dropped]
    if not kept:
        raise DataError(f"{layout.data_root / layout.splits[first_split].ann_file} defines no classes with boxes "
                        f"besides its root category; add classes to the dataset and export it again")
    locations = locate_split_images(layout, {split: summary.file_names for split, summary in summaries.items()})
    for split, location in locations.items():
        if location.unresolved:
            raise DataError(f"{location.missing_message(layout.splits[split].ann_file)} (`pisa-data check {path}` "
                            f"lists every problem)")
    splits = {split: SplitFiles(files.ann_file, locations[split].folder) for split, files in layout.splits.items()}
    notes = describe_locations(locations) + [describe_ignored(ignored_beside(layout, locations))]
    return DatasetLayout(layout.data_root, layout.kind, splits,
                         tuple(category["name"] for category in kept),
                         tuple(category["id"] for category in kept), tuple(dropped),
                         {split: location.renamed for split, location in locations.items() if location.renamed},
                         tuple(note for note in notes if note),
                         {split: "; ".join(summary.id_problems) for split, summary in summaries.items()
                          if summary.id_problems})


def locate_split_images(layout: FolderLayout, file_names: dict[str, list[str]] | None = None,
                        ) -> dict[str, ImageLocation]:
    """Where each split's images are (data/image_lookup.py); ``file_names``: per split, if already read."""
    return {split: locate_images(layout.data_root, files.img_prefix,
                                 file_names[split] if file_names and split in file_names
                                 else read_image_file_names(layout.data_root / files.ann_file))
            for split, files in layout.splits.items()}


def ignored_beside(layout: FolderLayout, locations: dict[str, ImageLocation]) -> list[str]:
    """What lies beside the dataset and is not part of it (README files, YOLO labels/, ...)."""
    return ignored_entries(layout.data_root, [files.ann_file for files in layout.splits.values()],
                           [location.folder for location in locations.values()], own_files=(MANIFEST,))


def _dropped_root_categories(layout: FolderLayout, categories: list[dict],
                             summaries: dict[str, AnnotationFileSummary]) -> list[str]:
    candidates = synthetic_root_categories(categories, Counter())
    if not candidates:
        return []  # no need to read the (possibly huge) annotation lists
    box_counts: Counter = Counter()
    for split, files in layout.splits.items():
        counted = summaries[split].boxes_per_category
        box_counts.update(counted if counted is not None
                          else boxes_per_category(load_annotation_file(layout.data_root / files.ann_file)))
    return synthetic_root_categories(categories, box_counts)


LAYOUT_NAMES = {"roboflow": "Roboflow export", "coco2017": "COCO-style annotations/ folder",
                "images-folder": "annotations beside images/"}


def describe_dataset(layout: DatasetLayout) -> str:
    """The resolved dataset settings, for the log."""
    lines = [f"dataset: {layout.data_root} ({LAYOUT_NAMES.get(layout.kind, layout.kind)})",
             f"  classes ({len(layout.classes)}): {', '.join(layout.classes)}"]
    if layout.dropped_categories:
        lines.append(f"  not a class: {', '.join(layout.dropped_categories)} (the export's root category: "
                     f"supercategory of the others, with no boxes)")
    for split in SPLITS:
        files = layout.splits.get(split)
        lines.append(f"  {split + ':':6} " + (f"ann_file={files.ann_file} images={files.img_prefix}"
                                               if files else "none"))
    lines += [f"  {note}" for note in layout.notes]
    return "\n".join(lines)
