"""The demo config shrunk for tests that start many real processes: 8 generated images at 64 px,
batch 2, a ResNet-18 at a quarter of its width and few proposals (7 MB checkpoints), a
checkpoint every iteration."""
from __future__ import annotations

from pathlib import Path

from conftest import DEMO_CONFIG

MODEL_OPTIONS = ["model.neck.in_channels=[16,32,64,128]", "model.neck.out_channels=32",
                 "model.rpn_head.in_channels=32", "model.rpn_head.feat_channels=32",
                 "model.roi_head.bbox_roi_extractor.out_channels=32", "model.roi_head.bbox_head.in_channels=32",
                 "model.roi_head.bbox_head.fc_out_channels=64", "model.train_cfg.rpn_proposal.nms_pre=200",
                 "model.train_cfg.rpn_proposal.max_per_img=64", "model.train_cfg.rcnn.sampler.num=64"]
DATA_OPTIONS = ["synthetic_dataset.num_train_images=8", "synthetic_dataset.num_val_images=2",
                "synthetic_dataset.image_size=64"]
TRAIN_OPTIONS = ["train_dataloader.dataset.pipeline.2.scale=(64,64)", "train_dataloader.batch_size=2",
                 "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
                 "default_hooks.logger.interval=1", "randomness.seed=0"]
TEST_OPTIONS = ["test_dataloader.dataset.pipeline.1.scale=(64,64)", "test_dataloader.batch_size=2",
                "test_dataloader.num_workers=0", "test_dataloader.persistent_workers=False"]
# Keys the demo config does not have: it checkpoints by epoch, and ResNet's width is its default.
ADDED = ["default_hooks.checkpoint.by_epoch=False", "model.backbone.base_channels=16"]


def tiny_demo(work_dir: Path, max_iters: int, *flags, options=()) -> list[str]:
    """pisa-train arguments (the synthetic data is generated under the current directory)."""
    return [str(DEMO_CONFIG), "--device", "cpu", "--work-dir", str(work_dir), "--max-iters", str(max_iters),
            *map(str, flags), "--cfg-options", *DATA_OPTIONS, *MODEL_OPTIONS, *TRAIN_OPTIONS, *options,
            "--cfg-add", *ADDED]


def tiny_eval(checkpoint: Path, work_dir: Path, *flags, options=()) -> list[str]:
    """pisa-eval arguments for a checkpoint of tiny_demo."""
    return [str(DEMO_CONFIG), str(checkpoint), "--device", "cpu", "--work-dir", str(work_dir), *map(str, flags),
            "--cfg-options", *DATA_OPTIONS, *MODEL_OPTIONS, *TEST_OPTIONS, *options,
            "--cfg-add", "model.backbone.base_channels=16"]
