"""`pisa-data check DIR --plots` (results/dataset_plots.py) on a Roboflow export (tests/roboflow_export.py)."""
from __future__ import annotations

import json
import math

from PIL import Image
from roboflow_export import read_export

from pisa_train.cli.data import main
from pisa_train.results.dataset_plots import GRID_CELL, GRID_SIDE


def test_check_plots_draw_the_labels_and_training_images_of_the_roboflow_export(roboflow_export, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["check", str(roboflow_export), "--plots"]) == 0
    out_dir = tmp_path / "check_plots" / "roboflow-badminton"
    assert f"plots: {out_dir.relative_to(tmp_path) / 'label_statistics.json'}" in capsys.readouterr().out
    statistics = json.loads((out_dir / "label_statistics.json").read_text())
    # Its classes (the root category, 'badminton', is not one), every image and box counted.
    export = read_export(roboflow_export)
    [name] = export.classes
    assert statistics["classes"] == [name]
    train = statistics["splits"]["train"]
    assert train["boxes_per_class"] == {name: export.boxes} and train["images"] == export.images
    assert len(train["boxes_per_image"]) == export.images
    assert sum(train["boxes_per_image"]) == export.boxes and len(train["relative_sizes"]) == export.boxes
    assert all(0 < w < 0.2 and 0 < h < 0.2 for w, h in train["relative_sizes"])  # shuttlecocks are small
    with Image.open(out_dir / "labels.png") as labels:
        assert labels.format == "PNG" and labels.size == (1200, 900)
    with Image.open(out_dir / "train_images.jpg") as grid:
        drawn = min(export.images, GRID_SIDE * GRID_SIDE)
        side = math.ceil(math.sqrt(drawn))
        assert grid.size == (side * GRID_CELL, math.ceil(drawn / side) * GRID_CELL)  # 9 images: 3 x 3
        assert len(grid.convert("L").getcolors(maxcolors=256) or []) > 50  # images, not an empty canvas


def test_check_plots_go_where_asked(roboflow_export, tmp_path):
    assert main(["check", str(roboflow_export), "--quick", "--plots", str(tmp_path / "mine")]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["label_statistics.json", "labels.png",
                                                                      "train_images.jpg"]
