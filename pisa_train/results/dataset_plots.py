"""Look at a dataset before training on it: label statistics and training images with their boxes.

``pisa-data check DIR --plots`` writes, for the folder's splits (data/layout.py):

* ``labels.png``: boxes per class (per split), box width against height and the boxes' aspect ratios
  (relative to the image size, as Ultralytics' labels.jpg shows them), and boxes per image;
* ``label_statistics.json``: the numbers behind it;
* ``train_images.jpg``: a grid of training images with their ground-truth boxes, drawn by mmdet's
  visualizer, so that a wrong class map or shifted boxes are seen before training.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from pisa_train.data.check import NOT_OPENED, DatasetReport, check_dataset, resolves_outside
from pisa_train.files import write_json_atomically
from pisa_train.results.evaluation_analysis import draw_images
from pisa_train.results.figure_text import literal_text

GRID_SIDE = 4  # training images per row and column of the grid
GRID_CELL = 320  # pixels


def _split_boxes(data: dict, classes: list[str]) -> tuple[list[tuple[str, float, float]], Counter]:
    """(class, width / image width, height / image height) of each box of the classes, and boxes per image."""
    names = {category["id"]: category["name"] for category in data["categories"]}
    images = {image["id"]: image for image in data["images"] if isinstance(image, dict) and "id" in image}
    boxes, per_image = [], Counter({image_id: 0 for image_id in images})
    for annotation in data["annotations"]:
        name = names.get(annotation.get("category_id"))
        image = images.get(annotation.get("image_id"))
        box = annotation.get("bbox")
        if name not in classes or image is None or not (isinstance(box, list) and len(box) == 4):
            continue
        width, height = image.get("width") or 1, image.get("height") or 1
        boxes.append((name, box[2] / width, box[3] / height))
        per_image[image["id"]] += 1
    return boxes, per_image


def _read(folder: str | Path, report: DatasetReport | None) -> DatasetReport:
    """The dataset as ``pisa-data check`` read it (its annotation files and where their images are)."""
    return report if report is not None else check_dataset(folder, open_images=NOT_OPENED)


def label_statistics(folder: str | Path, classes: list[str], report: DatasetReport | None = None) -> dict:
    report = _read(folder, report)
    statistics = {"classes": list(classes), "splits": {}}
    for split_report in report.splits:
        boxes, per_image = _split_boxes(report.annotations[split_report.split], classes)
        counts = Counter(name for name, _, _ in boxes)
        statistics["splits"][split_report.split] = {
            "ann_file": split_report.ann_file, "images": len(per_image), "boxes": len(boxes),
            "boxes_per_class": {name: counts.get(name, 0) for name in classes},
            "boxes_per_image": sorted(per_image.values()),
            "relative_sizes": [[round(w, 4), round(h, 4)] for _, w, h in boxes]}
    return statistics


@literal_text
def plot_label_statistics(statistics: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, splits = statistics["classes"], statistics["splits"]
    figure, axes = plt.subplots(2, 2, figsize=(12, 9), dpi=100)
    bars, sizes, aspects, per_image = axes.ravel()
    positions = np.arange(len(classes))
    width = 0.8 / max(len(splits), 1)
    for offset, (split, numbers) in enumerate(splits.items()):
        bars.bar(positions + offset * width, [numbers["boxes_per_class"][name] for name in classes], width,
                 label=split)
    bars.set_xticks(positions + width * (len(splits) - 1) / 2, classes, rotation=45 if len(classes) > 6 else 0,
                    ha="right" if len(classes) > 6 else "center")
    bars.set(title="boxes per class", ylabel="boxes")
    bars.legend(fontsize="small")
    all_sizes = np.array([size for numbers in splits.values() for size in numbers["relative_sizes"]] or [[0, 0]])
    # Zoomed to the boxes: small objects (a shuttlecock is 2% of the image) would sit in one corner of [0, 1].
    limit = min(1.0, max(0.01, float(all_sizes.max()) * 1.1))
    sizes.scatter(all_sizes[:, 0], all_sizes[:, 1], s=8, alpha=0.5, color="#4c72b0")
    sizes.set(title="box width and height (fraction of the image)", xlabel="width", ylabel="height",
              xlim=(0, limit), ylim=(0, limit), aspect="equal")
    ratios = np.log2(np.clip(all_sizes[:, 0], 1e-6, None) / np.clip(all_sizes[:, 1], 1e-6, None))
    aspects.hist(ratios, bins=40, color="#4c72b0")
    aspects.set(title="aspect ratio, log2(width / height): 0 is square", xlabel="log2(width / height)",
                ylabel="boxes")
    for split, numbers in splits.items():
        counts = numbers["boxes_per_image"]
        per_image.hist(counts, bins=range(0, max(counts or [0]) + 2), alpha=0.6, label=split)
    per_image.set(title="boxes per image", xlabel="boxes", ylabel="images")
    per_image.yaxis.get_major_locator().set_params(integer=True)
    per_image.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def draw_training_images(folder: str | Path, classes: list[str], path: str | Path,
                         count: int = GRID_SIDE * GRID_SIDE, report: DatasetReport | None = None) -> Path | None:
    """A grid of the first ``count`` training images with their boxes; None without a train split.
    Each image is read where check and training find it (data/image_lookup.py), not at its raw file_name."""
    from PIL import Image

    report = _read(folder, report)
    data, location = report.annotations.get("train"), report.image_locations.get("train")
    if data is None or location is None:
        return None
    folder = report.data_root / location.folder
    entries = []
    for image in data["images"]:
        if len(entries) == count:
            break
        if not isinstance(image, dict) or image.get("file_name") in location.unresolved:
            continue
        found = location.renamed.get(image["file_name"], image["file_name"])
        # Only images inside the dataset: check calls the others an error, and the grid is shared.
        if resolves_outside(report.data_root, folder / found) is None:
            entries.append({"image_id": image["id"], "file_name": found})
    scratch = Path(path).parent / ".train_images"
    drawn = [scratch.parent / relative for relative in draw_images(
        entries, data, None, classes, folder, scratch, score_thr=1.0) if relative]
    side = math.ceil(math.sqrt(len(drawn))) or 1
    grid = Image.new("RGB", (side * GRID_CELL, math.ceil(len(drawn) / side) * GRID_CELL or GRID_CELL), "white")
    for index, image_path in enumerate(drawn):
        with Image.open(image_path) as image:
            image.thumbnail((GRID_CELL - 4, GRID_CELL - 4))
            grid.paste(image, ((index % side) * GRID_CELL + 2, (index // side) * GRID_CELL + 2))
        image_path.unlink()
    if scratch.is_dir():
        scratch.rmdir()
    path = Path(path)
    grid.save(path, quality=90)
    return path


def plot_dataset(folder: str | Path, classes: list[str], out_dir: str | Path | None = None,
                 report: DatasetReport | None = None) -> list[Path]:
    """Everything ``pisa-data check --plots`` writes into ``out_dir`` (default: check_plots/<folder name>
    in the current directory, where runs also go; the dataset's own folder may be read-only); the files written."""
    out_dir = Path(out_dir) if out_dir else Path("check_plots") / Path(folder).resolve().name
    report = _read(folder, report)
    statistics = label_statistics(folder, classes, report)
    write_json_atomically(out_dir / "label_statistics.json", statistics)
    written = [out_dir / "label_statistics.json", plot_label_statistics(statistics, out_dir / "labels.png")]
    grid = draw_training_images(folder, classes, out_dir / "train_images.jpg", report=report)
    return written + ([grid] if grid else [])
