"""Check, before MMEngine starts, that the files a config's datasets name are there.

Without this check a missing COCO folder surfaces minutes later, deep in a
dataloader worker, as a FileNotFoundError traceback.
"""
from __future__ import annotations

import os.path as osp

from pisa_train.errors import DataError

GET_DATA_HINT = ("download COCO 2017 with `pisa-data download coco2017 --dest data/coco`, or point the config at "
                 "a COCO-format folder with --data DIR")


def innermost_dataset(dataset_cfg):
    """The dataset inside any wrappers (RepeatDataset, ClassBalancedDataset, MultiImageMixDataset
    keep the real one in ``dataset``); None for None."""
    while dataset_cfg is not None and dataset_cfg.get("dataset") is not None:
        dataset_cfg = dataset_cfg["dataset"]
    return dataset_cfg


def dataset_classes(cfg, dataloader_key: str) -> list[str] | None:
    """The class names a dataloader's dataset is limited to (``metainfo.classes``), or None."""
    loader = cfg.get(dataloader_key) or {}
    classes = ((innermost_dataset(loader.get("dataset")) or {}).get("metainfo") or {}).get("classes")
    return list(classes) if classes else None


def dataset_image_folder(cfg, dataloader_key: str) -> str | None:
    """The folder a dataloader's images are read from (``data_root`` joined with ``data_prefix.img``)."""
    dataset = innermost_dataset((cfg.get(dataloader_key) or {}).get("dataset")) or {}
    prefix = (dataset.get("data_prefix") or {}).get("img")
    return osp.join(dataset.get("data_root") or "", prefix) if prefix is not None else None


def dataset_paths(cfg, dataloader_keys=("train_dataloader", "val_dataloader", "test_dataloader")):
    """(setting, path) for each annotation file and image folder the config's datasets read."""
    paths = []
    for key in dataloader_keys:
        loader = cfg.get(key)
        dataset = innermost_dataset(loader.get("dataset")) if loader else None
        if not dataset:
            continue
        data_root = dataset.get("data_root") or ""
        ann_file = dataset.get("ann_file")
        if ann_file:
            paths.append((f"{key}.dataset.ann_file", osp.join(data_root, ann_file)))
        image_prefix = (dataset.get("data_prefix") or {}).get("img")
        if image_prefix is not None:
            paths.append((f"{key}.dataset.data_prefix.img", osp.join(data_root, image_prefix)))
    evaluator_keys = {"val_dataloader": "val_evaluator", "test_dataloader": "test_evaluator"}
    for loader_key, evaluator_key in evaluator_keys.items():
        evaluator = cfg.get(evaluator_key) if loader_key in dataloader_keys and cfg.get(loader_key) else None
        if isinstance(evaluator, dict) and evaluator.get("ann_file"):
            paths.append((f"{evaluator_key}.ann_file", evaluator["ann_file"]))
    return paths


def check_dataset_present(cfg, dataloader_keys=("train_dataloader", "val_dataloader", "test_dataloader")) -> None:
    missing = [(setting, path) for setting, path in dataset_paths(cfg, dataloader_keys)
               if not osp.exists(path)]
    if not missing:
        return
    setting, path = missing[0]
    what = "annotation file" if setting.endswith("ann_file") else "image folder"
    more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
    raise DataError(f"{what} {path} not found ({setting}){more}; {GET_DATA_HINT}")
