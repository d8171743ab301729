"""People's own data as it comes (data/layout.py, check.py, split.py, convert.py; config/dataset_folder.py):
the layouts labelling tools export, recognised by what is in them; one-file datasets split; Pascal VOC and
YOLO converted; background images trained on; the same verdicts from `pisa-data check` and `--data`."""
from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import mmcv
import pytest
import torch
from conftest import DEMO_CONFIG, X101_PISA_CONFIG
from local_http_server import LocalHTTPServer
from PIL import Image
from tiny_training import ADDED, MODEL_OPTIONS, TEST_OPTIONS, TRAIN_OPTIONS
from tool_exports import (
    CLASSES,
    COLOURS,
    CONVERTED,
    LAYOUTS,
    ONE_FILE,
    SIZE,
    objects,
    write_cvat_coco,
    write_label_studio_coco,
    write_picture,
    write_yolo,
)

from pisa_train import exit_codes
from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import train as train_cli
from pisa_train.cli.data import main
from pisa_train.config.build import build_test_config, build_train_config
from pisa_train.data.check import check_dataset
from pisa_train.data.presence import innermost_dataset
from pisa_train.errors import DataError

LAYOUT_LINES = {
    "cvat-coco": "CVAT COCO 1.0 export: one annotation file, no validation split",
    "label-studio-coco": "Label Studio COCO export: one annotation file, no validation split",
    "instances-with-image-folders": "COCO-style annotations/ folder",
    "roboflow-with-val": "Roboflow export",
}


def _class_rows(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("class "))
    return [line.split()[0] for line in lines[start + 1:start + 1 + len(CLASSES)]]


