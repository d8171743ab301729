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
   here by the same precedence) and read instead;
4. the flags, each a pure rewrite from config/rewrites.py, in the order written
   in the builder below. Where a flag and the config both decide something, the
   flag wins; where neither does, MMDetection's default stands (the work dir:
   ``--work-dir``, then the config's ``work_dir``, then ``work_dirs/<config name>``).

``build_train_config``, ``build_test_config`` and ``build_infer_config`` are the
builders of pisa-train, pisa-eval and pisa-infer. They read the parsed command
line (an ``argparse.Namespace``) and return the config and the lines that say what
``--data`` resolved; they start nothing. With ``--print-config`` they write nothing
either: the config names the corrected annotation copies of step 3 all the same.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

from pisa_train.config import rewrites as rewrite
from pisa_train.errors import UsageError


class BuiltConfig(NamedTuple):
    cfg: Any  # mmengine.Config, as it will be handed to MMEngine
    notes: list[str]  # what --data resolved, for the log


def load_with_overrides(args) -> BuiltConfig:
    """Steps 1 to 3: the config file, --cfg-options, --cfg-add and --data."""
    from pisa_train.config.loading import load_config, parse_cfg_options

    cfg = load_config(args.config, parse_cfg_options(args.cfg_options),
                      parse_cfg_options(args.cfg_add, flag="--cfg-add"))
    if not getattr(args, "data", None):
        return BuiltConfig(cfg, [])
    from pisa_train.config.dataset_folder import use_dataset_folder

    work_dir = rewrite.apply_work_dir(cfg, getattr(args, "work_dir", None), args.config).work_dir
    return BuiltConfig(*use_dataset_folder(cfg, args.data, os.path.join(work_dir, "annotations"),
                                           write=getattr(args, "print_config", None) is None))


def _run_on(cfg, args, device: str, kernels):
    """The launcher, the work dir, the device and the RoIAlign/NMS kernels, as every command sets them."""
    cfg = rewrite.set_launcher(cfg, getattr(args, "launcher", "none"))
    cfg = rewrite.apply_work_dir(cfg, getattr(args, "work_dir", None), args.config)
    cfg = rewrite.apply_device(cfg, device)
    if kernels is None:
        from pisa_train.engine.device import mmcv_kernels

        kernels = mmcv_kernels()
    backend = rewrite.backend_to_apply(args.ops_backend, device, kernels)
    return rewrite.apply_ops_backend(cfg, backend) if backend is not None else cfg


def amp_dtype(args, device: str) -> str | None:
    """What ``--amp`` autocasts to (None without it): ``--amp-dtype``, else the device's default."""
    requested = getattr(args, "amp_dtype", None)
    if not getattr(args, "amp", False):
        if requested is not None:
            raise UsageError(f"--amp-dtype {requested} is the precision of --amp; add --amp")
        return None
    from pisa_train.engine.device import choose_amp_dtype

    return choose_amp_dtype(requested, device)


def _inference_precision(cfg, args, device: str):
    """``--amp`` on pisa-eval and pisa-infer: the model's test steps under autocast."""
    precision = amp_dtype(args, device)
    return rewrite.autocast_testing(cfg, precision) if precision else cfg


def build_train_config(args, device: str, kernels=None) -> BuiltConfig:
    """pisa-train's config. ``kernels``: what mmcv's ops run on (default: this machine's)."""
    cfg, notes = load_with_overrides(args)
    cfg = _run_on(cfg, args, device, kernels)
    cfg = rewrite.use_cpu_model_wrapper(cfg, device)  # after the launcher: only distributed CPU runs
    precision = amp_dtype(args, device)
    if precision:
        cfg = rewrite.enable_amp(cfg, precision)
    if args.auto_scale_lr:
        cfg = rewrite.enable_auto_scale_lr(cfg)
    cfg = rewrite.apply_resume(cfg, args.resume)
    cfg = rewrite.apply_load_from(cfg, getattr(args, "load_from", None), args.resume)
    cfg = rewrite.apply_seed(cfg, args.seed)
    cfg = rewrite.limit_iterations(cfg, args.max_iters)
    cfg = rewrite.add_training_safeguards(cfg)  # after resume and load-from: the checkpoint must fit the model
    cfg = rewrite.log_losses_per_rank(cfg)  # after limit_iterations, which sets the logger interval
    if args.progress:
        cfg = rewrite.show_progress_bars(cfg)
    if args.tensorboard:
        from pisa_train.engine.device import require_tensorboard

        require_tensorboard()  # before anything runs: MMEngine would fail at the first logged scalar
        cfg = rewrite.enable_tensorboard(cfg)
    return BuiltConfig(cfg, notes)


def build_test_config(args, device: str, kernels=None) -> BuiltConfig:
    """pisa-eval's config: the config's test loop on ``args.checkpoint``, detections dumped for evaluation."""
    if args.out is not None and not args.out.endswith(".json"):
        raise UsageError(f"--out {args.out}: the metrics are written as JSON; give a file name ending in .json")
    if not 0 <= args.score_thr <= 1:
        raise UsageError(f"--score-thr must be between 0 and 1, not {args.score_thr}")
    if args.worst_images < 0:
        raise UsageError(f"--worst-images must be 0 or more, not {args.worst_images}")
    cfg, notes = load_with_overrides(args)
    cfg = _run_on(cfg, args, device, kernels)
    cfg = rewrite.apply_checkpoint_for_testing(cfg, args.checkpoint)
    cfg = rewrite.enable_show_dir(cfg, args.show_dir)
    cfg = rewrite.dump_detections_for_evaluation(cfg)  # after the work dir, where the detections go
    cfg = rewrite.check_checkpoint_fits_model(cfg)
    cfg = _inference_precision(cfg, args, device)
    if args.progress:
        cfg = rewrite.show_progress_bars(cfg)
    return BuiltConfig(cfg, notes)


def build_infer_config(args, device: str, kernels=None) -> BuiltConfig:
    """pisa-infer's config: the model and its test pipeline, on the kernels the device has."""
    if not 0 <= args.score_thr <= 1:
        raise UsageError(f"--score-thr must be between 0 and 1, not {args.score_thr}")
    cfg, notes = load_with_overrides(args)
    cfg = _inference_precision(cfg, args, device)
    return BuiltConfig(_run_on(cfg, args, device, kernels), notes)
