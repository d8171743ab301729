"""Annotation ids that COCO evaluation cannot use (issue 19).

COCOeval (pycocotools and faster-coco-eval alike) records the id of the ground-truth box each
detection matched, 0 meaning "unmatched", and Roboflow numbers annotations from 0: the box with id 0
counts as missed and its detection as false, so AP is silently low. Duplicate ids are one box to COCO's
index, and mmdet's CocoDataset refuses them. Every evaluation pisa-train runs (pisa-eval's metrics and
error analysis, validation during training) must score such a file exactly as its twin numbered from 1,
and leave the user's file as it is. Each test also shows the bug on the raw file, so it can fail.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import X101_PISA_CONFIG
from generated_coco import generate_ground_truth_and_detections
from mmdet.datasets import CocoDataset
from mmdet.evaluation import CocoMetric
from mmengine import Config
from roboflow_export import read_export
from tiny_coco import coco_dict, make_roboflow

from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_test_config, build_train_config
from pisa_train.config.dataset_folder import use_dataset_folder
from pisa_train.data import coco_annotations
from pisa_train.data.coco_annotations import annotation_id_problems
from pisa_train.data.layout import resolve_dataset
from pisa_train.data.presence import dataset_classes, dataset_image_folder, innermost_dataset
from pisa_train.results import error_analysis
from pisa_train.results.coco_metrics import coco_api, evaluate_bbox
from pisa_train.results.evaluation_analysis import evaluate_and_analyse

BACKENDS = ("pycocotools", "faster-coco-eval")
FROM_0_NOTE = ("annotation ids renumbered from 1 (the file numbers them from 0, which COCO evaluation reads as "
               "'unmatched')")


def perfect_detections(ground_truth: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in ground_truth["annotations"] if not a.get("iscrowd")]


def with_ids(ground_truth: dict, ids) -> dict:
    twin = copy.deepcopy(ground_truth)
    for annotation, new_id in zip(twin["annotations"], ids):
        annotation["id"] = new_id
    return twin


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def plain_coco_eval(ground_truth_file: Path, detections: list[dict], backend: str) -> np.ndarray:
    """The COCO statistics as COCOeval computes them from the file itself, as pisa-train did before."""
    COCO, COCOeval = coco_api(backend)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # faster-coco-eval 1.8 warns of an id 0 itself, and goes on
        gt = COCO(str(ground_truth_file))
        evaluation = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return np.asarray(evaluation.stats)


def file_contents(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


@pytest.mark.parametrize("ids, problems", [
    ([1, 2, 3], []),
    ([9, 4, 100], []),  # neither contiguous nor sorted: fine, COCO needs distinct and not 0
    ([0, 1, 2], ["the file numbers them from 0, which COCO evaluation reads as 'unmatched'"]),
    ([3, 3, 5, 5], ["the file repeats 2 of its ids, e.g. 3, which mmdet refuses and COCO evaluation reads as one box"]),
    ([1, None, 2], ["1 of 3 annotations have no id"]),
    ([True, 2, -1, 1.5, "7"], ["4 of 5 ids are not positive integers, e.g. true"]),
])
def test_which_ids_coco_evaluation_cannot_use(ids, problems):
    annotations = [{"image_id": 1} if value is None else {"id": value, "image_id": 1} for value in ids]
    assert annotation_id_problems(annotations) == problems


def test_the_ids_of_a_file_too_large_to_parse_are_not_checked_when_the_dataset_is_read(tmp_path, monkeypatch):
    root = make_roboflow(tmp_path / "ds", splits=("train",))  # numbered from 0
    assert resolve_dataset(root).ids_to_renumber == {"train": annotation_id_problems(coco_dict()["annotations"])[0]}
    monkeypatch.setattr(coco_annotations, "_FULL_PARSE_LIMIT_BYTES", 10)  # COCO's 448 MB train file, say
    layout = resolve_dataset(root)
    assert layout.classes == ("cat", "dog") and layout.dropped_categories == ("things",)  # the rest still read
    assert layout.ids_to_renumber == {}  # pisa-eval still renumbers in memory (below)


# pisa-eval's metrics and its error analysis (results/), on the real Roboflow export and generated data.

@pytest.fixture
def badminton(roboflow_fixture) -> Path:
    """The Roboflow export's train annotations, as exported: boxes numbered from 0."""
    return roboflow_fixture / "train" / "_annotations.coco.json"