def ready_for_data(layout: str, tmp_path: Path) -> Path:
    """The folder --data takes: the export itself, its `pisa-data convert`ed or `pisa-data split` folder."""
    root = LAYOUTS[layout](tmp_path / layout)
    if layout in CONVERTED:
        assert main(["convert", str(root), "--dest", str(tmp_path / f"{layout}-coco")]) == 0
        return tmp_path / f"{layout}-coco"
    if layout in ONE_FILE:
        assert main(["split", str(root), "--dest", str(tmp_path / f"{layout}-split"), "--val", "0.25"]) == 0
        return tmp_path / f"{layout}-split"
    return root


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_check_recognises_each_layout_and_names_its_classes_in_order(layout, tmp_path, capsys):
    root = LAYOUTS[layout](tmp_path / layout)
    if layout in CONVERTED:  # said what it is, and the command that converts it
        assert main(["check", str(root)]) == exit_codes.DATA_ERROR
        described = {"pascal-voc": "Pascal VOC dataset (Annotations/*.xml, JPEGImages/)",
                     "yolo": "YOLO dataset (data.yaml, labels/*.txt)"}[layout]
        assert capsys.readouterr().err.strip() == (
            f"pisa-data: error: {root} is a {described}, not COCO; convert it with "
            f"`pisa-data convert {root} --dest {root}-coco` and use that folder")
        root = ready_for_data(layout, tmp_path / "converted")
        capsys.readouterr()
    assert main(["check", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    if layout in LAYOUT_LINES:
        assert out.splitlines()[0] == f"dataset {root} ({LAYOUT_LINES[layout]})"
    assert _class_rows(out) == list(CLASSES)
    assert out.splitlines()[-1].startswith("0 errors")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_data_points_the_config_at_each_layout_with_the_right_classes(layout, tmp_path):
    folder = ready_for_data(layout, tmp_path)
    cfg, notes = build_train_config(train_cli.parse_request(
        [str(X101_PISA_CONFIG), "--data", str(folder), "--work-dir", str(tmp_path / "work")]), "cpu")
    assert cfg.model.roi_head.bbox_head.num_classes == len(CLASSES)
    assert innermost_dataset(cfg.train_dataloader.dataset).metainfo.classes == CLASSES
    assert cfg.val_dataloader is not None and cfg.test_evaluator.ann_file


def test_split_is_deterministic_stratified_and_copies_no_image(tmp_path, capsys):
    root = write_cvat_coco(tmp_path / "cvat")
    assert main(["split", str(root), "--dest", str(tmp_path / "a"), "--val", "0.25", "--test", "0.25"]) == 0
    assert main(["split", str(root), "--dest", str(tmp_path / "b"), "--val", "0.25", "--test", "0.25"]) == 0
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["pisa-data.json", "test.json", "train.json",
                                                                       "val.json"]
    for split in ("train", "val", "test"):
        a, b = (json.loads((tmp_path / name / f"{split}.json").read_text()) for name in ("a", "b"))
        assert a == b
        names = {c["id"]: c["name"] for c in a["categories"]}
        assert {names[annotation["category_id"]] for annotation in a["annotations"]} == set(CLASSES)
        assert all((root / image["file_name"]).is_file() for image in a["images"])  # paths into the dataset
        assert [annotation["id"] for annotation in a["annotations"]] == list(range(1, len(a["annotations"]) + 1))
    counts = [len(json.loads((tmp_path / "a" / f"{s}.json").read_text())["images"]) for s in ("train", "val", "test")]
    assert sum(counts) == 12 and counts[0] >= 4
    other_seed = tmp_path / "c"
    assert main(["split", str(root), "--dest", str(other_seed), "--seed", "1"]) == 0
    assert json.loads((other_seed / "val.json").read_text()) != json.loads((tmp_path / "a" / "val.json").read_text())


def test_data_on_a_one_file_dataset_trains_on_all_of_it_and_says_how_to_split(tmp_path):
    root = write_cvat_coco(tmp_path / "cvat")
    cfg, notes = build_train_config(train_cli.parse_request(
        [str(X101_PISA_CONFIG), "--data", str(root), "--work-dir", str(tmp_path / "work")]), "cpu")
    assert cfg.val_dataloader is None
    assert (f"{root} has no validation or test split: training runs on all of it, without validation "
            f"(val_dataloader, val_cfg and val_evaluator are None); to hold images out for validation, "
            f"`pisa-data split {root} --dest {root}-split` and train with --data {root}-split") in notes


def test_pisa_eval_on_a_dataset_without_a_split_to_test_on_names_pisa_data_split(tmp_path):
    root = write_cvat_coco(tmp_path / "cvat")
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"")
    with pytest.raises(DataError) as refused:
        build_test_config(eval_cli.parse_request([str(X101_PISA_CONFIG), str(checkpoint), "--data", str(root),
                                                  "--work-dir", str(tmp_path / "work")]), "cpu")
    assert str(refused.value) == (
        f"dataset {root} has no validation or test split to evaluate on; hold some images out with "
        f"`pisa-data split {root} --dest {root}-split`, train on that folder and evaluate with --data {root}-split")
    assert eval_cli.main([str(X101_PISA_CONFIG), str(checkpoint), "--data", str(root)]) == exit_codes.DATA_ERROR


# --- New bad inputs: one line and an exit code each (docs/cli.md's table names these tests).

def test_a_folder_with_no_annotation_file_at_all(tmp_path, capsys):
    write_picture(tmp_path / "photos" / "images" / "a.jpg", 0)
    assert main(["check", str(tmp_path / "photos")]) == exit_codes.DATA_ERROR
    assert capsys.readouterr().err.strip() == (
        f"pisa-data: error: no COCO-format dataset recognised in {tmp_path / 'photos'}: expected "
        f"train/_annotations.coco.json (Roboflow; the images beside it or in train/images/), "
        f"annotations/instances_train2017.json with train2017/ (COCO 2017) or annotations/train.json with train/, "
        f"or an annotation .json beside an images/ folder")


def test_a_yolo_folder_without_a_class_list(tmp_path, capsys):
    root = write_yolo(tmp_path / "yolo", with_names=False)
    assert main(["convert", str(root), "--dest", str(tmp_path / "out")]) == exit_codes.DATA_ERROR
    assert capsys.readouterr().err.strip() == (
        f"pisa-data: error: YOLO dataset {root} has no class list: its label files number the classes, and nothing "
        f"names them; write the names one a line, in the order of their ids, into {root / 'classes.txt'} (or as "
        f"`names:` in data.yaml)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, line", [
    (["--val", "1.5"], "--val 1.5 is out of range: give the fraction of the images to hold out, from 0 to below 1 "
                       "(e.g. --val 0.2)"),
    (["--val", "0.6", "--test", "0.5"], "--val 0.6 and --test 0.5 leave no images to train on; keep their sum below "
                                        "1 (e.g. --val 0.2 --test 0.1)")])
def test_a_split_fraction_out_of_range(tmp_path, capsys, flags, line):
    root = write_cvat_coco(tmp_path / "cvat")
    assert main(["split", str(root), "--dest", str(tmp_path / "out"), *flags]) == exit_codes.USAGE_ERROR
    assert capsys.readouterr().err.strip() == f"pisa-data: error: {line}"
    assert not (tmp_path / "out").exists()


# --- Background images: trained on, counted by check.

def test_background_images_are_counted_by_check_and_trained_on(tmp_path, capsys):
    root = ready_for_data("yolo", tmp_path)  # images/train/background.jpg has no label file
    report = check_dataset(root)
    [line] = [problem.message for problem in report.warnings if problem.kind == "images-without-boxes"]
    assert line == ("1 of 9 images have no boxes (images/train/background.jpg): trained on as background images; "
                    "annotate them if they should have boxes")
    argv = [str(DEMO_CONFIG), "--data", str(root), "--work-dir", str(tmp_path / "work")]
    cfg, _ = build_train_config(train_cli.parse_request(argv), "cpu")
    assert innermost_dataset(cfg.train_dataloader.dataset).filter_cfg.filter_empty_gt is False
    assert cfg.get("synthetic_dataset") is None  # no demo data generated for a run on the user's
    kept, _ = build_train_config(train_cli.parse_request(
        [*argv, "--cfg-options", "train_dataloader.dataset.filter_cfg.filter_empty_gt=True"]), "cpu")
    assert innermost_dataset(kept.train_dataloader.dataset).filter_cfg.filter_empty_gt is True


# --- EXIF orientation, both ways: compared as the loader decodes the image.

def _rotated_jpeg(path: Path) -> None:
    """A photo stored 48 wide and 32 high, tagged Orientation=6 (turn 90 degrees): decoded 32x48."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (48, 32), (90, 120, 200)).save(path, exif=exif)


def _one_image_dataset(root: Path, width: int, height: int) -> Path:
    _rotated_jpeg(root / "images" / "photo.jpg")
    (root / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "photo.jpg", "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}))
    return root


def test_boxes_in_the_displayed_orientation_pass(tmp_path):
    root = _one_image_dataset(tmp_path / "ds", 32, 48)
    assert mmcv.imread(str(root / "images" / "photo.jpg")).shape[:2] == (48, 32)  # the loader rotates it
    assert check_dataset(root).problems == []


def test_boxes_in_the_stored_orientation_are_an_error_in_check_and_for_data(tmp_path, capsys):
    root = _one_image_dataset(tmp_path / "ds", 48, 32)
    line = ("image images/photo.jpg is stored 48x32 with EXIF orientation 6, which the loader applies (32x48), but "
            "train.json gives it as 48x32: its boxes are in the stored orientation and would land beside the "
            "objects; remove the orientation tag (exiftool -Orientation= -n FILE) or annotate the image as it is "
            "displayed")
    assert [problem.message for problem in check_dataset(root).errors] == [line]
    with pytest.raises(DataError) as refused:
        build_train_config(train_cli.parse_request([str(X101_PISA_CONFIG), "--data", str(root)]), "cpu")
    assert str(refused.value) == f"train.json: {line}; `pisa-data check {root}` lists every problem"


# --- The same verdict from check and from --data.

def _label_studio_with(tmp_path: Path, change) -> Path:
    root = write_label_studio_coco(tmp_path / "ls")
    data = json.loads((root / "result.json").read_text())
    change(data, root)
    (root / "result.json").write_text(json.dumps(data))
    return root


def _verdicts(root: Path, tmp_path: Path) -> tuple[list[str], str | None, dict | None]:
    """check's errors, --data's refusal (None if it trains) and the train annotations the run reads."""
    errors = [problem.message for problem in check_dataset(root).errors]
    work = tmp_path / "work"
    try:
        cfg, _ = build_train_config(train_cli.parse_request(
            [str(X101_PISA_CONFIG), "--data", str(root), "--work-dir", str(work)]), "cpu")
    except DataError as error:
        return errors, str(error), None
    dataset = innermost_dataset(cfg.train_dataloader.dataset)
    return errors, None, json.loads((Path(dataset.data_root) / dataset.ann_file).read_text())


def _set(key, value, which=0):
    def change(data, root):
        data["annotations"][which][key] = value
    return change


def _duplicate_image_id(data, root):
    """Two images of one id, each with its boxes (as a merge of two exports numbered from 0 leaves them)."""
    first, second = data["images"][0]["id"], data["images"][1]["id"]
    data["images"][1]["id"] = first
    for annotation in data["annotations"]:
        if annotation["image_id"] == second:
            annotation["image_id"] = first


def _empty_image(data, root):
    (root / data["images"][2]["file_name"]).write_bytes(b"")


@pytest.mark.parametrize("change, error", [
    (_duplicate_image_id, "images images/0000c0ffee-photo_0.jpg and images/0001c0ffee-photo_1.jpg share the id 0: "
                          "the loader would give one of them the boxes of both and drop the other; give each image "
                          "its own id (export again)"),
    (_set("bbox", ["2", 2, 10, 10]), "annotation 0 (image images/0000c0ffee-photo_0.jpg) has bbox ['2', 2, 10, 10], "
                                     "not [x, y, width, height]; fix or remove it"),
    (_set("bbox", [2, 2, math.nan, 10]), "annotation 0 (image images/0000c0ffee-photo_0.jpg) has bbox "
                                         "[2, 2, nan, 10], not [x, y, width, height]; fix or remove it"),
    (_set("bbox", [2, 2, math.inf, 10]), "annotation 0 (image images/0000c0ffee-photo_0.jpg) has bbox "
                                         "[2, 2, inf, 10], not [x, y, width, height]; fix or remove it"),
    (_empty_image, "image images/0002c0ffee-photo_2.jpg is empty (0 bytes); replace the file or remove its entry "
                   "from result.json"),
], ids=["duplicate-image-id", "string-coordinate", "nan", "inf", "empty-image"])
def test_check_and_data_refuse_the_same_bad_annotations(tmp_path, change, error):
    root = _label_studio_with(tmp_path, change)
    errors, refusal, _ = _verdicts(root, tmp_path)
    assert errors == [error]
    assert refusal == f"result.json: {error}; `pisa-data check {root}` lists every problem"


def test_an_undecodable_image_is_named_by_both(tmp_path):
    root = _label_studio_with(tmp_path, lambda data, root: (root / data["images"][2]["file_name"]).write_bytes(
        b"not an image at all"))
    errors, refusal, _ = _verdicts(root, tmp_path)
    assert len(errors) == 1 and errors[0].startswith(
        "image images/0002c0ffee-photo_2.jpg cannot be read (UnidentifiedImageError: ")
    assert refusal == f"result.json: {errors[0]}; `pisa-data check {root}` lists every problem"


def test_an_image_over_the_pixel_limit_is_refused_by_both(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 2 - 1)  # 64x64 is just over twice the limit
    root = write_label_studio_coco(tmp_path / "ls")
    errors, refusal, _ = _verdicts(root, tmp_path)
    assert len(errors) == 12 and errors[0] == (
        f"image images/0000c0ffee-photo_0.jpg is over the decoder's limit of {64 * 64 - 2} pixels (a decompression "
        f"bomb, or a photo far larger than training needs); downscale it and its boxes, or remove its entry from "
        f"result.json")
    assert refusal == f"result.json: {errors[0]} (and 11 more errors); `pisa-data check {root}` lists every problem"


@pytest.mark.parametrize("change", [_set("id", 5, which=1), lambda data, root: data["annotations"][3].pop("area")],
                         ids=["duplicate-annotation-id", "missing-area"])
def test_what_the_run_can_correct_passes_both_and_is_corrected(tmp_path, change):
    root = _label_studio_with(tmp_path, change)
    errors, refusal, read = _verdicts(root, tmp_path)
    assert errors == [] and refusal is None
    assert [annotation["id"] for annotation in read["annotations"]] == list(range(1, len(read["annotations"]) + 1))
    assert all(annotation["area"] == annotation["bbox"][2] * annotation["bbox"][3]
               for annotation in read["annotations"])
    assert json.loads((root / "result.json").read_text()) != read  # the user's file stays as it was


# --- The check's image grid reads the images where check and training find them.

def test_the_training_image_grid_of_a_label_studio_export_shows_its_boxes(tmp_path, capsys):
    """Label Studio's file_names say images/<name>: the grid was all white when it joined them to the folder."""
    root = write_label_studio_coco(tmp_path / "ls")
    assert main(["check", str(root), "--plots", str(tmp_path / "plots")]) == 0
    with Image.open(tmp_path / "plots" / "train_images.jpg") as grid:
        grid = grid.convert("RGB")
    side = 4  # 12 images: 4 a row, each in a 320 px cell at (2, 2), at its own size (64 px)
    checked = 0
    for index in range(12):
        left, top = (index % side) * 320 + 2, (index // side) * 320 + 2
        for class_index, (x, y, w, h) in objects(index):
            # Low in the box: the class label is drawn over its top.
            pixel = grid.getpixel((left + int(x + w / 2), top + int(y + h - 4)))
            assert all(abs(channel - expected) < 60 for channel, expected in zip(pixel, COLOURS[class_index])), \
                (index, class_index, pixel)
            checked += 1
    assert checked == 16


# --- End to end: each layout trains 2 iterations and pisa-eval gives COCO metrics.

@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_trains_two_iterations_and_evaluates(layout, tmp_path, run_cli):
    folder = ready_for_data(layout, tmp_path)
    work = tmp_path / "work"
    result = run_cli("train", [DEMO_CONFIG, "--device", "cpu", "--work-dir", work, "--max-iters", "2",
                               "--data", folder, "--cfg-options", *MODEL_OPTIONS, *TRAIN_OPTIONS,
                               "--cfg-add", *ADDED], cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert f"classes ({len(CLASSES)}): {', '.join(CLASSES)}" in log and "Iter(train) [2/2]" in log
    assert not (tmp_path / "data").exists()  # the demo's synthetic data was not generated
    state = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=False)["state_dict"]
    assert state["roi_head.bbox_head.fc_cls.weight"].shape[0] == len(CLASSES) + 1  # + background
    metrics = tmp_path / "metrics.json"
    result = run_cli("evaluate", [DEMO_CONFIG, work / "iter_2.pth", "--device", "cpu", "--work-dir", work,
                                  "--data", folder, "--out", metrics, "--cfg-options", *MODEL_OPTIONS, *TEST_OPTIONS,
                                  "--cfg-add", "model.backbone.base_channels=16"], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    text = metrics.read_text()
    assert "bbox" in text and "AP" in text


# --- Image paths stay inside the dataset (issue 20, point 1): absolute, climbing out with ../, a link out.

def _pointing_outside(tmp_path: Path, form: str) -> tuple[Path, str, Path]:
    """A Label Studio export whose first image entry names a private photo outside it, in ``form``;
    (the dataset, the entry, the photo)."""
    private = tmp_path / "home" / "private.jpg"
    private.parent.mkdir(parents=True)
    Image.new("RGB", (SIZE, SIZE), (0, 255, 0)).save(private)
    root = write_label_studio_coco(tmp_path / "ls")
    data = json.loads((root / "result.json").read_text())
    entry = {"absolute": str(private), "climbing-out": "../home/private.jpg", "link-out": "images/link.jpg"}[form]
    if form == "link-out":
        (root / "images" / "link.jpg").symlink_to(private)
    data["images"][0]["file_name"] = entry
    (root / "result.json").write_text(json.dumps(data))
    return root, entry, private


@pytest.mark.parametrize("form", ["absolute", "climbing-out", "link-out"])
def test_an_image_outside_the_dataset_is_refused_by_check_data_and_the_plots(tmp_path, capsys, form):
    root, entry, private = _pointing_outside(tmp_path, form)
    line = (f"image entry {entry!r} resolves to {private}, outside the dataset {root}; copy the image into the "
            f"dataset and name it by its path there")
    assert main(["check", str(root), "--plots", str(tmp_path / "plots")]) == exit_codes.DATA_ERROR
    out = capsys.readouterr().out
    assert f"  result.json: {line}" in out.splitlines()
    with Image.open(tmp_path / "plots" / "train_images.jpg") as grid:  # drawn without the private photo
        assert not any(green > 200 and red < 60 and blue < 60
                       for _, (red, green, blue) in grid.convert("RGB").getcolors(maxcolors=1 << 20))
    with pytest.raises(DataError) as refused:
        build_train_config(train_cli.parse_request([str(X101_PISA_CONFIG), "--data", str(root)]), "cpu")
    assert str(refused.value) == f"result.json: {line}; `pisa-data check {root}` lists every problem"


def test_a_cvat_export_of_a_task_with_subsets_is_split_by_them(tmp_path, capsys):
    """CVAT names a subset's files after it: annotations/instances_Train.json with images/Train/."""
    root = LAYOUTS["instances-with-image-folders"](tmp_path / "cvat")
    for split, subset in (("train", "Train"), ("val", "Validation")):
        (root / "images" / split).rename(root / "images" / subset)
        (root / "annotations" / f"instances_{split}.json").rename(root / "annotations" / f"instances_{subset}.json")
    assert main(["check", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train  annotations/instances_Train.json" in out and "val    annotations/instances_Validation.json" in out
    assert _class_rows(out) == list(CLASSES)


def test_an_outside_image_that_arrives_in_a_clean_download_is_refused_before_use(tmp_path, capsys):
    """The archive has no links and no `..`: its annotation file names the outside image itself."""
    root, entry, private = _pointing_outside(tmp_path, "absolute")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as packed:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                packed.write(path, path.relative_to(root).as_posix())
    with LocalHTTPServer(files={"/export.zip": archive.getvalue()}) as server:
        dest = tmp_path / "data" / "downloaded"
        assert main(["download", server.url("/export.zip"), "--dest", str(dest)]) == 0
    capsys.readouterr()
    assert main(["check", str(dest)]) == exit_codes.DATA_ERROR
    assert (f"  result.json: image entry {entry!r} resolves to {private}, outside the dataset {dest}; copy the "
            f"image into the dataset and name it by its path there") in capsys.readouterr().out.splitlines()
    with pytest.raises(DataError, match="outside the dataset"):
        build_train_config(train_cli.parse_request([str(X101_PISA_CONFIG), "--data", str(dest)]), "cpu")
