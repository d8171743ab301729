"""The top-level config keys a config may leave out: MMEngine's, and pisa-train's own.

Setting one of these with ``--cfg-options`` is not adding a new key, so it needs
no ``--cfg-add`` (config/loading.py). pisa-train's own keys are plain top-level
entries of an MMDetection config; MMEngine ignores them, and the saved config in
the work dir records them.
"""
from __future__ import annotations

# What MMEngine 0.10.7's Runner.from_cfg reads with a default when a config leaves it out.
RUNNER_SETTINGS = ("work_dir", "train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "val_cfg",
                   "test_cfg", "auto_scale_lr", "optim_wrapper", "param_scheduler", "val_evaluator",
                   "test_evaluator", "default_hooks", "custom_hooks", "data_preprocessor", "load_from", "resume",
                   "launcher", "env_cfg", "log_processor", "log_level", "visualizer", "default_scope",
                   "randomness", "experiment_name", "model_wrapper_cfg", "find_unused_parameters")

# pisa-train's own keys: what each means, and where it is read.
PISA_TRAIN_SETTINGS = {
    "nonfinite_loss": "'stop' (default) or 'skip': what a NaN or Inf loss does "
                      "(engine/hooks/training_guards.py, NonFiniteLossHook)",
    "ops_backend": "'mmcv' or 'torchvision': whose NMS kernel runs; set by --ops-backend "
                   "(engine/patches/torchvision_nms.py)",
    "synthetic_dataset": "dict(generator='shapes', seed=..., num_train_images=..., num_val_images=..., "
                         "image_size=...): generate the dataset under data_root on first use "
                         "(data/synthetic_shapes.py)",
}

KNOWN_TOP_LEVEL_SETTINGS = RUNNER_SETTINGS + tuple(PISA_TRAIN_SETTINGS)