@pytest.fixture
def export_classes(roboflow_fixture) -> list[str]:
    return list(read_export(roboflow_fixture).classes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_roboflow_export_scores_exactly_as_its_twin_numbered_from_1(tmp_path, backend, badminton,
                                                                        export_classes):
    raw = json.loads(badminton.read_text())
    assert min(a["id"] for a in raw["annotations"]) == 0  # as Roboflow exports it
    twin = write_json(tmp_path / "twin.json", with_ids(raw, range(1, len(raw["annotations"]) + 1)))
    detections = perfect_detections(raw)
    before = badminton.read_bytes()

    ours = evaluate_bbox(badminton, copy.deepcopy(detections), backend, classes=export_classes).stats
    assert np.asarray(ours).tolist() == np.asarray(
        evaluate_bbox(twin, copy.deepcopy(detections), backend, classes=export_classes).stats).tolist()
    assert ours[0] == 1.0  # AP of perfect detections
    # The bug this guards against: COCOeval on the file as exported misses the box with id 0.
    assert plain_coco_eval(twin, detections, backend)[0] == 1.0
    assert plain_coco_eval(badminton, detections, backend)[0] < 0.99  # the real export: 0.943
    assert badminton.read_bytes() == before


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ids, shows_the_bug", [
    (lambda n: range(n), True),  # numbered from 0
    (lambda n: [k // 2 + 1 for k in range(n)], True),  # every id twice
    (lambda n: [str(k + 1) for k in range(n)], False),  # not integers (COCOeval cannot run on them at all)
], ids=["from-0", "duplicated", "strings"])
def test_ground_truth_with_unusable_ids_scores_exactly_as_numbered_from_1(tmp_path, backend, ids, shows_the_bug):
    ground_truth, detections = generate_ground_truth_and_detections(num_images=60, num_classes=3, seed=14)
    reference = evaluate_bbox(copy.deepcopy(ground_truth), copy.deepcopy(detections), backend)
    assert 0.1 < reference.stats[0] < 0.9  # imperfect detections: equal APs mean the same matches
    # (seed 14: the box that gets id 0 is one a detection finds; the check below fails if it is not)
    unusable = with_ids(ground_truth, ids(len(ground_truth["annotations"])))
    path = write_json(tmp_path / "unusable.json", unusable)

    for given in (path, unusable):  # a file, as pisa-eval reads it, and a dict
        evaluation = evaluate_bbox(given, copy.deepcopy(detections), backend)
        np.testing.assert_array_equal(np.asarray(evaluation.stats), np.asarray(reference.stats))
        np.testing.assert_array_equal(np.asarray(evaluation.eval["precision"]), np.asarray(reference.eval["precision"]))
    assert json.loads(path.read_text()) == unusable  # read, never written
    if shows_the_bug:
        assert not np.array_equal(plain_coco_eval(path, detections, backend), np.asarray(reference.stats))


def test_the_error_analysis_of_perfect_detections_finds_no_error_on_a_file_numbered_from_0(badminton,
                                                                                           export_classes):
    raw = json.loads(badminton.read_text())
    detections = perfect_detections(raw)
    boxes = len(raw["annotations"])

    matrix = error_analysis.confusion_matrix(badminton, detections, export_classes, score_thr=0.3)
    assert matrix.counts.tolist() == [[boxes, 0], [0, 0]]
    breakdown = error_analysis.error_breakdown(badminton, detections, export_classes)
    assert breakdown["ap"]["C75"] == 1.0 and set(breakdown["gain_if_fixed"].values()) == {0.0}
    assert all(entry["missed"] == entry["false"] == 0
               for entry in error_analysis.image_errors(raw, detections, export_classes, score_thr=0.3))
    # The bug this guards against: faster-coco-eval's COCOeval, on which the breakdown runs, misses box 0.
    assert plain_coco_eval(badminton, detections, "faster-coco-eval")[2] < 1.0  # AP at IoU 0.75


# --data: the run reads a renumbered copy in the work dir (config/dataset_folder.py).

def _split_files(work: Path) -> dict[str, Path]:
    return {split: work / "annotations" / f"{split}.json" for split in ("train", "val", "test")}


def _without_ids(data: dict) -> dict:
    return {**data, "annotations": [{k: v for k, v in a.items() if k != "id"} for a in data["annotations"]]}


def _renumbered_config_checked(cfg, work: Path, original: dict) -> None:
    copies = _split_files(work)
    for loader, split in (("train_dataloader", "train"), ("val_dataloader", "val"), ("test_dataloader", "test")):
        assert innermost_dataset(cfg[loader].dataset).ann_file == str(copies[split])
    assert cfg.val_evaluator.ann_file == str(copies["val"])
    assert cfg.test_evaluator.ann_file == str(copies["test"])
    for path in copies.values():
        data = json.loads(path.read_text())
        assert [a["id"] for a in data["annotations"]] == list(range(1, len(original["annotations"]) + 1))
        assert _without_ids(data) == _without_ids(original)  # nothing else changed


@pytest.mark.parametrize("ids, reason", [
    ((0, 1, 2), "the file numbers them from 0, which COCO evaluation reads as 'unmatched'"),
    ((4, 4, 9), "the file repeats 1 of its ids, e.g. 4, which mmdet refuses and COCO evaluation reads as one box"),
], ids=["from-0", "duplicated"])
def test_data_reads_a_renumbered_copy_and_leaves_the_dataset_as_it_is(tmp_path, ids, reason):
    original = coco_dict(boxes=[(0, 1, [5, 5, 20, 10]), (1, 2, [10, 10, 30, 20]), (1, 1, [30, 20, 20, 20])])
    original = with_ids(original, ids)
    root = make_roboflow(tmp_path / "ds", data=original)
    before = file_contents(root)
    work = tmp_path / "work"
    argv = [str(X101_PISA_CONFIG), "--data", str(root), "--work-dir", str(work)]

    # --print-config names the copies without writing them.
    printed = build_train_config(train_cli.parse_request([*argv, "--print-config"]), "cpu").cfg
    assert not work.exists()
    cfg, notes = build_train_config(train_cli.parse_request(argv), "cpu")
    assert cfg.to_dict() == printed.to_dict()
    _renumbered_config_checked(cfg, work, original)
    assert (f"  the train split is read from {work / 'annotations' / 'train.json'}: a copy of "
            f"train/_annotations.coco.json with annotation ids renumbered from 1 ({reason})") in notes
    assert file_contents(root) == before  # the user's files, byte for byte

    if ids == (4, 4, 9):  # what the copy spares: mmdet's CocoDataset refuses the file itself
        def load(ann_file):
            return CocoDataset(data_root=str(root), ann_file=str(ann_file), data_prefix=dict(img="train/"),
                               metainfo=dict(classes=("cat", "dog")), pipeline=[])
        with pytest.raises(AssertionError, match="are not unique"):
            load(root / "train" / "_annotations.coco.json")
        assert len(load(_split_files(work)["train"])) == 2


def test_one_copy_corrects_both_the_file_names_and_the_ids(tmp_path):
    original = coco_dict()  # numbered from 0
    root = make_roboflow(tmp_path / "ds", splits=("train",), data=original)
    exported = {**original, "images": [{**image, "file_name": f"export/{image['file_name']}"}
                                       for image in original["images"]]}
    write_json(root / "train" / "_annotations.coco.json", exported)
    annotations = tmp_path / "work" / "annotations"
    config = Config(dict(train_dataloader=dict(dataset=dict(type="CocoDataset")),
                         model=dict(bbox_head=dict(num_classes=80))))
    cfg, notes = use_dataset_folder(config, root, annotations)
    assert cfg.train_dataloader.dataset.ann_file == str(annotations / "train.json")
    assert (f"  the train split is read from {annotations / 'train.json'}: a copy of train/_annotations.coco.json "
            f"with the file names that are on disk and {FROM_0_NOTE}") in notes
    assert json.loads((annotations / "train.json").read_text()) == with_ids(original, (1, 2))


def test_data_writes_no_copy_where_the_ids_are_usable(tmp_path):
    root = make_roboflow(tmp_path / "ds", data=with_ids(coco_dict(), (1, 2)))
    work = tmp_path / "work"
    cfg, notes = build_train_config(train_cli.parse_request(
        [str(X101_PISA_CONFIG), "--data", str(root), "--work-dir", str(work)]), "cpu")
    assert innermost_dataset(cfg.train_dataloader.dataset).ann_file == "train/_annotations.coco.json"
    assert cfg.val_evaluator.ann_file == str(root / "valid" / "_annotations.coco.json")
    assert not work.exists() and not any("renumbered" in line for line in notes)


def _badminton_with_every_split(export: Path) -> Path:
    """The Roboflow export with its train split copied as valid/ and test/: all numbered from 0."""
    for split in ("valid", "test"):
        shutil.copytree(export / "train", export / split)
    return export


def test_validation_during_training_scores_the_real_export_as_its_twin(tmp_path, roboflow_export):
    """mmdet's CocoMetric, which validates during training, reads the copy --data names."""

    export = _badminton_with_every_split(roboflow_export)
    work = tmp_path / "work"
    cfg, notes = build_train_config(train_cli.parse_request(
        [str(X101_PISA_CONFIG), "--data", str(export), "--work-dir", str(work)]), "cpu")
    assert f"  the val split is read from {work / 'annotations' / 'val.json'}: a copy of " \
           f"valid/_annotations.coco.json with {FROM_0_NOTE}" in notes
    raw = json.loads((export / "valid" / "_annotations.coco.json").read_text())

    def validation_map(ann_file) -> float:
        metric = CocoMetric(ann_file=str(ann_file), metric="bbox")
        metric.dataset_meta = dict(classes=read_export(export).classes)
        samples = []
        for image in raw["images"]:
            boxes = [a["bbox"] for a in raw["annotations"] if a["image_id"] == image["id"]]
            samples.append(dict(img_id=image["id"], ori_shape=(image["height"], image["width"]), pred_instances=dict(
                bboxes=torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes]).reshape(-1, 4),
                scores=torch.ones(len(boxes)), labels=torch.zeros(len(boxes), dtype=torch.long))))
        metric.process({}, samples)
        return metric.evaluate(len(samples))["coco/bbox_mAP"]

    assert validation_map(cfg.val_evaluator.ann_file) == 1.0
    assert validation_map(export / "valid" / "_annotations.coco.json") < 0.99  # the bug: 0.943


