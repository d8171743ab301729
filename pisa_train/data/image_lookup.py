"""Find the images an annotation file names where exports put them, and what else lies beside.

mmdet's CocoDataset reads each image at ``data_root/data_prefix.img/file_name``.
Exports do not always agree with that: re-packed Roboflow exports keep a split's
images in an ``images/`` subfolder (``train/images/``, YOLO ``labels/`` beside),
``file_name`` carries folders of the machine that made the export
(``export/imgs/a.jpg``), or differs in case (``A.JPG`` for ``a.jpg``).

``locate_images`` looks for a split's images in the folder the layout names, then
in its ``images/`` subfolder; in each, by the name as written, by the bare file name
(folders in ``file_name`` that are not on disk), and ignoring case. The first folder
that holds every image is the split's image folder. Images found under another name
than their ``file_name`` are listed (``renamed``), so that a corrected copy of the
annotation file can be written (``coco_annotations.write_corrected_copy``; config/dataset_folder.py
decides where). ``ignored_entries`` names the other files beside the dataset.
"""
from __future__ import annotations

import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pisa_train.files import IMAGE_EXTENSIONS

IMAGES_SUBFOLDER = "images/"
_EXAMPLES = 3
_LISTED = 8


def _normalised(file_name: str) -> list[str]:
    """The folders and name of a ``file_name`` (Windows separators too), without '.' and ''."""
    return [part for part in posixpath.normpath(file_name.replace("\\", "/")).split("/") if part not in ("", ".")]


class _Folder:
    """One folder's files, listed once per subfolder, looked up by name, bare name and case."""

    def __init__(self, root: Path):
        self.root = root
        self._listings: dict[str, tuple[dict[str, bool], dict[str, list[str]]]] = {}

    def _listing(self, relative: str) -> tuple[dict[str, bool], dict[str, list[str]]]:
        """{name: is a folder} and {lower-case name: names} of ``root/relative``."""
        if relative not in self._listings:
            entries: dict[str, bool] = {}
            try:
                with os.scandir(self.root / relative if relative else self.root) as scan:
                    for entry in scan:
                        entries[entry.name] = entry.is_dir()
            except OSError:
                pass
            lower: dict[str, list[str]] = defaultdict(list)
            for name in entries:
                lower[name.lower()].append(name)
            self._listings[relative] = (entries, lower)
        return self._listings[relative]

    def _exact(self, parts: list[str], any_case: bool) -> str | None:
        folder = ""
        for index, part in enumerate(parts):
            entries, lower = self._listing(folder)
            last = index == len(parts) - 1
            names = [part] if part in entries else lower.get(part.lower(), []) if any_case else []
            names = [name for name in names if entries[name] != last]  # folders on the way, a file at the end
            if len(names) != 1:
                return None  # not there, or ambiguous in case ('a.jpg' and 'A.jpg')
            folder = posixpath.join(folder, names[0])
        return folder

    def find(self, file_name: str) -> str | None:
        """The path under this folder of the image ``file_name`` names, or None."""
        entries, _ = self._listing("")
        if entries.get(file_name) is False:
            return file_name  # the usual case: a file of this folder, named as it is
        if os.path.isabs(file_name) and os.path.isfile(file_name):
            return file_name  # mmdet joins an absolute file_name as it is
        parts = _normalised(file_name)
        if not parts or ".." in parts:
            return file_name if (self.root / file_name).is_file() else None
        for candidate, any_case in ((parts, False), (parts[-1:], False), (parts, True), (parts[-1:], True)):
            found = self._exact(candidate, any_case)
            if found is not None:
                return found
        return None


@dataclass(frozen=True)
class ImageLocation:
    """Where one split's images are (or the best folder tried, with what it lacks)."""

    expected: str  # the folder the layout names (relative to data_root, ending in "/")
    folder: str  # the folder they are in: data_prefix.img
    total: int  # distinct file names in the annotation file
    renamed: dict = field(default_factory=dict)  # file_name -> its path under ``folder``, where they differ
    missing: tuple = ()  # file names found in none of ``looked_in``
    ambiguous: tuple = ()  # file names that find the same file as another (by bare name or case)
    looked_in: tuple = ()

    @property
    def unresolved(self) -> tuple:
        """The file names whose image is not known: missing or ambiguous."""
        return self.missing + self.ambiguous

    def note(self) -> str | None:
        """The one line that says where the images are; None where the layout says."""
        if self.folder == self.expected and not self.renamed:
            return None
        found_by: dict[str, list[str]] = defaultdict(list)
        for name, found in self.renamed.items():
            found_by[_how_found(name, found)].append(name)
        details = [f"{len(names)} of {self.total} found {how} (e.g. '{names[0]}' is {self.renamed[names[0]]})"
                   for how, names in found_by.items()]
        if self.folder == self.expected:
            return f"images of {self.expected}: " + "; ".join(details)
        return ", ".join([f"images of {self.expected} are in {self.folder}", *details])

    def missing_message(self, ann_file: str, name_the_file: bool = True) -> str:
        """One line for every image not found, grouped by the folder its file_name names
        (``name_the_file``: say which annotation file lists them, where nothing else does)."""
        groups: dict[str, list[str]] = defaultdict(list)
        for name in self.missing:
            groups[posixpath.dirname("/".join(_normalised(name)))].append(name)
        described = []
        for folder, names in sorted(groups.items(), key=lambda item: -len(item[1]))[:_LISTED]:
            where = f" named under {folder}/" if folder else " with no folder"
            described.append(f"{len(names)}{where} ({_examples(names)})" if len(groups) > 1 else _examples(names))
        if len(groups) > _LISTED:
            described.append(f"{len(groups) - _LISTED} more folders")
        looked = f"are in neither {' nor '.join(self.looked_in)}" if len(self.looked_in) > 1 \
            else f"are not in {self.looked_in[0]}"
        listed = f" listed in {ann_file}" if name_the_file else ""
        parts = [f"{len(self.missing)} of {self.total} images{listed} {looked} (looked for by name, by bare file "
                 f"name and in any case): {'; '.join(described)}"] if self.missing else []
        if self.ambiguous:
            parts.append(f"{len(self.ambiguous)} images{listed if not parts else ''} name the same file in "
                         f"{self.folder} as another by their bare file name or case ({_examples(self.ambiguous)})")
        return "; ".join(parts) + f"; restore them or remove their entries from {ann_file}"


