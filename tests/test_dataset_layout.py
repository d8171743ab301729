"""resolve_dataset (layouts, classes, the root category) and apply_dataset_folder (the config rewrite)."""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from mmengine import Config
from roboflow_export import read_export
from tiny_coco import (
    coco_dict,
    make_coco2017,
    make_images_folder,
    make_repacked_roboflow,
    make_roboflow,
    write_split,
)
from tiny_training import MODEL_OPTIONS, TRAIN_OPTIONS, tiny_demo

from pisa_train.config.dataset_folder import apply_dataset_folder, use_dataset_folder
from pisa_train.data import coco_annotations
from pisa_train.data.layout import describe_dataset, find_layout, resolve_dataset
from pisa_train.errors import ConfigError, DataError

MMDET_STYLE_CONFIG = """
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
train_dataloader = dict(batch_size=2, dataset=dict(
    type='RepeatDataset', times=3,
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), metainfo=dict(classes=('person',), palette=[(1, 2, 3)]),
                 pipeline=[])))
val_dataloader = dict(batch_size=1, dataset=dict(
    type=dataset_type, data_root=data_root, ann_file='annotations/instances_val2017.json',
    data_prefix=dict(img='val2017/'), test_mode=True, pipeline=[]))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json', metric='bbox')
test_evaluator = val_evaluator
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
model = dict(type='FasterRCNN', roi_head=dict(type='PISARoIHead', bbox_head=dict(type='Shared2FCBBoxHead',
                                                                                num_classes=80)))
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config" / "tiny_config.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(MMDET_STYLE_CONFIG))
    return Config.fromfile(str(path))


def test_a_roboflow_export_resolves_to_its_classes_without_the_root_category(roboflow_fixture):
    contents = read_export(roboflow_fixture)
    layout = resolve_dataset(roboflow_fixture)
    assert layout.kind == "roboflow"
    assert layout.classes == contents.classes
    assert layout.category_ids == contents.class_ids
    assert layout.dropped_categories == (contents.root_category,)
    assert list(layout.splits) == ["train"]
    assert layout.splits["train"].ann_file == "train/_annotations.coco.json"
    assert layout.splits["train"].img_prefix == "train/"


def test_a_roboflow_export_config_has_its_classes_and_no_validation(config, roboflow_fixture):
    classes = read_export(roboflow_fixture).classes
    layout = resolve_dataset(roboflow_fixture)
    cfg, notes = apply_dataset_folder(config, layout)
    assert cfg.model.roi_head.bbox_head.num_classes == len(classes)
    train = cfg.train_dataloader.dataset.dataset
    assert train.metainfo.classes == classes
    assert train.data_root == str(roboflow_fixture.resolve())  # resolved: shared/ may be a link
    assert train.ann_file == "train/_annotations.coco.json"
    assert train.data_prefix == dict(img="train/")
    assert cfg.val_dataloader is None and cfg.val_cfg is None and cfg.val_evaluator is None
    assert cfg.train_cfg.val_interval > cfg.train_cfg.max_epochs
    assert any("without validation" in note and "pisa-data split" in note for note in notes)
    # the input config is untouched
    assert config.model.roi_head.bbox_head.num_classes == 80
    assert config.val_dataloader is not None


def test_against_the_project_pisa_config(roboflow_fixture):
    classes = read_export(roboflow_fixture).classes
    path = Path(__file__).resolve().parents[1] / "configs" / "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"
    cfg, notes = apply_dataset_folder(Config.fromfile(str(path)), resolve_dataset(roboflow_fixture))
    assert cfg.model.roi_head.bbox_head.num_classes == len(classes)
    assert cfg.train_dataloader.dataset.metainfo.classes == classes
    assert cfg.val_dataloader is None and notes


def test_roboflow_with_all_splits_points_val_and_test_separately(tmp_path, config):
    layout = resolve_dataset(make_roboflow(tmp_path / "ds"))
    assert list(layout.splits) == ["train", "val", "test"]
    assert layout.classes == ("cat", "dog")
    cfg, notes = apply_dataset_folder(config, layout)
    assert notes == []
    assert cfg.val_dataloader.dataset.ann_file == "valid/_annotations.coco.json"
    assert cfg.test_dataloader.dataset.ann_file == "test/_annotations.coco.json"
    assert cfg.val_evaluator.ann_file == str(tmp_path / "ds" / "valid" / "_annotations.coco.json")
    assert cfg.test_evaluator.ann_file == str(tmp_path / "ds" / "test" / "_annotations.coco.json")
    assert cfg.model.roi_head.bbox_head.num_classes == 2


def test_shared_val_and_test_dicts_are_pointed_independently(tmp_path):
    val_loader = dict(dataset=dict(type="CocoDataset", ann_file="x", data_prefix=dict(img="x/")))
    evaluator = dict(type="CocoMetric", ann_file="x")
    shared = Config(dict(train_dataloader=dict(dataset=dict(type="CocoDataset")),
                         val_dataloader=val_loader, test_dataloader=val_loader,
                         val_evaluator=evaluator, test_evaluator=evaluator,
                         model=dict(bbox_head=dict(num_classes=80))))
    cfg, _ = apply_dataset_folder(shared, resolve_dataset(make_roboflow(tmp_path / "ds")))
    assert cfg.val_dataloader.dataset.ann_file == "valid/_annotations.coco.json"
    assert cfg.test_dataloader.dataset.ann_file == "test/_annotations.coco.json"
    assert cfg.val_evaluator.ann_file.endswith("valid/_annotations.coco.json")
    assert cfg.test_evaluator.ann_file.endswith("test/_annotations.coco.json")
    assert cfg.model.bbox_head.num_classes == 2


def test_missing_validation_split_uses_the_test_split(tmp_path, config):
    layout = resolve_dataset(make_roboflow(tmp_path / "ds", splits=("train", "test")))
    cfg, notes = apply_dataset_folder(config, layout)
    assert cfg.val_dataloader.dataset.ann_file == "test/_annotations.coco.json"
    assert cfg.val_evaluator.ann_file.endswith("test/_annotations.coco.json")
    assert any("validating on the test split" in note for note in notes)


def test_coco2017_layout(tmp_path, config):
    layout = resolve_dataset(make_coco2017(tmp_path / "coco"))
    assert layout.kind == "coco2017"
    assert layout.splits["train"].ann_file == "annotations/instances_train2017.json"
    assert layout.splits["train"].img_prefix == "train2017/"
    assert layout.splits["val"].img_prefix == "val2017/"
    cfg, _ = apply_dataset_folder(config, layout)
    assert cfg.val_evaluator.ann_file == str(tmp_path / "coco" / "annotations" / "instances_val2017.json")


def test_coco2017_without_image_folder_says_which(tmp_path):
    root = make_coco2017(tmp_path / "coco")
    for image in (root / "train2017").iterdir():
        image.unlink()
    (root / "train2017").rmdir()
    with pytest.raises(DataError, match="train2017.*not found"):
        resolve_dataset(root)


def test_images_folder_layout_maps_file_names_to_splits(tmp_path):
    layout = resolve_dataset(make_images_folder(tmp_path / "ds", ("train.json", "val.json")))
    assert layout.kind == "images-folder"
    assert {split: files.ann_file for split, files in layout.splits.items()} == {"train": "train.json",
                                                                                 "val": "val.json"}
    assert layout.splits["val"].img_prefix == "images/"


def test_single_annotation_file_beside_images_is_the_train_split(tmp_path):
    layout = resolve_dataset(make_images_folder(tmp_path / "ds", ("annotations.json",)))
    assert list(layout.splits) == ["train"]


def test_dataset_wrapped_in_one_folder_is_found(tmp_path):
    make_roboflow(tmp_path / "outer" / "my-dataset-v2")
    assert find_layout(tmp_path / "outer").data_root == (tmp_path / "outer" / "my-dataset-v2").resolve()


def test_a_dataset_wrapped_in_one_folder_keeps_the_reason_its_layout_is_refused(tmp_path):
    dataset = tmp_path / "outer" / "my-dataset"
    (dataset / "images").mkdir(parents=True)
    for name in ("a.json", "b.json"):
        (dataset / name).write_text("{}")
    with pytest.raises(DataError) as refused:
        find_layout(tmp_path / "outer")
    assert str(refused.value) == (f"{dataset} has annotation files a.json, b.json beside images/ but their names do "
                                  f"not say which is train, val or test; rename them (e.g. train.json, val.json)")


def test_unrecognised_folder_lists_the_layouts(tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="Roboflow.*COCO 2017.*images/"):
        resolve_dataset(tmp_path / "random")


def test_missing_folder_suggests_download(tmp_path):
    with pytest.raises(DataError, match="pisa-data download"):
        resolve_dataset(tmp_path / "nope")


def test_real_class_without_boxes_is_kept(tmp_path):
    data = coco_dict(boxes=[(0, 1, [5, 5, 20, 10])])  # "dog" (id 2) has no boxes
    layout = resolve_dataset(make_roboflow(tmp_path / "ds", splits=("train",), data=data))
    assert layout.classes == ("cat", "dog")


def test_root_category_with_boxes_is_a_class(tmp_path):
    data = coco_dict(boxes=[(0, 0, [5, 5, 20, 10]), (1, 1, [5, 5, 20, 10])])
    layout = resolve_dataset(make_roboflow(tmp_path / "ds", splits=("train",), data=data))
    assert layout.classes == ("things", "cat", "dog")


def test_classes_follow_the_file_order_not_the_ids(tmp_path):
    categories = [{"id": 7, "name": "zebra", "supercategory": "none"},
                  {"id": 3, "name": "ant", "supercategory": "none"}]
    data = coco_dict(categories=categories, boxes=[(0, 7, [1, 1, 5, 5]), (1, 3, [1, 1, 5, 5])])
    layout = resolve_dataset(make_roboflow(tmp_path / "ds", splits=("train",), data=data))
    assert layout.classes == ("zebra", "ant") and layout.category_ids == (7, 3)


def test_differing_categories_between_splits_are_refused(tmp_path):
    root = make_roboflow(tmp_path / "ds", splits=("train", "valid"))
    data = json.loads((root / "valid" / "_annotations.coco.json").read_text())
    data["categories"][2]["name"] = "wolf"
    (root / "valid" / "_annotations.coco.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="categories of valid/_annotations.coco.json differ"):
        resolve_dataset(root)


def test_concat_dataset_is_refused_with_a_clear_message(tmp_path):
    cfg = Config(dict(train_dataloader=dict(dataset=dict(type="ConcatDataset", datasets=[])),
                      model=dict(bbox_head=dict(num_classes=3))))
    with pytest.raises(ConfigError, match="ConcatDataset"):
        apply_dataset_folder(cfg, resolve_dataset(make_roboflow(tmp_path / "ds", splits=("train",))))


def test_describe_names_classes_and_splits(roboflow_fixture):
    contents = read_export(roboflow_fixture)
    text = describe_dataset(resolve_dataset(roboflow_fixture))
    assert contents.classes[0] in text and contents.root_category in text and "val:" in text


def test_large_file_categories_are_read_without_a_full_parse(tmp_path, monkeypatch):
    data = coco_dict()
    data["info"] = {"description": 'mentions "categories" in a string'}
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"info": data["info"], "images": data["images"],
                                "annotations": data["annotations"], "categories": data["categories"]}))
    monkeypatch.setattr(coco_annotations, "_FULL_PARSE_LIMIT_BYTES", 10)
    monkeypatch.setattr(coco_annotations, "load_annotation_file", lambda p: pytest.fail("parsed fully"))
    assert [c["name"] for c in coco_annotations.read_categories(path)] == ["things", "cat", "dog"]


def test_annotations_folder_with_split_named_image_folders(tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "val"):
        write_split(root / split, root / "annotations" / f"{split}.json", coco_dict())
    (root / "annotations" / "captions_train.json").write_text("{}")  # no folder of its name: ignored
    layout = resolve_dataset(root)
    assert {split: (files.ann_file, files.img_prefix) for split, files in layout.splits.items()} == {
        "train": ("annotations/train.json", "train/"), "val": ("annotations/val.json", "val/")}
    assert layout.notes == ("ignored, not part of the COCO dataset: annotations/captions_train.json",)


# Where exports put images: data/image_lookup.py, through resolve_dataset and --data.

def test_images_in_an_images_subfolder_of_each_split_are_found_and_extra_files_ignored(tmp_path, config):
    layout = resolve_dataset(make_repacked_roboflow(tmp_path / "ds"))
    assert {split: (files.ann_file, files.img_prefix) for split, files in layout.splits.items()} == {
        "train": ("train/_annotations.coco.json", "train/images/"),
        "val": ("valid/_annotations.coco.json", "valid/images/")}
    assert layout.renamed_images == {}
    assert layout.notes == (
        "images of train/ and valid/ are in their images/ subfolders",
        "ignored, not part of the COCO dataset: README.dataset.txt, data.yaml, train/labels/, valid/labels/")
    cfg, _ = apply_dataset_folder(config, layout)
    assert cfg.train_dataloader.dataset.dataset.data_prefix == dict(img="train/images/")
    assert cfg.val_dataloader.dataset.data_prefix == dict(img="valid/images/")
    assert cfg.val_dataloader.dataset.ann_file == "valid/_annotations.coco.json"
    assert "  images of train/ and valid/ are in their images/ subfolders" in describe_dataset(layout).splitlines()


def test_one_split_in_its_images_subfolder_gets_its_own_line(tmp_path):
    root = make_repacked_roboflow(tmp_path / "ds", splits=("train",))
    make_roboflow(root, splits=("valid",))
    layout = resolve_dataset(root)
    assert layout.notes[0] == "images of train/ are in train/images/"
    assert layout.splits["val"].img_prefix == "valid/"


def test_a_plain_roboflow_export_says_nothing_about_its_images(tmp_path):
    layout = resolve_dataset(make_roboflow(tmp_path / "ds"))
    assert layout.notes == ()
    assert layout.renamed_images == {}


def _file_names_with(data: dict, rename) -> dict:
    data = json.loads(json.dumps(data))
    for image in data["images"]:
        image["file_name"] = rename(image["file_name"])
    return data


@pytest.mark.parametrize("rename, how", [
    (lambda name: f"export/imgs/{name}", "found by their bare file name, as the folders in file_name are not on "
                                         "disk (e.g. 'export/imgs/a.jpg' is a.jpg)"),
    (lambda name: f"C:\\Users\\me\\export\\{name}", "found by their bare file name, as the folders in file_name "
                                                    "are not on disk (e.g. 'C:\\Users\\me\\export\\a.jpg' is a.jpg)"),
    (str.upper, "found ignoring case (e.g. 'A.JPG' is a.jpg)"),
])
def test_file_names_with_folders_not_on_disk_or_in_another_case_are_found(tmp_path, config, rename, how):
    root = make_roboflow(tmp_path / "ds", splits=("train", "valid"))  # the images are train/a.jpg, ...
    for split in ("train", "valid"):
        ann_file = root / split / "_annotations.coco.json"
        ann_file.write_text(json.dumps(_file_names_with(json.loads(ann_file.read_text()), rename)))
    layout = resolve_dataset(root)
    assert layout.splits["train"].img_prefix == "train/"
    assert layout.renamed_images["train"] == {rename("a.jpg"): "a.jpg", rename("b.jpg"): "b.jpg"}
    assert layout.notes[0] == f"images of train/: 2 of 2 {how}"


def test_data_reads_a_copy_of_the_annotation_file_with_the_names_on_disk(tmp_path, config):
    root = make_roboflow(tmp_path / "ds", splits=("train", "valid"))
    original = {}
    for split in ("train", "valid"):
        ann_file = root / split / "_annotations.coco.json"
        original[split] = json.loads(ann_file.read_text())
        for annotation in original[split]["annotations"]:  # ids from 1: only the names need correcting here
            annotation["id"] += 1                           # (tests/test_annotation_ids.py: the ids)
        ann_file.write_text(json.dumps(_file_names_with(original[split], lambda name: f"export/{name}")))
    written_before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    annotations = tmp_path / "work" / "annotations"

    cfg, notes = use_dataset_folder(config, root, annotations, write=False)  # what --print-config does
    assert not annotations.exists()
    assert cfg.train_dataloader.dataset.dataset.ann_file == str(annotations / "train.json")
    assert cfg.val_dataloader.dataset.ann_file == str(annotations / "val.json")
    assert cfg.val_evaluator.ann_file == str(annotations / "val.json")
    assert cfg.val_dataloader.dataset.data_prefix == dict(img="valid/")
    assert (f"  the train split is read from {annotations / 'train.json'}: a copy of "
            f"train/_annotations.coco.json with the file names that are on disk") in notes

    assert use_dataset_folder(config, root, annotations).cfg.to_dict() == cfg.to_dict()
    for split, name in (("train", "train.json"), ("valid", "val.json")):
        assert json.loads((annotations / name).read_text()) == original[split]  # the names on disk
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == written_before


def test_images_missing_in_part_refuse_data_with_one_grouped_line(tmp_path):
    names = [f"{i}.jpg" for i in range(6)] + [f"export/{i}.jpg" for i in range(6, 10)]
    root = make_repacked_roboflow(tmp_path / "ds", splits=("train",), data=coco_dict(image_names=names, boxes=[]))
    images = root / "train" / "images"
    for image in (images / "export").iterdir():  # the export/ folder named in file_name is not on disk
        image.rename(images / image.name)
    (images / "export").rmdir()
    for name in ("0.jpg", "1.jpg", "2.jpg", "3.jpg", "6.jpg", "7.jpg"):
        (images / name).unlink()
    with pytest.raises(DataError) as refused:
        resolve_dataset(root)
    assert str(refused.value) == (
        "6 of 10 images listed in train/_annotations.coco.json are in neither train/ nor train/images/ (looked "
        "for by name, by bare file name and in any case): 4 with no folder (0.jpg, 1.jpg, 2.jpg, ...); 2 named "
        "under export/ (export/6.jpg, export/7.jpg); restore them or remove their entries from "
        f"train/_annotations.coco.json (`pisa-data check {root}` lists every problem)")


def test_two_file_names_that_find_the_same_file_are_refused(tmp_path):
    root = make_roboflow(tmp_path / "ds", splits=("train",),
                         data=coco_dict(image_names=("a.jpg", "b.jpg"), boxes=[]))
    ann_file = root / "train" / "_annotations.coco.json"
    ann_file.write_text(json.dumps(_file_names_with(json.loads(ann_file.read_text()),
                                                    {"a.jpg": "day/a.jpg", "b.jpg": "night/a.jpg"}.get)))
    with pytest.raises(DataError, match=r"^2 images listed in train/_annotations.coco.json name the same file in "
                                        r"train/ as another by their bare file name or case \(day/a.jpg, "
                                        r"night/a.jpg\); restore them"):
        resolve_dataset(root)


def _export_shapes(shapes: Path, root: Path, repacked: bool) -> Path:
    """The shapes dataset as an export: Roboflow splits with their images in images/ and YOLO labels/
    beside (``repacked``), or beside the annotation file but named with an export/ folder not on disk."""

    for split, folder in (("train", "train"), ("val", "valid")):
        data = json.loads((shapes / "annotations" / f"{split}.json").read_text())
        images = root / folder / ("images" if repacked else "")
        images.mkdir(parents=True)
        for image in data["images"]:
            shutil.copy(shapes / split / image["file_name"], images / image["file_name"])
            if repacked:
                (root / folder / "labels").mkdir(exist_ok=True)
                (root / folder / "labels" / f"{Path(image['file_name']).stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
            else:
                image["file_name"] = f"export/{image['file_name']}"
        (root / folder / "_annotations.coco.json").write_text(json.dumps(data))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("repacked", [True, False], ids=["images-subfolders", "folders-in-file-name"])
def test_an_export_with_images_where_exports_put_them_trains_with_data(tmp_path, shapes_dataset, run_cli, repacked):
    export = _export_shapes(shapes_dataset, tmp_path / "export", repacked)
    work_dir = tmp_path / "work"
    argv = tiny_demo(work_dir, 1)
    argv = [*argv[:argv.index("--cfg-options")], "--data", str(export), "--cfg-options", "synthetic_dataset=None",
            "model.backbone.base_channels=16", *MODEL_OPTIONS, *TRAIN_OPTIONS]
    result = run_cli("train", argv, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work_dir / "iter_1.pth").is_file()
    dataset = Config.fromfile(str(work_dir / "pisa_faster_rcnn_r18_fpn_demo_shapes.py")).train_dataloader.dataset
    if repacked:
        assert "[pisa-train]   images of train/ and valid/ are in their images/ subfolders" in result.stdout
        assert dataset.data_prefix == dict(img="train/images/")
        assert dataset.ann_file == "train/_annotations.coco.json"
    else:
        assert "[pisa-train]   images of train/: 8 of 8 found by their bare file name" in result.stdout
        assert dataset.data_prefix == dict(img="train/")
        assert dataset.ann_file == str(work_dir / "annotations" / "train.json")
    assert not (tmp_path / "data").exists()  # synthetic_dataset=None: the demo's data is not generated