def test_without_data_the_configs_own_evaluators_read_a_renumbered_copy(tmp_path, roboflow_export):
    """A config whose val and test evaluators name a file numbered from 0 (no --data): validation and pisa-eval
    read a copy numbered from 1 in the work dir, which scores as the twin; --print-config writes nothing, and a
    file whose ids are usable is read as it is."""
    source = roboflow_export / "train" / "_annotations.coco.json"
    before = source.read_bytes()
    work = tmp_path / "work"
    options = ["--cfg-options", f"val_evaluator.ann_file={source}", f"test_evaluator.ann_file={source}"]
    argv = [str(X101_PISA_CONFIG), "--work-dir", str(work), *options]
    printed = build_train_config(train_cli.parse_request([*argv, "--print-config"]), "cpu").cfg
    assert not work.exists()
    cfg, notes = build_train_config(train_cli.parse_request(argv), "cpu")
    assert cfg.to_dict() == printed.to_dict()
    copies = {key: work / "annotations" / f"{key.split('_')[0]}_{source.name}" for key in ("val_evaluator",
                                                                                          "test_evaluator")}
    for key, copy_path in copies.items():
        assert cfg[key].ann_file == str(copy_path)
        assert f"  {key} reads {copy_path}: a copy of {source} with annotation ids renumbered from 1 (the file " \
               f"numbers them from 0, which COCO evaluation reads as 'unmatched')" in notes
        assert [a["id"] for a in json.loads(copy_path.read_text())["annotations"]] == list(
            range(1, len(json.loads(before)["annotations"]) + 1))
    assert source.read_bytes() == before  # the user's file, byte for byte
    raw = json.loads(before)
    detections = perfect_detections(raw)
    assert plain_coco_eval(copies["val_evaluator"], detections, "pycocotools")[0] == 1.0
    assert plain_coco_eval(source, detections, "pycocotools")[0] < 0.99  # what validation read before: 0.943

    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"")  # the test loop does not run here
    test_cfg, _ = build_test_config(eval_cli.parse_request(
        [str(X101_PISA_CONFIG), str(checkpoint), "--work-dir", str(work), *options]), "cpu")
    assert test_cfg.test_evaluator.ann_file == str(copies["test_evaluator"])

    usable = write_json(tmp_path / "usable.json", with_ids(raw, range(1, len(raw["annotations"]) + 1)))
    cfg, notes = build_train_config(train_cli.parse_request(
        [str(X101_PISA_CONFIG), "--work-dir", str(tmp_path / "other"), "--cfg-options",
         f"val_evaluator.ann_file={usable}"]), "cpu")
    assert cfg.val_evaluator.ann_file == str(usable) and not any("renumbered" in note for note in notes)


