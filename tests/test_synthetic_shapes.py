"""The demo's synthetic dataset: deterministic, valid COCO, generated once, never over someone's data."""
from __future__ import annotations

import hashlib
import json

import pytest
from mmengine.config import Config
from pycocotools.coco import COCO

from pisa_train.data.synthetic_shapes import CLASSES, ensure_synthetic_dataset, generate_shapes_dataset
from pisa_train.errors import DataError


def digest(root):
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(path.relative_to(root).as_posix().encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    generate_shapes_dataset(tmp_path / "a", seed=1, num_train_images=3, num_val_images=2, image_size=64)
    generate_shapes_dataset(tmp_path / "b", seed=1, num_train_images=3, num_val_images=2, image_size=64)
    generate_shapes_dataset(tmp_path / "c", seed=2, num_train_images=3, num_val_images=2, image_size=64)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_annotations_are_coco_and_boxes_lie_inside_the_images(shapes_dataset):
    coco = COCO(str(shapes_dataset / "annotations" / "train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 8 and len(coco.getAnnIds()) >= 8
    for annotation in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(annotation["image_id"])[0]
        x, y, w, h = annotation["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= image["width"] + 1e-6 and y + h <= image["height"] + 1e-6
        assert (shapes_dataset / "train" / image["file_name"]).is_file()


def demo_like_config(data_root):
    return Config(dict(data_root=str(data_root) + "/", synthetic_dataset=dict(
        generator="shapes", seed=0, num_train_images=2, num_val_images=1, image_size=48)))


def test_generated_on_first_use_then_reused(tmp_path):
    cfg = demo_like_config(tmp_path / "data" / "shapes")
    assert "generated" in ensure_synthetic_dataset(cfg)
    marker = tmp_path / "data" / "shapes" / "train" / "00000.jpg"
    before = marker.stat().st_mtime_ns
    assert "ready" in ensure_synthetic_dataset(cfg)
    assert marker.stat().st_mtime_ns == before
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no staging left


def test_other_settings_regenerate_it(tmp_path):
    cfg = demo_like_config(tmp_path / "shapes")
    ensure_synthetic_dataset(cfg)
    cfg.synthetic_dataset.num_train_images = 3
    assert "generated" in ensure_synthetic_dataset(cfg)
    assert len(json.loads((tmp_path / "shapes" / "annotations" / "train.json").read_text())["images"]) == 3


def test_never_generates_over_a_folder_that_is_not_ours(tmp_path):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="is not a pisa-train synthetic dataset"):
        ensure_synthetic_dataset(demo_like_config(tmp_path / "shapes"))
    assert (tmp_path / "shapes" / "mine.txt").read_text() == "precious"


def test_configs_without_synthetic_data_are_left_alone(tmp_path):
    assert ensure_synthetic_dataset(Config(dict(data_root=str(tmp_path)))) is None
