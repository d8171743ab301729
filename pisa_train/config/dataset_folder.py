"""``--data DIR``: point a config at a COCO-format dataset folder (a pure config rewrite).

data/layout.py recognises the folder, finds its images and reads its classes; this
module sets ``data_root``, ``ann_file``, ``data_prefix`` and ``metainfo.classes`` of
the train, val and test datasets (inside any dataset wrappers), the evaluators'
``ann_file`` and the ``num_classes`` of every head that has one.

Where the images are found under other names than the annotation file's
``file_name`` (folders that are not on disk, another case), mmdet's CocoDataset,
which reads ``data_prefix.img + file_name``, could not find them; where the
annotation ids are ones COCO evaluation cannot use (numbered from 0, as Roboflow
does, or duplicated: data/coco_annotations.py), validation and pisa-eval would
report a wrong AP. Either way the run reads a corrected copy of the annotation
file (the names that are on disk, the annotations numbered 1..N in file order),
written into the work dir (``WORK_DIR/annotations/<split>.json``): the datasets and
the evaluators all name it. Not beside the data: a dataset folder may be read-only
or shared by several runs, and an extra .json there would change how its layout is
recognised; the work dir is the run's own, and its saved config names the copy it
trained on. The user's file is never written.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, NamedTuple

from pisa_train.config.loading import CONFIGS_DIR
from pisa_train.data.check import resolve_checked_dataset
from pisa_train.data.coco_annotations import summarise_annotation_file, write_corrected_copy
from pisa_train.data.layout import DatasetLayout, SplitFiles, describe_dataset
from pisa_train.data.presence import innermost_dataset
from pisa_train.errors import ConfigError, DataError


class DatasetApplied(NamedTuple):
    cfg: Any  # mmengine.Config
    notes: list[str]  # what the caller should log: missing splits and what was used instead


def _innermost_dataset(loader: Any, key: str) -> Any:
    dataset = innermost_dataset(loader.get("dataset") if loader is not None else None)
    if dataset is None:
        raise ConfigError(f"{key} has no 'dataset' to point at the data folder; fix the config")
    if "datasets" in dataset:
        raise ConfigError(f"{key} is a {dataset.get('type', 'ConcatDataset')} of several datasets; "
                          f"--data can only replace a single dataset, edit the config instead")
    return dataset


def _point_loader(cfg: Any, key: str, layout: DatasetLayout, files: SplitFiles) -> None:
    dataset = _innermost_dataset(cfg[key], key)
    dataset["data_root"] = str(layout.data_root)
    # An absolute path (a corrected copy) stays one: mmdet joins only relative ones to data_root.
    dataset["ann_file"] = files.ann_file
    dataset["data_prefix"] = dict(img=files.img_prefix)
    # The palette of the old classes would not match; mmdet makes one up.
    dataset["metainfo"] = dict(classes=layout.classes)


def _train_on_background_images(cfg: Any) -> None:
    """Images without boxes are trained on, as negatives (Ultralytics does; detectron2 has
    FILTER_EMPTY_ANNOTATIONS): mmdet's configs drop them with filter_empty_gt=True, while people add
    them to a dataset on purpose."""
    dataset = _innermost_dataset(cfg["train_dataloader"], "train_dataloader")
    dataset["filter_cfg"] = {**(dataset.get("filter_cfg") or {}), "filter_empty_gt": False}


def user_sets_filter_empty_gt(cfg: Any, cfg_options: list[str] | None = None) -> bool:
    """Whether the user decided ``filter_empty_gt`` (a config of their own that says it, or
    --cfg-options), which --data then keeps; pisa-train's own configs follow mmdet's default."""
    if any("filter_empty_gt" in option for option in cfg_options or ()):
        return True
    filename = cfg.get("filename") if isinstance(cfg, dict) else getattr(cfg, "filename", None)
    if not filename or Path(filename).resolve().parent == CONFIGS_DIR:
        return False
    try:
        return "filter_empty_gt" in Path(filename).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _point_evaluator(cfg: Any, key: str, layout: DatasetLayout, files: SplitFiles) -> None:
    evaluators = cfg[key] if isinstance(cfg[key], (list, tuple)) else [cfg[key]]
    for evaluator in evaluators:
        # CocoMetric reads ground truth from ann_file (a full path: it ignores data_root).
        if "ann_file" in evaluator or "Coco" in str(evaluator.get("type", "")):
            evaluator["ann_file"] = os.path.join(str(layout.data_root), files.ann_file)


def _class_heads(model: Any) -> list[Any]:
    heads = []
    roi_head = model.get("roi_head") or {}
    for candidate in (roi_head.get("bbox_head"), roi_head.get("mask_head"), model.get("bbox_head")):
        if candidate is None:
            continue
        heads.extend(candidate if isinstance(candidate, (list, tuple)) else [candidate])
    return [head for head in heads if "num_classes" in head]


def _never_validate(cfg: Any) -> None:
    cfg["val_dataloader"] = None
    cfg["val_cfg"] = None
    cfg["val_evaluator"] = None
    train_cfg = cfg.get("train_cfg")
    if train_cfg is not None:
        length = max(int(train_cfg.get("max_epochs") or 0), int(train_cfg.get("max_iters") or 0))
        train_cfg["val_interval"] = length + 1 if length else 10**9


def apply_dataset_folder(cfg: Any, layout: DatasetLayout, corrected_ann_files: dict[str, str] | None = None,
                         keep_filter_empty_gt: bool = False) -> DatasetApplied:
    """Point ``cfg`` (an mmengine Config in mmdet's CocoDataset style) at ``layout``.

    Returns a new config and the notes to log; ``cfg`` itself is not changed.
    Validation uses the val split, else the test split, else is switched off;
    testing uses the test split, else the val split. ``corrected_ann_files``: per split,
    the absolute path of the annotation file to read instead (``corrected_annotation_files``).
    Images without boxes are trained on unless ``keep_filter_empty_gt`` (the user decided).
    A demo config's synthetic dataset is not generated: the run reads ``layout`` instead.
    """
    cfg = copy.deepcopy(cfg)
    # mmdet's base configs say `test_dataloader = val_dataloader` and
    # `test_evaluator = val_evaluator`; a config built in code keeps them as
    # one object, so each gets its own copy before it is changed.
    for key in ("train_dataloader", "val_dataloader", "test_dataloader", "val_evaluator", "test_evaluator"):
        if cfg.get(key) is not None:
            cfg[key] = copy.deepcopy(cfg[key])

    if cfg.get("synthetic_dataset"):
        cfg["synthetic_dataset"] = None
    notes: list[str] = []
    splits = {split: SplitFiles((corrected_ann_files or {}).get(split, files.ann_file), files.img_prefix)
              for split, files in layout.splits.items()}
    if "train" in splits:
        if cfg.get("train_dataloader") is not None:
            _point_loader(cfg, "train_dataloader", layout, splits["train"])
            if not keep_filter_empty_gt:
                _train_on_background_images(cfg)
    else:
        notes.append(f"{layout.data_root} has no train split: train_dataloader is unchanged, "
                     f"use this dataset for evaluation only")

    val_split = "val" if "val" in splits else "test" if "test" in splits else None
    test_split = "test" if "test" in splits else val_split
    if val_split is None:
        _never_validate(cfg)
        notes.append(f"{layout.data_root} has no validation or test split: training runs on all of it, without "
                     f"validation (val_dataloader, val_cfg and val_evaluator are None); to hold images out for "
                     f"validation, `pisa-data split {layout.data_root} --dest {layout.data_root}-split` and train "
                     f"with --data {layout.data_root}-split")
    else:
        if val_split == "test":
            notes.append(f"{layout.data_root} has no validation split: validating on the test split "
                         f"({splits['test'].ann_file})")
        if cfg.get("val_dataloader") is not None:
            _point_loader(cfg, "val_dataloader", layout, splits[val_split])
        if cfg.get("val_evaluator") is not None:
            _point_evaluator(cfg, "val_evaluator", layout, splits[val_split])

    if test_split is None:
        cfg["test_dataloader"] = None
        cfg["test_cfg"] = None
        cfg["test_evaluator"] = None
        notes.append(f"{layout.data_root} has no split to test on: test_dataloader, test_cfg and "
                     f"test_evaluator are None")
    else:
        if cfg.get("test_dataloader") is not None:
            _point_loader(cfg, "test_dataloader", layout, splits[test_split])
        if cfg.get("test_evaluator") is not None:
            _point_evaluator(cfg, "test_evaluator", layout, splits[test_split])

    heads = _class_heads(cfg.get("model") or {})
    if not heads:
        raise ConfigError("the config's model has no head with num_classes (looked at model.roi_head.bbox_head, "
                          "model.roi_head.mask_head and model.bbox_head); set it with --cfg-options")
    for head in heads:
        head["num_classes"] = len(layout.classes)
    return DatasetApplied(cfg, notes)


def corrected_annotation_files(layout: DatasetLayout, annotations_dir: str | Path) -> dict[str, str]:
    """Per split whose images are found under other names than its file_names, or whose annotation
    ids need renumbering, the absolute path of its corrected copy: ``annotations_dir/<split>.json``."""
    return {split: os.path.abspath(os.path.join(annotations_dir, f"{split}.json")) for split in layout.splits
            if split in layout.renamed_images or split in layout.ids_to_renumber or split in layout.areas_to_compute}


def _what_the_copy_corrects(layout: DatasetLayout, split: str) -> str:
    corrections = ["the file names that are on disk"] if split in layout.renamed_images else []
    if split in layout.ids_to_renumber:
        corrections.append(f"annotation ids renumbered from 1 ({layout.ids_to_renumber[split]})")
    if split in layout.areas_to_compute:
        corrections.append(f"an area (width x height) for its {layout.areas_to_compute[split]} boxes without one")
    return " and ".join(corrections)


def use_dataset_folder(cfg: Any, folder: str | Path, annotations_dir: str | Path, write: bool = True,
                       cfg_options=()) -> DatasetApplied:
    """``--data DIR``: resolve the folder and point the config at it; the notes start with the
    resolved settings, for the log. Where file_names need other names or annotation ids need
    renumbering, the corrected annotation files go into ``annotations_dir`` (unless ``write`` is
    False: the config names them all the same). What ``pisa-data check`` calls an error is refused
    (data/check.py). ``cfg_options``: the --cfg-options given (``user_sets_filter_empty_gt``)."""
    layout, annotations = resolve_checked_dataset(folder)
    corrected = corrected_annotation_files(layout, annotations_dir)
    notes = []
    for split, path in corrected.items():
        if write:
            write_corrected_copy(layout.data_root / layout.splits[split].ann_file, Path(path),
                                 layout.renamed_images.get(split), renumber_ids=split in layout.ids_to_renumber,
                                 data=annotations.get(split))
        notes.append(f"  the {split} split is read from {path}: a copy of {layout.splits[split].ann_file} with "
                     f"{_what_the_copy_corrects(layout, split)}")
    keep_filter_empty_gt = user_sets_filter_empty_gt(cfg, [str(option) for option in cfg_options or ()])
    applied = apply_dataset_folder(cfg, layout, corrected, keep_filter_empty_gt)
    # split at our newlines only (splitlines() would split a class name at its \r): the notes' text is escaped
    # when written (terminal.write_line)
    return DatasetApplied(applied.cfg, describe_dataset(layout).split("\n") + notes + applied.notes)


def require_split_to_test(cfg: Any, folder: str | Path) -> None:
    """pisa-eval ``--data DIR``: a dataset with neither a validation nor a test split has nothing to
    evaluate on (apply_dataset_folder left the config no test_dataloader)."""
    if cfg.get("test_dataloader") is None:
        raise DataError(f"dataset {folder} has no validation or test split to evaluate on; hold some images out "
                        f"with `pisa-data split {folder} --dest {Path(folder).as_posix().rstrip('/')}-split`, train "
                        f"on that folder and evaluate with --data {Path(folder).as_posix().rstrip('/')}-split")


def _coco_evaluators(cfg: Any, key: str) -> list[Any]:
    evaluators = cfg.get(key)
    evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
    return [evaluator for evaluator in evaluators if isinstance(evaluator, dict)
            and "CocoMetric" in str(evaluator.get("type", "")) and isinstance(evaluator.get("ann_file"), str)]


def use_usable_annotation_ids(cfg: Any, annotations_dir: str | Path, write: bool = True) -> DatasetApplied:
    """Without ``--data``: each COCO evaluator whose annotation file has ids that COCO evaluation cannot use
    (from 0, repeated, missing) reads a copy numbered 1..N, ``annotations_dir/<val|test>_<file name>``, as
    ``--data`` does (the module's docstring says why the work dir); the user's file is not written. A file
    too large to read in full here (data/coco_annotations.py) is left as it is."""
    cfg, notes = copy.deepcopy(cfg), []
    for key in ("val_evaluator", "test_evaluator"):
        for evaluator in _coco_evaluators(cfg, key):
            source = Path(evaluator["ann_file"])
            if not source.is_file() or Path(annotations_dir) in source.parents:
                continue  # missing: the run's own check says so; in the work dir: a copy already
            problems = summarise_annotation_file(source).id_problems
            if not problems:
                continue
            target = Path(annotations_dir) / f"{key.split('_')[0]}_{source.name}"
            if write:
                write_corrected_copy(source, target, renumber_ids=True)
            evaluator["ann_file"] = str(target)
            notes.append(f"  {key} reads {target}: a copy of {source} with annotation ids renumbered from 1 "
                         f"({'; '.join(problems)})")
    return DatasetApplied(cfg, notes)
