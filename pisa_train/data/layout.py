"""Recognise a dataset folder by what is in it, and point a config at it.

These layouts are recognised (docs/data.md has the table):

* Roboflow export: ``train/``, ``valid/`` or ``val/``, ``test/``, each holding its images
  and ``_annotations.coco.json``;
* COCO style: ``annotations/instances_{train,val}2017.json`` with ``train2017/`` and ``val2017/``,
  ``annotations/instances_<split>.json`` or ``annotations/<split>.json`` with ``<split>/`` or
  ``images/<split>/``;
* annotation ``.json`` files (split named in the file name, or a single file for training) beside an
  ``images/`` folder, among them CVAT's "COCO 1.0" export (``annotations/instances_default.json``) and
  Label Studio's (``result.json``, whose file_names say ``images/...``);
* a folder that `pisa-data split` or `pisa-data convert` wrote (MADE_BY names the dataset it was made
  from, which holds the images).

Pascal VOC and YOLO folders are named as such, with the `pisa-data convert` command. The one line that
says what was recognised names the layout in the tool's words (``layout_name``).

``resolve_dataset(path)`` returns a ``DatasetLayout`` (config/dataset_folder.py
points a config at it). Classes follow the annotation file's category order, as
mmdet's CocoDataset numbers them, without the synthetic root category that
Roboflow prepends. Each split's images are looked for where exports put them
(data/image_lookup.py: an ``images/`` subfolder of the split, file names whose
folders are not on disk, another case); a split whose images are not all found
is refused, and what else lies beside the dataset is named in one line. A split
whose annotation ids COCO evaluation cannot use (0, as Roboflow numbers them,
duplicates, none: data/coco_annotations.py), or whose boxes lack an area, is noted,
so that the run reads a corrected copy. The annotation files already parsed (by
data/check.py, for --data) are taken as they are; otherwise each is parsed once
(those above the full-parse limit not at all, and their ids are not checked).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pisa_train.data.coco_annotations import (
    AnnotationFileSummary,
    boxes_per_category,
    load_annotation_file,
    read_image_file_names,
    summarise_annotation_file,
    summarise_annotations,
    synthetic_root_categories,
)
from pisa_train.data.image_lookup import (
    ImageLocation,
    describe_ignored,
    describe_locations,
    ignored_entries,
    locate_images,
)
from pisa_train.data.synthetic_shapes import MANIFEST
from pisa_train.errors import DataError
from pisa_train.terminal import shown

SPLITS = ("train", "val", "test")
# What `pisa-data split` and `pisa-data convert` write beside their annotation files: the dataset they
# were made from (its images are read there) and the file of each split.
MADE_BY = "pisa-data.json"
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
    # Per split with boxes that have no 'area', how many (the corrected copy computes it).
    areas_to_compute: dict[str, int] = field(default_factory=dict)


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
        if match:  # instances_train2017.json -> train2017/ (or images/train2017/, as in many re-packs)
            split, suffix = match.groups()
            found.setdefault(split, []).append(SplitFiles(f"annotations/{path.name}",
                                                          _split_image_folder(folder, f"{split}{suffix}")))
            continue
        split = next((split for word, split in _SPLIT_WORDS if word in path.stem.lower()), None)
        subset = path.stem[len("instances_"):] if path.stem.lower().startswith("instances_") else ""
        if split is not None and subset and (folder / "images" / subset).is_dir():
            # CVAT's "COCO 1.0" export of a task with subsets: instances_Train.json with images/Train/.
            found.setdefault(split, []).append(SplitFiles(f"annotations/{path.name}", f"images/{subset}/"))
            continue
        # annotations/train.json with train/ or images/train/ (mmdet tutorials, our demo dataset);
        # captions_*.json and the like have no folder of their name and are skipped.
        if split is not None and ((folder / path.stem).is_dir() or (folder / "images" / path.stem).is_dir()):
            found.setdefault(split, []).append(SplitFiles(f"annotations/{path.name}",
                                                          _split_image_folder(folder, path.stem)))
    for split, candidates in found.items():
        if len(candidates) > 1:
            names = ", ".join(candidate.ann_file for candidate in candidates)
            raise DataError(f"{folder} has several {split} annotation files ({names}); keep one of them "
                            f"in annotations/ or move the others away")
    return {split: candidates[0] for split, candidates in found.items()}


def _split_image_folder(folder: Path, name: str) -> str:
    """The folder of a split's images: ``name/``, else ``images/name/``, else ``images/`` where
    those are on disk (``name/`` where none is: the error names the folder the layout names)."""
    for candidate in (f"{name}/", f"images/{name}/", "images/"):
        if (folder / candidate).is_dir():
            return candidate
    return f"{name}/"


def _made_by_pisa_data(folder: Path) -> tuple[Path, dict[str, SplitFiles]] | None:
    """A folder that `pisa-data split` or `pisa-data convert` wrote: its annotation files name
    their images relative to the dataset they were made from (MADE_BY records it), which stays
    the data root, so that no image is copied and none lies outside the dataset."""
    record = folder / MADE_BY
    if not record.is_file():
        return None
    try:
        made = json.loads(record.read_text(encoding="utf-8"))
        source, files = Path(made["source"]), made["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{record} is not the record `pisa-data split` or `pisa-data convert` writes; "
                        f"make the folder again with that command") from None
    if not source.is_dir():
        raise DataError(f"{folder} was made from the dataset {source}, which is no longer there (its images "
                        f"are read from it); restore it, or make the folder again from where it is now")
    splits = {split: SplitFiles(str((folder / name).resolve()), "") for split, name in files.items()
              if split in SPLITS}
    return source.resolve(), splits


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
    made = _made_by_pisa_data(folder)
    if made is not None:
        return FolderLayout(made[0], "pisa-data", _in_order(made[1]))
    for kind, detect in (("roboflow", _roboflow), ("coco2017", _coco_style), ("images-folder", _images_folder)):
        splits = detect(folder)
        if splits:
            kind = _tool_kind(kind, splits)
            if kind == "label-studio":  # its file_names are relative to the export's top folder: images/...
                splits = {split: SplitFiles(files.ann_file, "") for split, files in splits.items()}
            return FolderLayout(folder.resolve(), kind, _in_order(splits))
    # Archives often wrap everything in one folder named after the dataset.
    subfolders = [child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")]
    if len(subfolders) == 1:
        try:
            return find_layout(subfolders[0])
        except NoLayoutRecognised:
            pass  # said below, of the folder the user named
    other_format = other_dataset_format(folder)
    if other_format is not None:
        raise NotCocoDataset(f"{folder} is a {other_format.description}, not COCO; convert it with "
                             f"`pisa-data convert {folder} --dest {folder.as_posix().rstrip('/')}-coco` "
                             f"and use that folder")
    raise NoLayoutRecognised(f"no COCO-format dataset recognised in {folder}: expected {_EXPECTED_LAYOUTS}")


def _in_order(splits: dict[str, SplitFiles]) -> dict[str, SplitFiles]:
    return dict(sorted(splits.items(), key=lambda item: SPLITS.index(item[0])))


def _tool_kind(kind: str, splits: dict[str, SplitFiles]) -> str:
    """The tool whose export this is, where its file names say so: CVAT's "COCO 1.0" export writes
    annotations/instances_default.json beside images/, Label Studio's COCO export result.json."""
    names = {PurePosixPath(files.ann_file).name for files in splits.values()}
    if kind == "images-folder" and names == {"instances_default.json"}:
        return "cvat"
    if kind == "images-folder" and names == {"result.json"}:
        return "label-studio"
    return kind


