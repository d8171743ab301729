"""`pisa-data check DIR --plots` (results/dataset_plots.py) on the real Roboflow export."""
from __future__ import annotations

import json

from pisa_train.cli.data import main


def test_check_plots_draw_the_labels_and_training_images_of_the_roboflow_export(roboflow_export, tmp_path, capsys,
                                                                                 monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    assert main(["check", str(roboflow_export), "--plots"]) == 0
    out_dir = tmp_path / "check_plots" / "roboflow-badminton"
    assert f"plots: {out_dir.relative_to(tmp_path) / 'label_statistics.json'}" in capsys.readouterr().out
    statistics = json.loads((out_dir / "label_statistics.json").read_text())
    # One class (the root category 'badminton' is not one), every one of the 9 images and 36 boxes counted.
    assert statistics["classes"] == ["shuttlecock"]
    train = statistics["splits"]["train"]
    assert train["boxes_per_class"] == {"shuttlecock": 36} and train["images"] == 9 and len(train["boxes_per_image"]) == 9
    assert sum(train["boxes_per_image"]) == 36 and len(train["relative_sizes"]) == 36
    assert all(0 < w < 0.2 and 0 < h < 0.2 for w, h in train["relative_sizes"])  # shuttlecocks are small
    with Image.open(out_dir / "labels.png") as labels:
        assert labels.format == "PNG" and labels.size == (1200, 900)
    with Image.open(out_dir / "train_images.jpg") as grid:
        assert grid.size == (3 * 320, 3 * 320)  # 9 images: a 3 x 3 grid
        assert len(grid.convert("L").getcolors(maxcolors=256) or []) > 50  # images, not an empty canvas


def test_check_plots_go_where_asked(roboflow_export, tmp_path):
    assert main(["check", str(roboflow_export), "--quick", "--plots", str(tmp_path / "mine")]) == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["label_statistics.json", "labels.png",
                                                                      "train_images.jpg"]