def test_pisa_eval_scores_and_analyses_the_real_export_as_its_twin(tmp_path, roboflow_export):
    """pisa-eval's config (--data) and what it does once the test loop has dumped the detections."""

    export = _badminton_with_every_split(roboflow_export)
    before = file_contents(export)
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"")  # the test loop does not run here
    work = tmp_path / "work"
    cfg, _ = build_test_config(eval_cli.parse_request(
        [str(X101_PISA_CONFIG), str(checkpoint), "--data", str(export), "--work-dir", str(work)]), "cpu")
    assert cfg.test_evaluator.ann_file == str(work / "annotations" / "test.json")
    raw = json.loads((export / "test" / "_annotations.coco.json").read_text())
    write_json(Path(f"{cfg.test_evaluator.outfile_prefix}.bbox.json"), perfect_detections(raw))

    record = evaluate_and_analyse(cfg.test_evaluator.ann_file, cfg.test_evaluator.outfile_prefix, ["bbox"],
                                  "faster-coco-eval", dataset_classes(cfg, "test_dataloader"),
                                  dataset_image_folder(cfg, "test_dataloader"), tmp_path / "analysis", 0.3, 8)
    [name] = read_export(export).classes
    assert record["bbox"]["AP"] == 1.0 and record["per_class"][name]["AP"] == 1.0
    assert record["analysis"]["error_breakdown_ap"]["C75"] == 1.0 and record["analysis"]["worst_images"] == []
    # The copy on its own scores 1.0 with plain COCOeval; the file as exported does not.
    assert plain_coco_eval(Path(cfg.test_evaluator.ann_file), perfect_detections(raw), "faster-coco-eval")[0] == 1.0
    assert plain_coco_eval(export / "test" / "_annotations.coco.json", perfect_detections(raw),
                           "faster-coco-eval")[0] < 0.99
    assert file_contents(export) == before