@dataclass(frozen=True)
class OtherFormat:
    """A dataset in a format `pisa-data convert` turns into COCO."""

    name: str  # "voc" or "yolo"
    description: str  # in the user's words


def other_dataset_format(folder: Path) -> OtherFormat | None:
    """Pascal VOC (Annotations/ with JPEGImages/) or YOLO (data.yaml, or labels/ beside images/),
    at the top of ``folder``; None for anything else."""
    if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
        return OtherFormat("voc", "Pascal VOC dataset (Annotations/*.xml, JPEGImages/)")
    if any((folder / name).is_file() for name in ("data.yaml", "data.yml")):
        return OtherFormat("yolo", "YOLO dataset (data.yaml, labels/*.txt)")
    if any(candidate.is_dir() for candidate in (folder / "labels", folder / "train" / "labels")):
        return OtherFormat("yolo", "YOLO dataset (labels/*.txt beside images/)")
    return None


class NotCocoDataset(DataError):
    """A dataset in a format that `pisa-data convert` turns into COCO."""


class NoLayoutRecognised(DataError):
    """No layout's file names are in the folder (as against a layout found with something wrong in it,
    whose own message says what)."""


def resolve_dataset(path: str | Path, annotations: dict[str, dict] | None = None) -> DatasetLayout:
    """Recognise the dataset at ``path`` and read its classes; ``annotations``: per split, its
    annotation file if already parsed (data/check.py), so that none is read twice."""
    layout = find_layout(path)
    for split, files in layout.splits.items():
        if not (layout.data_root / files.img_prefix).is_dir():
            raise DataError(f"image folder {layout.data_root / files.img_prefix} for the {split} split "
                            f"({files.ann_file}) not found; restore it or download the dataset again")
    summaries = {split: summarise_annotations(annotations[split]) if annotations and split in annotations
                 else summarise_annotation_file(layout.data_root / files.ann_file)
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
                          if summary.id_problems},
                         {split: summary.without_area for split, summary in summaries.items() if summary.without_area})


