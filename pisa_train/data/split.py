"""``pisa-data split``: hold images of a dataset out for validation and testing, without copying them.

A dataset in one annotation file (a CVAT or Label Studio export, a Roboflow export of one split) trains,
but validates on nothing and cannot be evaluated. ``split_dataset`` writes ``train.json``, ``val.json``
(and ``test.json``) into a new folder, with ``pisa-data.json`` naming the dataset they were made from
(data/layout.py's MADE_BY): the images stay where they are, and each ``file_name`` is the path of its
image in that dataset, as check and training found it (data/image_lookup.py). ``--data`` and
``pisa-data check`` take the new folder.

The split is deterministic (the same seed gives the same files) and stratified: each image goes with
its rarest class, and every class with enough images has some in each split. Images and annotations
are numbered 1..N in the new files, and every box has an ``area``.
"""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from pisa_train.data.check import NOT_OPENED, check_dataset
from pisa_train.data.coco_annotations import with_areas
from pisa_train.data.layout import MADE_BY, SPLITS
from pisa_train.errors import DataError, UsageError
from pisa_train.files import write_json_atomically

BACKGROUND = None  # the stratum of images without boxes


def check_fractions(val: float, test: float) -> None:
    for flag, fraction in (("--val", val), ("--test", test)):
        if not 0 <= fraction < 1:
            raise UsageError(f"{flag} {fraction} is out of range: give the fraction of the images to hold out, "
                             f"from 0 to below 1 (e.g. {flag} 0.2)")
    if val + test >= 1:
        raise UsageError(f"--val {val} and --test {test} leave no images to train on; keep their sum below 1 "
                         f"(e.g. --val 0.2 --test 0.1)")


def prepare_destination(dest: Path) -> None:
    """A new or empty folder for a derived dataset; a one-line refusal otherwise."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"--dest {dest} already holds files; give a new or empty folder, so that nothing "
                        f"there is overwritten")
    dest.mkdir(parents=True, exist_ok=True)


def write_derived_dataset(dest: Path, source: Path, files: dict[str, dict], command: str) -> list[str]:
    """``files`` (split -> COCO dict whose file_names are relative to ``source``) as ``dest/<split>.json``,
    numbered 1..N, with the record that names ``source``; a line per split written."""
    lines = []
    for split, data in files.items():
        data = with_areas(data)
        image_ids = {image["id"]: number for number, image in enumerate(data["images"], start=1)}
        data = {**data, "images": [{**image, "id": image_ids[image["id"]]} for image in data["images"]],
                "annotations": [{**annotation, "id": number, "image_id": image_ids[annotation["image_id"]]}
                                for number, annotation in enumerate(data["annotations"], start=1)]}
        write_json_atomically(dest / f"{split}.json", data, indent=None)
        backgrounds = len(data["images"]) - len({annotation["image_id"] for annotation in data["annotations"]})
        lines.append(f"  {split}: {dest / f'{split}.json'}: {len(data['images'])} images "
                     f"({backgrounds} without boxes), {len(data['annotations'])} boxes")
    write_json_atomically(dest / MADE_BY, {"source": str(source), "made_by": command,
                                           "splits": {split: f"{split}.json" for split in files}})
    return lines


def _stratified(image_ids: list, classes_of: dict, fractions: dict[str, float], seed: int) -> dict:
    """split -> image ids: each image in the stratum of its rarest class, each stratum shared out by the
    fractions (at least one image in each held-out split where the stratum has enough for all)."""
    frequency = Counter(name for names in classes_of.values() for name in names)
    strata: dict = defaultdict(list)
    for image_id in image_ids:
        names = classes_of.get(image_id) or ()
        strata[min(names, key=lambda name: (frequency[name], name)) if names else BACKGROUND].append(image_id)
    chosen: dict[str, list] = {split: [] for split in ("train", *fractions)}
    rng = random.Random(seed)
    for key in sorted(strata, key=lambda key: (key is BACKGROUND, str(key))):
        members = strata[key]
        rng.shuffle(members)
        start = 0
        for split, fraction in fractions.items():
            count = round(len(members) * fraction)
            if fraction > 0 and count == 0 and len(members) > len(fractions):
                count = 1  # a rare class still reaches every split
            chosen[split] += members[start:start + count]
            start += count
        chosen["train"] += members[start:]
    order = {image_id: index for index, image_id in enumerate(image_ids)}
    return {split: sorted(ids, key=order.__getitem__) for split, ids in chosen.items()}


def split_dataset(source: str | Path, dest: str | Path, val: float = 0.2, test: float = 0.0, seed: int = 0,
                  command: str = "pisa-data split") -> list[str]:
    """Split the dataset at ``source`` into ``dest``; the lines that say what was written."""
    check_fractions(val, test)
    report = check_dataset(source, open_images=NOT_OPENED)
    if report.errors:
        raise DataError(f"{len(report.errors)} errors in dataset {source}, e.g. {report.errors[0].file}: "
                        f"{report.errors[0].message}; fix them first (`pisa-data check {source}` lists them)")
    dest = Path(dest)
    prepare_destination(dest)
    images, annotations, categories = [], [], None
    for split in SPLITS:  # every split's images in one pool, each with the path check found it at
        data, location = report.annotations.get(split), report.image_locations.get(split)
        if data is None:
            continue
        categories = categories if categories is not None else data["categories"]
        renumbered = {}
        for image in data["images"]:
            renumbered[image["id"]] = len(images)
            name = location.renamed.get(image["file_name"], image["file_name"])
            images.append({**image, "id": len(images), "file_name": location.folder + name})
        annotations += [{**annotation, "image_id": renumbered[annotation["image_id"]]}
                        for annotation in data["annotations"]]
    names = {category["id"]: category["name"] for category in categories}
    classes_of: dict = defaultdict(set)
    for annotation in annotations:
        classes_of[annotation["image_id"]].add(names[annotation["category_id"]])
    fractions = {"val": val, **({"test": test} if test > 0 else {})}
    chosen = _stratified([image["id"] for image in images], classes_of, fractions, seed)
    files = {}
    for split, ids in chosen.items():
        keep = set(ids)
        files[split] = {"images": [image for image in images if image["id"] in keep],
                        "annotations": [annotation for annotation in annotations if annotation["image_id"] in keep],
                        "categories": categories}
    lines = write_derived_dataset(dest, report.data_root, files,
                                  f"{command} --val {val} --test {test} --seed {seed}")
    missing = {split: sorted(set(report.classes) - {names[a["category_id"]] for a in files[split]["annotations"]})
               for split in files}
    lines += [f"  {split} has no boxes of {', '.join(map(json.dumps, absent))}: too few images of them to share"
              for split, absent in missing.items() if absent]
    return [f"split {report.data_root} into {dest} (images stay in {report.data_root}):", *lines]
