"""The PISA model zoo: the released models' table against MMDetection's metafiles, model names as CONFIG,
`pisa-train --list`, `--data` on every zoo config, and each zoo config training an iteration on the CPU
(slow: real processes, real MMEngine training)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO_ROOT
from roboflow_export import read_export
from test_configs import PISA_ZOO, installed_mmdet_configs

from pisa_train import exit_codes
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_train_config
from pisa_train.config.loading import load_config
from pisa_train.errors import ConfigError
from pisa_train.fetch.model_zoo import MODEL_ZOO


def metafile_models(folder: str) -> dict[str, dict]:
    metafile = yaml.safe_load((installed_mmdet_configs() / folder / "metafile.yml").read_text())
    return {model["Name"]: model for model in metafile["Models"]}


def published(model: dict, metric: str):
    return next((result["Metrics"][metric] for result in model["Results"] if metric in result["Metrics"]), None)


def test_the_zoo_table_is_mmdetections_metafiles():
    """Fails on a mistake in copying MMDetection 3.3.0's configs/pisa/metafile.yml and the Faster R-CNN
    baselines of configs/faster_rcnn/metafile.yml (the wheel ships them under mmdet/.mim/configs)."""
    pisa = metafile_models("pisa")
    faster = {name.replace("-", "_"): model
              for name, model in metafile_models("faster_rcnn").items()}
    for name, ours in MODEL_ZOO.items():
        theirs = pisa.get(name) or faster.get(name)
        if theirs is None:  # Mask R-CNN X101-32x4d: README.md has its config, no metafile entry, no weights
            assert ours.weights_url is None and name == "pisa_mask_rcnn_x101_32x4d_fpn_1x_coco"
            continue
        assert ours.mmdet_config == theirs["Config"].removeprefix("configs/")
        assert ours.weights_url == theirs["Weights"]
        assert ours.box_ap == published(theirs, "box AP") and ours.mask_ap == published(theirs, "mask AP")
    assert set(pisa) <= set(MODEL_ZOO)


def test_every_zoo_model_has_its_config_and_every_pisa_config_is_in_the_zoo():
    for name, model in MODEL_ZOO.items():
        assert (CONFIGS / f"{name}.py").is_file()
        assert (installed_mmdet_configs() / model.mmdet_config).is_file()
    assert set(PISA_ZOO) <= set(MODEL_ZOO)


def test_a_model_name_is_a_config_and_a_misspelt_one_gets_the_name_meant(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # names are looked up in the project's configs/, wherever one runs
    assert Path(load_config("pisa_ssd300_coco").filename) == CONFIGS / "pisa_ssd300_coco.py"
    with pytest.raises(ConfigError) as misspelt:
        load_config("pisa_retinanet_r50_fpn_1x_cocoo")
    assert str(misspelt.value) == (
        "no config file or model named pisa_retinanet_r50_fpn_1x_cocoo; did you mean pisa_retinanet_r50_fpn_1x_coco? "
        "(`pisa-train --list` shows the models; a config file is given by its path, e.g. "
        "configs/pisa_retinanet_r50_fpn_1x_cocoo.py)")
    cfg = build_train_config(train_cli.parse_request(["pisa_ssd512_coco"]), "cpu").cfg
    assert cfg.work_dir == "./work_dirs/pisa_ssd512_coco" and cfg.input_size == 512


def test_list_prints_the_zoo_and_what_is_downloaded(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / MODEL_ZOO["pisa_ssd300_coco"].file_name).write_bytes(b"weights")
    assert train_cli.main(["--list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:] if line}
    assert rows["pisa_ssd300_coco"] == ["pisa_ssd300_coco", "27.6", "-", "pisa_ssd300_coco-710e3ac9.pth", "yes"]
    assert rows["pisa_mask_rcnn_r50_fpn_1x_coco"] == ["pisa_mask_rcnn_r50_fpn_1x_coco", "39.1", "35.2",
                                                      "pisa_mask_rcnn_r50_fpn_1x_coco-dfcedba6.pth", "no"]
    assert rows["pisa_mask_rcnn_x101_32x4d_fpn_1x_coco"][1:] == ["-", "-", "(none", "released)", "-"]
    assert rows["pisa_faster_rcnn_r18_fpn_demo_shapes"][3:] == ["(none", "released)", "-"]
    assert set(PISA_ZOO) <= set(rows)


@pytest.mark.parametrize("name", PISA_ZOO)
def test_data_points_every_zoo_config_at_a_dataset_folder(name, roboflow_export):
    classes = read_export(roboflow_export).classes
    cfg = build_train_config(train_cli.parse_request([name, "--data", str(roboflow_export)]), "cpu").cfg
    model = cfg.model
    heads = [model.roi_head.bbox_head] + ([model.roi_head.mask_head] if "mask" in name else []) \
        if "rcnn" in name else [model.bbox_head]
    assert [head.num_classes for head in heads] == [len(classes)] * len(heads)
    dataset = cfg.train_dataloader.dataset
    if "ssd" in name:  # the RepeatDataset wrapper stays, the dataset inside it is replaced
        assert dataset.type == "RepeatDataset" and dataset.times == 5
        dataset = dataset.dataset
    assert dataset.data_root == str(roboflow_export) and tuple(dataset.metainfo.classes) == classes


# Small enough for a CPU: no ImageNet weights, one image per batch, 128 px (SSD keeps its input size,
# which its anchors and extra layers are built for).
TRAIN_SMALL = ["model.backbone.init_cfg=None", "train_dataloader.batch_size=1", "train_dataloader.num_workers=0",
               "train_dataloader.persistent_workers=False"]
SMALL_IMAGES = ["train_dataloader.dataset.pipeline.2.scale=(128,128)"]


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory) -> Path:
    """The output of `pisa-data synthetic`, in a real process."""
    dest = tmp_path_factory.mktemp("synthetic") / "shapes"
    result = subprocess.run([sys.executable, "-m", "pisa_train.cli.data", "synthetic", "--dest", str(dest)],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return dest


def train_one_iteration(name: str, data: Path, work: Path) -> subprocess.CompletedProcess:
    options = TRAIN_SMALL + ([] if "ssd" in name else SMALL_IMAGES)
    return subprocess.run([sys.executable, "-m", "pisa_train.cli.train", name, "--data", str(data), "--device", "cpu",
                           "--max-iters", "1", "--work-dir", str(work), "--cfg-options", *options],
                          capture_output=True, text=True, timeout=1200, cwd=work.parent)


@pytest.fixture(scope="module")
def mask_rcnn_run(tmp_path_factory, synthetic_dataset) -> tuple[subprocess.CompletedProcess, Path]:
    """One iteration of PISA Mask R-CNN R-50 on the synthetic shapes, and its work dir (pisa-eval reuses it)."""
    work = tmp_path_factory.mktemp("mask_rcnn") / "work"
    return train_one_iteration("pisa_mask_rcnn_r50_fpn_1x_coco", synthetic_dataset, work), work


@pytest.mark.slow
@pytest.mark.parametrize("name", PISA_ZOO)
def test_each_zoo_config_trains_an_iteration_when_named_without_its_path(name, tmp_path, request):
    if name == "pisa_mask_rcnn_r50_fpn_1x_coco":
        result, work = request.getfixturevalue("mask_rcnn_run")
    else:
        data = request.getfixturevalue("synthetic_dataset" if "mask_rcnn" in name else "roboflow_export")
        result, work = train_one_iteration(name, data, tmp_path / "work"), tmp_path / "work"
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"config: {CONFIGS / name}.py" in result.stdout
    assert (work / "iter_1.pth").is_file()
    losses = [line for line in result.stdout.splitlines() if "Iter(train) [1/1]" in line]
    assert losses and "loss:" in losses[0] and ("loss_mask" in losses[0]) == ("mask" in name)
    if work.parent == tmp_path:
        (work / "iter_1.pth").unlink()  # hundreds of MB each


@pytest.mark.slow
def test_pisa_eval_prints_bbox_and_segm_metrics_for_a_pisa_mask_rcnn_checkpoint(tmp_path, synthetic_dataset,
                                                                              mask_rcnn_run):
    trained, work = mask_rcnn_run
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "metrics.json"
    result = subprocess.run([sys.executable, "-m", "pisa_train.cli.evaluate", "pisa_mask_rcnn_r50_fpn_1x_coco",
                             str(work / "iter_1.pth"), "--data", str(synthetic_dataset), "--device", "cpu",
                             "--work-dir", str(tmp_path / "eval"), "--out", str(out), "--cfg-options",
                             "test_dataloader.dataset.pipeline.1.scale=(128,128)", "test_dataloader.batch_size=4",
                             "test_dataloader.num_workers=0", "test_dataloader.persistent_workers=False",
                             # PISA's 2000 proposals an image through the box head, and the masks of an untrained
                             # head's 100 boxes, are what takes the time on a CPU.
                             "model.test_cfg.rpn.max_per_img=100", "model.test_cfg.rcnn.max_per_img=10"],
                            capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert result.returncode == exit_codes.SUCCESS, result.stdout[-2000:] + result.stderr[-3000:]
    for iou_type in ("bbox", "segm"):
        table = result.stdout.split(f"COCO {iou_type} metrics\n", 1)[1].splitlines()
        assert table[0].split() == ["AP", "|", "AP50", "|", "AP75", "|", "APs", "|", "APm", "|", "APl"]
        assert len(table[2].split("|")) == 6
    metrics = json.loads(out.read_text())
    assert set(metrics["bbox"]) == set(metrics["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert set(metrics["per_class_segm"]) == {"circle", "square", "triangle"}
    assert (tmp_path / "eval" / "test_detections.segm.json").is_file()