def locate_split_images(layout: FolderLayout, file_names: dict[str, list[str]] | None = None,
                        ) -> dict[str, ImageLocation]:
    """Where each split's images are (data/image_lookup.py); ``file_names``: per split, if already read."""
    return {split: locate_images(layout.data_root, files.img_prefix,
                                 file_names[split] if file_names and split in file_names
                                 else read_image_file_names(layout.data_root / files.ann_file))
            for split, files in layout.splits.items()}


def ignored_beside(layout: FolderLayout, locations: dict[str, ImageLocation]) -> list[str]:
    """What lies beside the dataset and is not part of it (README files, YOLO labels/, ...)."""
    if layout.kind == "pisa-data":
        return []  # the dataset it was made from holds what the record's annotation files left out
    # Label Studio's file_names name images/ themselves.
    named = ["images/"] if layout.kind == "label-studio" else []
    return ignored_entries(layout.data_root, [files.ann_file for files in layout.splits.values()],
                           [location.folder for location in locations.values()] + named, own_files=(MANIFEST,))


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
                "images-folder": "annotations beside images/", "cvat": "CVAT COCO 1.0 export",
                "label-studio": "Label Studio COCO export",
                "pisa-data": "images here, annotation files made by pisa-data split or convert"}


def layout_name(kind: str, splits) -> str:
    """The layout in the tool's words, and what it lacks ("CVAT COCO 1.0 export: one annotation file,
    no validation split")."""
    name = LAYOUT_NAMES.get(kind, kind)
    if list(splits) == ["train"]:
        return f"{name}: one annotation file, no validation split"
    return name


def describe_dataset(layout: DatasetLayout) -> str:
    """The resolved dataset settings, for the log: one line each, so the names in them are escaped
    (terminal.shown) here, where a newline in a class name would otherwise start a line of its own."""
    lines = [f"dataset: {layout.data_root} ({layout_name(layout.kind, layout.splits)})",
             f"  classes ({len(layout.classes)}): {', '.join(map(shown, layout.classes))}"]
    if layout.dropped_categories:
        lines.append(f"  not a class: {', '.join(map(shown, layout.dropped_categories))} (the export's root category: "
                     f"supercategory of the others, with no boxes)")
    for split in SPLITS:
        files = layout.splits.get(split)
        lines.append(f"  {split + ':':6} " + (f"ann_file={files.ann_file} images={files.img_prefix}"
                                               if files else "none"))
    lines += [f"  {note}" for note in layout.notes]
    return "\n".join(lines)
