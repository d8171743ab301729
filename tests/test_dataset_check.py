"""pisa-data check: every error and warning, each found and reported with its file and fix."""
from __future__ import annotations

import json

import pytest
from roboflow_export import read_export
from tiny_coco import coco_dict, make_repacked_roboflow, make_roboflow

from pisa_train.cli.data import main
from pisa_train.data.check import check_dataset, render_report
from pisa_train.exit_codes import DATA_ERROR


def _edit_annotations(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def dataset(tmp_path):
    return make_roboflow(tmp_path / "ds", splits=("train", "valid"))


def _messages(report, severity="error"):
    problems = report.errors if severity == "error" else report.warnings
    return [f"{problem.file}: {problem.message}" for problem in problems]


def test_clean_dataset_has_no_problems_and_a_table(dataset):
    report = check_dataset(dataset)
    assert report.problems == []
    text = render_report(report)
    assert "train" in text and "valid/_annotations.coco.json" in text
    assert [(s.split, s.images, s.boxes) for s in report.splits] == [("train", 2, 2), ("val", 2, 2)]
    assert report.classes == ["cat", "dog"] and report.root_categories == ["things"]
    assert "0 errors, 0 warnings" in text


def test_a_roboflow_export_passes(roboflow_export, capsys):
    contents = read_export(roboflow_export)
    assert main(["check", str(roboflow_export)]) == 0
    out = capsys.readouterr().out
    assert contents.classes[0] in out and str(contents.boxes) in out and "0 errors" in out


def test_missing_image(dataset):
    (dataset / "train" / "a.jpg").unlink()
    assert _messages(check_dataset(dataset)) == [
        "train/_annotations.coco.json: 1 of 2 images are not in train/ (looked for by name, by bare file name and "
        "in any case): a.jpg; restore them or remove their entries from train/_annotations.coco.json"]


def test_unreadable_image(dataset):
    (dataset / "valid" / "b.jpg").write_bytes(b"not really a jpeg")
    [message] = _messages(check_dataset(dataset))
    assert message.startswith("valid/_annotations.coco.json: image valid/b.jpg cannot be read")
    assert "replace the file or remove its entry" in message


def test_quick_check_does_not_open_images(dataset):
    (dataset / "valid" / "b.jpg").write_bytes(b"not really a jpeg")
    assert check_dataset(dataset, open_images=False).errors == []


@pytest.mark.parametrize("box, expected", [
    ([5, 5, 0, 10], "zero or negative size (0x10)"),
    ([5, 5, 10, -3], "zero or negative size (10x-3)"),
    ([50, 5, 30, 10], "lies outside the 64x48 image"),
    ([-8, 5, 10, 10], "lies outside the 64x48 image"),
    ("5,5,10,10", "not [x, y, width, height]"),
])
def test_bad_boxes(dataset, box, expected):
    _edit_annotations(dataset / "train" / "_annotations.coco.json",
                      lambda data: data["annotations"][0].update(bbox=box))
    [message] = _messages(check_dataset(dataset))
    assert expected in message and "image a.jpg" in message


def test_box_overhanging_by_rounding_is_accepted(dataset):
    _edit_annotations(dataset / "train" / "_annotations.coco.json",
                      lambda data: data["annotations"][0].update(bbox=[44, 5, 20.4, 10]))
    assert check_dataset(dataset).errors == []


def test_malformed_json(dataset):
    (dataset / "valid" / "_annotations.coco.json").write_text('{"images": [')
    [message] = _messages(check_dataset(dataset))
    assert "valid/_annotations.coco.json is not valid JSON" in message and "COCO JSON format" in message


@pytest.mark.parametrize("missing", ["images", "annotations", "categories"])
def test_json_that_is_not_coco(dataset, missing):
    _edit_annotations(dataset / "valid" / "_annotations.coco.json", lambda data: data.pop(missing))
    [message] = _messages(check_dataset(dataset))
    assert f"is not COCO: missing '{missing}'" in message


def test_categories_differing_between_splits(dataset):
    _edit_annotations(dataset / "valid" / "_annotations.coco.json",
                      lambda data: data["categories"][2].update(name="wolf"))
    [message] = _messages(check_dataset(dataset))
    assert message.startswith("valid/_annotations.coco.json: categories differ from train/_annotations.coco.json")
    assert "missing ['dog'], extra ['wolf']" in message


def test_duplicate_class_names(tmp_path):
    categories = [{"id": 1, "name": "cat", "supercategory": "none"}, {"id": 2, "name": "cat", "supercategory": "none"}]
    root = make_roboflow(tmp_path / "ds", splits=("train",), data=coco_dict(categories=categories))
    [message] = _messages(check_dataset(root))
    assert "class name 'cat' is used by 2 categories; merge or rename them" in message


def test_warnings_for_images_and_classes_without_boxes_exit_zero(tmp_path, capsys):
    data = coco_dict(image_names=("a.jpg", "b.jpg", "c.jpg"), boxes=[(0, 1, [5, 5, 20, 10])])
    root = make_roboflow(tmp_path / "ds", splits=("train",), data=data)
    report = check_dataset(root)
    assert report.errors == []
    warnings = " | ".join(_messages(report, "warning"))
    assert "2 of 3 images have no boxes (b.jpg, c.jpg)" in warnings
    assert "class 'dog' has no boxes in any split" in warnings
    assert "things" not in warnings  # the root category is not a class
    assert main(["check", str(root)]) == 0
    assert "warnings (2)" in capsys.readouterr().out


def test_all_problems_are_reported_not_only_the_first(dataset, capsys):
    (dataset / "train" / "a.jpg").unlink()
    _edit_annotations(dataset / "train" / "_annotations.coco.json",
                      lambda data: data["annotations"][1].update(bbox=[5, 5, 0, 0]))
    (dataset / "valid" / "b.jpg").write_bytes(b"junk")
    _edit_annotations(dataset / "valid" / "_annotations.coco.json",
                      lambda data: data["categories"].append({"id": 9, "name": "cat", "supercategory": "x"}))
    report = check_dataset(dataset)
    kinds = sorted(problem.kind for problem in report.errors)
    assert kinds == ["category-mismatch", "empty-box", "missing-image", "unreadable-image"]
    assert main(["check", str(dataset)]) == DATA_ERROR
    captured = capsys.readouterr()
    assert "errors (4):" in captured.out
    assert "pisa-data: error: 4 errors in dataset" in captured.err


def test_many_problems_of_one_kind_are_summarised(tmp_path):
    data = coco_dict(image_names=[f"{i}.jpg" for i in range(15)], boxes=[(i, 1, [60, 5, 20, 10]) for i in range(15)])
    root = make_roboflow(tmp_path / "ds", splits=("train",), data=data)
    report = check_dataset(root, open_images=False)
    assert len(report.errors) == 15
    text = render_report(report, max_per_group=10)
    assert text.count("lies outside") == 10 and "and 5 more box-outside problems" in text


def test_a_repacked_export_with_images_subfolders_passes_with_one_line_saying_where(tmp_path, capsys):
    root = make_repacked_roboflow(tmp_path / "ds")
    report = check_dataset(root)
    assert report.problems == []
    assert report.notes[:2] == [
        "images of train/ and valid/ are in their images/ subfolders",
        "ignored, not part of the COCO dataset: README.dataset.txt, data.yaml, train/labels/, valid/labels/"]
    # tiny_coco numbers annotations from 0, as Roboflow does: said once per split, fixed in the run's copy.
    assert report.notes[2:] == [f"{split}/_annotations.coco.json: the run reads a copy whose annotation ids are "
                                f"renumbered from 1 (the file numbers them from 0, which COCO evaluation reads as "
                                f"'unmatched')" for split in ("train", "valid")]
    assert main(["check", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == [f"dataset {root} (Roboflow export)", *report.notes]
    assert out[-1] == "0 errors, 0 warnings"


def test_images_named_with_folders_not_on_disk_are_opened_where_they_are(dataset):
    for split in ("train", "valid"):
        _edit_annotations(dataset / split / "_annotations.coco.json", lambda data: [
            image.update(file_name=f"export/imgs/{image['file_name']}") for image in data["images"]])
    assert check_dataset(dataset).problems == []
    (dataset / "train" / "a.jpg").write_bytes(b"not a jpeg")
    [message] = _messages(check_dataset(dataset))
    assert message.startswith("train/_annotations.coco.json: image train/a.jpg cannot be read")


def test_images_missing_in_part_are_one_grouped_error(tmp_path, capsys):
    names = [f"{i:02}.jpg" for i in range(15)] + [f"batch2/{i}.jpg" for i in range(5)]
    root = make_roboflow(tmp_path / "ds", splits=("train",), data=coco_dict(image_names=names, boxes=[]))
    for image in [*(root / "train").glob("0*.jpg"), *(root / "train" / "batch2").glob("*.jpg")]:
        image.unlink()  # 00.jpg ... 09.jpg and all of batch2/
    report = check_dataset(root, open_images=False)
    assert _messages(report) == [
        "train/_annotations.coco.json: 15 of 20 images are not in train/ (looked for by name, by bare file name "
        "and in any case): 10 with no folder (00.jpg, 01.jpg, 02.jpg, ...); 5 named under batch2/ (batch2/0.jpg, "
        "batch2/1.jpg, batch2/2.jpg, ...); restore them or remove their entries from train/_annotations.coco.json"]
    assert report.splits[0].images == 20
    assert main(["check", str(root), "--quick", "--no-progress"]) == DATA_ERROR
    assert "errors (1):" in capsys.readouterr().out