def _examples(names) -> str:
    return ", ".join(names[:_EXAMPLES]) + (", ..." if len(names) > _EXAMPLES else "")


def _how_found(name: str, found: str) -> str:
    parts = _normalised(name)
    if "/".join(parts) == found:
        return "with / as the path separator"
    if len(parts) > 1 and "/" not in found and found.lower() == parts[-1].lower():
        return "by their bare file name, as the folders in file_name are not on disk"
    return "ignoring case"


def locate_images(data_root: Path, expected: str, file_names: list[str]) -> ImageLocation:
    """Where the images ``file_names`` (of one annotation file) are: in ``expected`` (relative to
    ``data_root``, ending in "/") or its images/ subfolder, each by name, bare name or in any case."""
    names = list(dict.fromkeys(file_names))
    folders = [expected] + ([expected + IMAGES_SUBFOLDER] if (data_root / expected / IMAGES_SUBFOLDER).is_dir()
                            else [])
    best = None
    for folder in folders:
        index = _Folder(data_root / folder)
        renamed, missing, named_by = {}, [], defaultdict(list)
        for name in names:
            found = index.find(name)
            if found is None:
                missing.append(name)
                continue
            named_by[found].append(name)
            if found != name:
                renamed[name] = found
        # Two file names that find the same file (by bare name or case) are not the same image.
        ambiguous = tuple(name for same in named_by.values() if len(same) > 1 for name in same)
        location = ImageLocation(expected, folder, len(names), renamed, tuple(missing), ambiguous, tuple(folders))
        if not location.unresolved:
            return location
        if best is None or len(location.unresolved) < len(best.unresolved):
            best = location
    return best


def describe_locations(locations: dict[str, ImageLocation]) -> list[str]:
    """The lines that say where images are, one for all splits when all are in their images/ subfolders."""
    notes = [location.note() for location in locations.values()]
    if len(locations) > 1 and all(not location.renamed and location.folder == location.expected + IMAGES_SUBFOLDER
                                  for location in locations.values()):
        expected = [location.expected for location in locations.values()]
        return [f"images of {', '.join(expected[:-1])} and {expected[-1]} are in their {IMAGES_SUBFOLDER} subfolders"]
    return [note for note in notes if note]


def ignored_entries(data_root: Path, ann_files: list[str], image_folders: list[str],
                    own_files: tuple[str, ...] = ()) -> list[str]:
    """Files and folders beside the dataset that are not part of it (README files, YOLO labels/,
    other formats), relative to ``data_root``: in its top folder and the folders of its annotation
    files and images. Hidden names and ``own_files`` (pisa-train's records) are left out."""
    scanned = {""} | {posixpath.dirname(ann) for ann in ann_files} | {folder.rstrip("/") for folder in image_folders}
    kept_folders = set()  # the folders scanned and those on the way to them
    for folder in scanned:
        parts = [part for part in folder.split("/") if part]
        kept_folders |= {"/".join(parts[:depth]) for depth in range(1, len(parts) + 1)}
    image_folders = {folder.rstrip("/") for folder in image_folders}
    ignored = []
    for folder in sorted(scanned):
        try:
            entries = sorted(os.scandir(data_root / folder), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            relative = posixpath.join(folder, entry.name)
            if entry.name.startswith(".") or relative in own_files or relative in ann_files:
                continue
            if entry.is_dir():
                if relative not in kept_folders:
                    ignored.append(relative + "/")
            elif not (folder in image_folders and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS):
                ignored.append(relative)
    return ignored


def describe_ignored(ignored: list[str]) -> str | None:
    if not ignored:
        return None
    shown = ", ".join(ignored[:_LISTED]) + (f", and {len(ignored) - _LISTED} more" if len(ignored) > _LISTED else "")
    return f"ignored, not part of the COCO dataset: {shown}"
