"""The one place that decides how each command's config is built, and in what order.

A config handed to MMEngine is built in four steps; a later step wins over an
earlier one where both set the same key:

1. the config file, with its ``_base_`` files merged (mmengine's ``Config.fromfile``);
2. ``--cfg-options`` (keys the config has, checked) and ``--cfg-add`` (new keys);
3. ``--data DIR``: the dataset paths, the classes and every head's ``num_classes``
   (config/dataset_folder.py), so a ``--cfg-options`` on those keys is overridden;
   where the images are found under other names than the annotation file's, or
   its annotation ids are ones COCO evaluation cannot use (from 0, duplicated), a
   corrected copy of it is written into the work dir (step 4's work dir, decided
   here by the same precedence) and read instead. Without ``--data``, pisa-train's
   and pisa-eval's COCO evaluators get the same renumbered copy where their own
   annotation file has ids COCO evaluation cannot use;
4. the flags, each a pure rewrite from config/rewrites.py, in the order written
   in the builder below. Where a flag and the config both decide something, the
   flag wins; where neither does, MMDetection's default stands (the work dir:
   ``--work-dir``, then the config's ``work_dir``, then ``work_dirs/<config name>``).

``build_train_config``, ``build_test_config`` and ``build_infer_config`` are the
builders of pisa-train, pisa-eval and pisa-infer. They take the command's request
(config/requests.py: filled by the command line, cli/*.py, or by the Python API,
api.py) and return the config and the lines that say what ``--data`` resolved;
they start nothing. With ``--print-config`` they write nothing
either: the config names the corrected annotation copies of step 3 all the same.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from pisa_train.config import checkpoint_references
from pisa_train.config import rewrites as rewrite
from pisa_train.config.dataset_folder import require_split_to_test, use_dataset_folder, use_usable_annotation_ids
from pisa_train.config.loading import load_config, parse_cfg_options
from pisa_train.config.requests import ExportRequest, InferRequest, TestRequest, TrainRequest
from pisa_train.engine.device import choose_amp_dtype, mmcv_kernels, require_tensorboard
from pisa_train.engine.trackers import require_tracker_packages
from pisa_train.errors import UsageError


class BuiltConfig(NamedTuple):
    cfg: Any  # mmengine.Config, as it will be handed to MMEngine
    notes: list[str]  # what --data resolved, for the log


def _overrides(items, flag: str) -> dict:
    """--cfg-options/--cfg-add: "KEY=VALUE" items parsed as mmengine's DictAction does, or a mapping
    of dotted keys to values (the Python API's), taken as it is."""
    return dict(items) if isinstance(items, Mapping) else parse_cfg_options(list(items), flag=flag)


def load_with_overrides(request: TrainRequest | TestRequest | InferRequest, data: str | None = None,
                        work_dir: str | None = None, print_config: str | None = None,
                        evaluates: bool = False) -> BuiltConfig:
    """Steps 1 to 3: the config file, --cfg-options, --cfg-add and --data (pisa-train and pisa-eval's,
    with their --work-dir and --print-config, which decide where and whether its corrections are written)."""
    cfg = load_config(request.config, _overrides(request.cfg_options, "--cfg-options"),
                      _overrides(request.cfg_add, "--cfg-add"))
    annotations_dir = os.path.join(rewrite.apply_work_dir(cfg, work_dir, request.config).work_dir, "annotations")
    if not data:  # pisa-train's and pisa-eval's evaluators: annotation ids COCO evaluation can use, as with --data
        return BuiltConfig(*use_usable_annotation_ids(cfg, annotations_dir, write=print_config is None)
                           if evaluates else (cfg, []))
    return BuiltConfig(*use_dataset_folder(cfg, data, annotations_dir, write=print_config is None,
                                           cfg_options=request.cfg_options))


def _run_on(cfg, request: TrainRequest | TestRequest | InferRequest, device: str, kernels,
            launcher: str = "none", work_dir: str | None = None):
    """The launcher, the work dir, the device and the RoIAlign/NMS kernels, as every command sets them
    (pisa-infer has neither --launcher nor --work-dir: the defaults)."""
    cfg = rewrite.set_launcher(cfg, launcher)
    cfg = rewrite.apply_work_dir(cfg, work_dir, request.config)
    cfg = rewrite.apply_device(cfg, device)
    if kernels is None:
        kernels = mmcv_kernels()
    backend = rewrite.backend_to_apply(request.ops_backend, device, kernels)
    return rewrite.apply_ops_backend(cfg, backend) if backend is not None else cfg


def amp_dtype(request: TrainRequest | TestRequest | InferRequest, device: str) -> str | None:
    """What ``--amp`` autocasts to (None without it): ``--amp-dtype``, else the device's default."""
    if not request.amp:
        if request.amp_dtype is not None:
            raise UsageError(f"--amp-dtype {request.amp_dtype} is the precision of --amp; add --amp")
        return None

    return choose_amp_dtype(request.amp_dtype, device)


def _inference_precision(cfg, request: TestRequest | InferRequest, device: str):
    """``--amp`` on pisa-eval and pisa-infer: the model's test steps under autocast."""
    precision = amp_dtype(request, device)
    return rewrite.autocast_testing(cfg, precision) if precision else cfg


def build_train_config(request: TrainRequest, device: str, kernels=None) -> BuiltConfig:
    """pisa-train's config. ``kernels``: what mmcv's ops run on (default: this machine's)."""
    cfg, notes = load_with_overrides(request, request.data, request.work_dir, request.print_config, evaluates=True)
    cfg = _run_on(cfg, request, device, kernels, request.launcher, request.work_dir)
    cfg = rewrite.use_cpu_model_wrapper(cfg, device)  # after the launcher: only distributed CPU runs
    precision = amp_dtype(request, device)
    if precision:
        cfg = rewrite.enable_amp(cfg, precision)
    if request.auto_scale_lr:
        cfg = rewrite.enable_auto_scale_lr(cfg)
    cfg = rewrite.apply_resume(cfg, checkpoint_references.resume_checkpoint_on_disk(request.resume))
    cfg = rewrite.apply_load_from(cfg, checkpoint_references.load_from_reference(request.load_from, request.resume))
    cfg = rewrite.apply_seed(cfg, request.seed)
    cfg = rewrite.limit_iterations(cfg, request.max_iters)
    cfg = rewrite.add_training_safeguards(cfg)  # after resume and load-from: the checkpoint must fit the model
    cfg = rewrite.log_losses_per_rank(cfg)  # after limit_iterations, which sets the logger interval
    if request.progress:
        cfg = rewrite.show_progress_bars(cfg)
    # After limit_iterations, which turns validation off: no validation, no best checkpoint and no --patience.
    cfg = rewrite.keep_best_checkpoint(cfg)
    cfg = rewrite.enable_early_stopping(cfg, request.patience)
    if request.tensorboard:
        require_tensorboard()  # before anything runs: MMEngine would fail at the first logged scalar
    cfg = _log_to_trackers(cfg, ["tensorboard"] * request.tensorboard + list(request.vis_backend))
    return BuiltConfig(cfg, notes)


def _log_to_trackers(cfg, names: list[str]):
    """--vis-backend (and --tensorboard): each tracker's package checked before anything runs (MMEngine
    would fail at the first logged scalar); MLflow and W&B pointed where config/rewrites.py says."""
    if not names:
        return cfg
    require_tracker_packages(names)
    # W&B without an API key or a WANDB_MODE would stop at its login prompt: offline, synced later by `wandb sync`.
    wandb_mode = os.environ.get("WANDB_MODE") or (None if os.environ.get("WANDB_API_KEY") else "offline")
    return rewrite.enable_vis_backends(cfg, names, os.environ.get("MLFLOW_TRACKING_URI"), wandb_mode)


def build_test_config(request: TestRequest, device: str, kernels=None) -> BuiltConfig:
    """pisa-eval's config: the config's test loop on ``request.checkpoint``, detections dumped for evaluation."""
    if request.out is not None and not request.out.endswith(".json"):
        raise UsageError(f"--out {request.out}: the metrics are written as JSON; give a file name ending in .json")
    if not 0 <= request.score_thr <= 1:
        raise UsageError(f"--score-thr must be between 0 and 1, not {request.score_thr}")
    if request.worst_images < 0:
        raise UsageError(f"--worst-images must be 0 or more, not {request.worst_images}")
    cfg, notes = load_with_overrides(request, request.data, request.work_dir, request.print_config, evaluates=True)
    if request.data:
        require_split_to_test(cfg, request.data)  # before the checkpoint is loaded: nothing to test on
    cfg = _run_on(cfg, request, device, kernels, request.launcher, request.work_dir)
    cfg = rewrite.apply_checkpoint_for_testing(cfg, checkpoint_references.testing_checkpoint_reference(
        request.checkpoint))
    cfg = rewrite.enable_show_dir(cfg, request.show_dir)
    cfg = rewrite.dump_detections_for_evaluation(cfg)  # after the work dir, where the detections go
    cfg = rewrite.check_checkpoint_fits_model(cfg)
    cfg = _inference_precision(cfg, request, device)
    if request.progress:
        cfg = rewrite.show_progress_bars(cfg)
    cfg = _log_to_trackers(cfg, list(request.vis_backend))
    return BuiltConfig(cfg, notes)


def build_infer_config(request: InferRequest, device: str, kernels=None) -> BuiltConfig:
    """pisa-infer's config: the model and its test pipeline, on the kernels the device has."""
    if not 0 <= request.score_thr <= 1:
        raise UsageError(f"--score-thr must be between 0 and 1, not {request.score_thr}")
    cfg, notes = load_with_overrides(request)
    cfg = _inference_precision(cfg, request, device)
    return BuiltConfig(_run_on(cfg, request, device, kernels), notes)


def build_export_config(request: ExportRequest) -> BuiltConfig:
    """pisa-export's config: the model and its test pipeline, on the CPU with torchvision's RoIAlign and NMS
    (whatever --ops-backend or the machine would choose: mmcv's RoIAlign exports as a node onnxruntime
    rejects, and compiled mmcv's NMS is traced in as constants). A dynamic input size is refused: mmdet's
    post-processing turns sizes and counts into Python numbers, which the trace freezes."""
    if request.dynamic:
        raise UsageError("--dynamic is not supported: mmdet's post-processing turns the image size and box "
                         "counts into Python numbers, which the ONNX trace freezes; export at a fixed --size W H "
                         "(images are resized and padded to it, docs/export.md)")
    if request.size is not None and (len(request.size) != 2 or min(request.size) <= 0):
        raise UsageError(f"--size takes a positive width and height, not {' '.join(map(str, request.size))}")
    cfg, notes = load_with_overrides(request, data=request.data)
    cfg = rewrite.apply_work_dir(cfg, None, request.config)
    cfg = rewrite.apply_device(cfg, "cpu")
    return BuiltConfig(rewrite.apply_ops_backend(cfg, "torchvision"), notes)
