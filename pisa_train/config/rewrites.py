"""Pure ``cfg -> cfg`` rewrites that the command-line flags make to an MMEngine config.

Each function returns a new config and leaves its argument untouched, so the
commands can be tested by looking at the config they would hand to MMEngine,
without torch or a GPU. The semantics follow MMDetection 3.3.0's tools/train.py
and tools/test.py wherever those have the same flag. The order in which a command
applies them is decided in config/build.py, not here.
"""
from __future__ import annotations

import copy
import os.path as osp

from pisa_train.engine.device import AMP_DTYPES, choose_ops_backend
from pisa_train.engine.launch import LAUNCHERS
from pisa_train.engine.trackers import known_tracker
from pisa_train.errors import ConfigError, UsageError


def _copy(cfg):
    return copy.deepcopy(cfg)


def set_launcher(cfg, launcher: str):
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher must be one of {', '.join(LAUNCHERS)}, not '{launcher}'")
    cfg = _copy(cfg)
    cfg.launcher = launcher
    return cfg


def apply_work_dir(cfg, work_dir: str | None, config_path: str):
    """The work dir is decided in this order: --work-dir, then the config's
    ``work_dir``, then ``work_dirs/<config file name without .py>`` (as MMDetection does)."""
    cfg = _copy(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(config_path))[0])
    return cfg


def _known_amp_dtype(cfg, dtype: str):
    if dtype not in AMP_DTYPES:
        raise UsageError(f"--amp-dtype must be one of {', '.join(AMP_DTYPES)}, not '{dtype}'")
    return cfg


def enable_amp(cfg, dtype: str = "float16"):
    """Mixed precision: MMEngine's AmpOptimWrapper, autocasting to ``dtype`` (engine/device.py's
    ``choose_amp_dtype``). float16 gets a dynamic loss scale, as mmdet's ``--amp`` gives it;
    bfloat16 none (``loss_scale=dict(enabled=False)``: a GradScaler that scales nothing), since it
    has float32's exponent range and small gradients do not underflow."""
    cfg = _copy(_known_amp_dtype(cfg, dtype))
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.dtype = dtype
    cfg.optim_wrapper.loss_scale = "dynamic" if dtype == "float16" else dict(enabled=False)
    return cfg


def autocast_testing(cfg, dtype: str):
    """Inference under autocast in ``dtype`` (``--amp`` on pisa-eval and pisa-infer): see
    engine/hooks/autocast_testing.py for why a hook and not mmengine's ``test_cfg.fp16``."""
    cfg = _copy(_known_amp_dtype(cfg, dtype))
    hooks = [hook for hook in cfg.get("custom_hooks") or [] if hook.get("type") != "AutocastTestHook"]
    cfg.custom_hooks = [*hooks, dict(type="AutocastTestHook", dtype=dtype)]
    return cfg


def enable_auto_scale_lr(cfg):
    """Let MMEngine scale the learning rate by (total batch size / base_batch_size)."""
    scale = cfg.get("auto_scale_lr")
    if not scale or "base_batch_size" not in scale:
        raise ConfigError("--auto-scale-lr needs auto_scale_lr = dict(enable=False, base_batch_size=N) in the "
                          "config (N: the total batch size its learning rate was tuned for; 16 for COCO 1x)")
    cfg = _copy(cfg)
    cfg.auto_scale_lr.enable = True
    return cfg


def apply_resume(cfg, resume: str | None):
    """``--resume`` alone ("auto") resumes from the newest checkpoint in the work dir (MMEngine reads
    ``last_checkpoint`` there); ``--resume PATH`` from that file (checked by
    checkpoint_references.resume_checkpoint_on_disk)."""
    if resume is None:
        return cfg
    cfg = _copy(cfg)
    cfg.resume = True
    cfg.load_from = None if resume == "auto" else resume
    return cfg


def _drop_pretrained_inits(node) -> None:
    """Set every ``init_cfg=dict(type='Pretrained', ...)`` under ``node`` to None, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "init_cfg" and isinstance(value, dict) and value.get("type") == "Pretrained":
                node[key] = None
            else:
                _drop_pretrained_inits(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _drop_pretrained_inits(value)


def apply_load_from(cfg, reference: str | None):
    """``--load-from CHECKPOINT|URL|MODEL_NAME``: start from a checkpoint's weights, not its optimizer
    state or iteration (MMEngine's ``load_from`` without ``resume``). ``reference`` is the file or URL
    that checkpoint_references.load_from_reference found (a released model's name becomes its URL,
    which the resolver fetches when the run starts). The pretrained ``init_cfg`` of the backbone is
    dropped: the checkpoint replaces those weights, so downloading them would be wasted. How a
    checkpoint for other classes loads: engine/hooks/checkpoint_compatibility.py."""
    if reference is None:
        return cfg
    cfg = _copy(cfg)
    cfg.load_from = reference
    cfg.resume = False
    _drop_pretrained_inits(cfg.get("model"))
    return cfg


def apply_seed(cfg, seed: int | None, deterministic: bool = False):
    if seed is None:
        return cfg
    cfg = _copy(cfg)
    randomness = dict(cfg.get("randomness") or {})
    randomness["seed"] = seed
    if deterministic:
        randomness["deterministic"] = True
    cfg.randomness = randomness
    return cfg


def limit_iterations(cfg, max_iters: int | None):
    """Stop after ``max_iters`` training iterations: a quick check that a config trains.

    The run becomes iteration-based (MMEngine's IterBasedTrainLoop), saves a
    checkpoint at the last iteration (or at the config's own iteration interval,
    if it checkpoints by iteration), logs every iteration up to the config's
    interval, and skips validation, so that it needs no validation data: run
    pisa-eval on the checkpoint for that.
    """
    if max_iters is None:
        return cfg
    if max_iters < 1:
        raise UsageError(f"--max-iters must be at least 1, not {max_iters}")
    cfg = _copy(cfg)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters)
    # MMEngine builds the validation loop (and reads its annotations) whenever
    # these three are set, even if it never runs it.
    cfg.val_dataloader = None
    cfg.val_cfg = None
    cfg.val_evaluator = None
    checkpoint = cfg.default_hooks.get("checkpoint")
    if checkpoint is not None and checkpoint.get("by_epoch", True):
        checkpoint.by_epoch = False
        checkpoint.interval = max_iters
    logger = cfg.default_hooks.get("logger")
    if logger is not None:
        logger.interval = min(logger.get("interval", 50), max_iters)
    if cfg.get("log_processor") is not None:
        cfg.log_processor.by_epoch = False
    return cfg


def apply_device(cfg, device: str):
    """On CPU, distributed runs use the gloo backend (nccl needs GPUs)."""
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, not '{device}'")
    cfg = _copy(cfg)
    if device == "cpu":
        env_cfg = cfg.setdefault("env_cfg", {})
        env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"
    return cfg


def use_cpu_model_wrapper(cfg, device: str):
    """A distributed run on CPUs wraps the model in CpuDistributedDataParallel (mmengine's
    default wrapper passes device_ids, which torch refuses on the CPU: see
    engine/patches/distributed_on_cpu.py). The config's own model_wrapper_cfg, if any, is kept."""
    if device != "cpu" or cfg.get("launcher", "none") == "none" or cfg.get("model_wrapper_cfg"):
        return cfg
    cfg = _copy(cfg)
    cfg.model_wrapper_cfg = dict(type="CpuDistributedDataParallel", broadcast_buffers=False,
                                 find_unused_parameters=cfg.get("find_unused_parameters", False))
    return cfg


def log_losses_per_rank(cfg):
    """A distributed run prints every process's loss at the logger's interval (MMEngine logs
    rank 0's only): see engine/hooks/per_rank_losses.py."""
    if cfg.get("launcher", "none") == "none":
        return cfg
    cfg = _copy(cfg)
    logger = (cfg.get("default_hooks") or {}).get("logger") or {}
    cfg.custom_hooks = [*(cfg.get("custom_hooks") or []),
                        dict(type="PerRankLossHook", interval=logger.get("interval", 50))]
    return cfg


def show_progress_bars(cfg):
    """A progress bar for training, validation and testing on a terminal (see engine/hooks/progress_bar.py;
    it draws nothing when stdout is not a terminal, so the same config serves both)."""
    cfg = _copy(cfg)
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(hook.get("type") == "ProgressBarHook" for hook in hooks):
        hooks.append(dict(type="ProgressBarHook"))
    cfg.custom_hooks = hooks
    return cfg


def apply_checkpoint_for_testing(cfg, reference: str):
    """pisa-eval's CHECKPOINT, as checkpoint_references.testing_checkpoint_reference found it: a file,
    or an URL (fetched when the test starts)."""
    cfg = _copy(cfg)
    cfg.load_from = reference
    cfg.resume = False
    return cfg


def enable_show_dir(cfg, show_dir: str | None):
    """Draw predicted boxes on the test images into ``show_dir`` with MMDetection's
    DetVisualizationHook. A relative ``show_dir`` is taken from the current
    directory, like every other path on the command line (MMDetection's test.py
    puts it under work_dir/<timestamp>/ instead, which people then search for)."""
    if show_dir is None:
        return cfg
    hook = cfg.get("default_hooks", {}).get("visualization")
    if hook is None:
        raise ConfigError("--show-dir needs default_hooks.visualization = dict(type='DetVisualizationHook') "
                          "in the config")
    cfg = _copy(cfg)
    cfg.default_hooks.visualization.draw = True
    cfg.default_hooks.visualization.test_out_dir = osp.abspath(show_dir)
    return cfg


def add_training_safeguards(cfg):
    """Atomic checkpoints, a checkpoint and a clean stop on SIGTERM/SIGINT, and a stop (or a
    skipped step) on a NaN/Inf loss: see engine/hooks/atomic_checkpoint.py and training_guards.py.
    A checkpoint to resume from must fit the model; one to fine-tune from may differ in its
    class-specific layers only (engine/hooks/checkpoint_compatibility.py).

    The config's CheckpointHook becomes AtomicCheckpointHook with the same settings; a
    config with its own checkpoint hook type keeps it (and loses only the atomic saves).
    ``nonfinite_loss`` ('stop' or 'skip') is a pisa-train setting (config/settings.py), read here."""
    from pisa_train.engine.hooks.training_guards import check_nonfinite_action

    action = check_nonfinite_action(cfg.get("nonfinite_loss", "stop"))
    cfg = _copy(cfg)
    checkpoint = cfg.default_hooks.get("checkpoint") if cfg.get("default_hooks") else None
    if checkpoint is not None and checkpoint.get("type", "CheckpointHook") in ("CheckpointHook",
                                                                                "mmengine.CheckpointHook"):
        checkpoint.type = "AtomicCheckpointHook"
    cfg.custom_hooks = [*(cfg.get("custom_hooks") or []), dict(type="StopOnSignalHook"),
                        dict(type="NonFiniteLossHook", action=action)]
    if cfg.get("resume"):
        cfg = check_checkpoint_fits_model(cfg)
    elif cfg.get("load_from"):  # fine-tuning: only the class-specific layers may differ
        cfg.custom_hooks.append(dict(type="FineTuneCheckpointHook"))
    return cfg


def check_checkpoint_fits_model(cfg):
    """Refuse, when resuming or evaluating, a checkpoint whose weights do not fit the model
    (MMEngine would load it leniently): see engine/hooks/checkpoint_compatibility.py."""
    hooks = list(cfg.get("custom_hooks") or [])
    if any(hook.get("type") == "CheckpointMatchesModelHook" for hook in hooks):
        return cfg
    cfg = _copy(cfg)
    cfg.custom_hooks = [*hooks, dict(type="CheckpointMatchesModelHook")]
    return cfg


def _roi_align_layers(node):
    """Every ``dict(type='RoIAlign', ...)`` in a (model) config, however deep."""
    if isinstance(node, dict):
        if node.get("type") in ("RoIAlign", "mmcv.RoIAlign"):
            yield node
        for value in node.values():
            yield from _roi_align_layers(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _roi_align_layers(value)


def backend_to_apply(requested: str, device: str, kernels) -> str | None:
    """The backend to rewrite the config to, or None when ``auto`` finds mmcv's kernels for
    the device: then the config's own choice stands (the demo config, for one, asks for
    torchvision's RoIAlign on the CPU because it is faster there)."""
    backend = choose_ops_backend(requested, device, kernels)
    return None if requested == "auto" and backend == "mmcv" else backend


def apply_ops_backend(cfg, backend: str):
    """Run RoIAlign and NMS on ``backend``'s kernels ('mmcv' or 'torchvision', as
    choose_ops_backend resolved --ops-backend). For torchvision, every
    RoIAlign layer gets mmcv's own ``use_torchvision=True``; NMS follows the top-level
    ``ops_backend`` key, which the engine reads (engine/patches/torchvision_nms.py) and
    the saved config records."""
    if backend not in ("mmcv", "torchvision"):
        raise UsageError(f"ops backend must be mmcv or torchvision, not '{backend}'")
    cfg = _copy(cfg)
    cfg.ops_backend = backend
    for layer in _roi_align_layers(cfg.get("model")):
        if backend == "torchvision" and layer.get("pool_mode", "avg") != "avg":
            raise ConfigError(f"--ops-backend torchvision: torchvision's RoIAlign averages, but the config's "
                              f"RoIAlign has pool_mode='{layer.get('pool_mode')}'; use --ops-backend mmcv")
        layer["use_torchvision"] = backend == "torchvision"
    return cfg


def dump_detections_for_evaluation(cfg):
    """Have the test evaluator (mmdet's CocoMetric, bbox) only write its detections, to
    ``test_evaluator.outfile_prefix`` + ``.bbox.json`` (default: ``<work_dir>/test_detections``),
    so that pisa-eval evaluates them once, keeping per-class precision (see results/coco_metrics.py)."""
    evaluator = cfg.get("test_evaluator")
    if not isinstance(evaluator, dict) or evaluator.get("type") not in ("CocoMetric", "mmdet.CocoMetric"):
        raise ConfigError(f"pisa-eval needs test_evaluator = dict(type='CocoMetric', metric='bbox', ann_file=...); "
                          f"this config has {evaluator!r}")
    metric = evaluator.get("metric", "bbox")
    if "bbox" not in ([metric] if isinstance(metric, str) else list(metric)):
        raise ConfigError(f"pisa-eval reports COCO bbox metrics, but test_evaluator.metric is {metric!r}; "
                          f"set --cfg-options test_evaluator.metric=bbox")
    if not evaluator.get("ann_file"):
        raise ConfigError("test_evaluator.ann_file is not set; pisa-eval needs the ground truth of the test set "
                          "(or point the config at a COCO-format folder with --data DIR)")
    cfg = _copy(cfg)
    cfg.test_evaluator.format_only = True
    if not cfg.test_evaluator.get("outfile_prefix"):
        cfg.test_evaluator.outfile_prefix = osp.join(cfg.work_dir, "test_detections")
    return cfg


def enable_tensorboard(cfg):
    """``--tensorboard``: ``--vis-backend tensorboard``."""
    return enable_vis_backends(cfg, ["tensorboard"])


def enable_vis_backends(cfg, names, mlflow_tracking_uri: str | None = None, wandb_mode: str | None = None):
    """``--vis-backend NAME``: log scalars to these trackers as well, with MMEngine's own vis backends
    (engine/trackers.py), beside the LocalVisBackend's scalars.json. A backend the config already has
    is kept as it is. Where each one writes:

    - tensorboard: event files under ``<work_dir>/<timestamp>/vis_data/``;
    - mlflow: ``mlflow_tracking_uri`` (the caller passes $MLFLOW_TRACKING_URI), else a file store in
      ``<work_dir>/mlruns``, one place for every run of the work dir, so no server is needed;
    - wandb: ``wandb_mode`` (the caller passes $WANDB_MODE), else offline when no API key is set
      (the caller passes "offline" then), so a run never stops at W&B's login prompt;
    - the others: as MMEngine sets them, under ``<work_dir>/<timestamp>/vis_data/``.
    """
    trackers = [known_tracker(name) for name in dict.fromkeys(names)]  # unknown names first, in one line
    if not trackers:
        return cfg
    cfg = _copy(cfg)
    visualizer = cfg.get("visualizer")
    if visualizer is None:
        raise ConfigError(f"--vis-backend {names[0]} needs a visualizer in the config, e.g. "
                          "visualizer = dict(type='DetLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')])")
    backends = list(visualizer.get("vis_backends") or [])
    present = {backend.get("type", "").removeprefix("mmengine."): backend for backend in backends}
    for tracker in trackers:
        backend = present.get(tracker.backend)
        if backend is None:
            backend = dict(type=tracker.backend)
            backends.append(backend)
            if tracker.backend == "WandbVisBackend" and wandb_mode:
                backend["init_kwargs"] = dict(mode=wandb_mode, dir=cfg.work_dir)
        # The config's own MLflow backend too, where it names no store (MMEngine's default: one per start).
        if tracker.backend == "MLflowVisBackend" and not backend.get("tracking_uri"):
            backend["tracking_uri"] = mlflow_tracking_uri or "file://" + osp.join(osp.abspath(cfg.work_dir), "mlruns")
    visualizer.vis_backends = backends
    return cfg


# The validation metric the best checkpoint and --patience follow (mmdet's CocoMetric, prefix "coco").
BEST_METRIC = "coco/bbox_mAP"
# mmengine's EarlyStoppingHook counts a validation as an improvement only if the metric rises by more than
# its min_delta, 0.1 by default: 10 AP points, which would stop nearly every detector. 0.001 is 0.1 AP point.
PATIENCE_MIN_DELTA = 0.001


def runs_validation(cfg) -> bool:
    """Whether training validates: a validation loop, data and a bbox CocoMetric, as MMEngine builds them."""
    evaluator = cfg.get("val_evaluator")
    if not (cfg.get("val_cfg") is not None and cfg.get("val_dataloader") and isinstance(evaluator, dict)):
        return False
    metric = evaluator.get("metric", "bbox")
    return (evaluator.get("type", "CocoMetric").removeprefix("mmdet.") == "CocoMetric"
            and "bbox" in ([metric] if isinstance(metric, str) else list(metric)))


def keep_best_checkpoint(cfg):
    """Whenever the run validates, keep the checkpoint with the highest validation bbox mAP beside the
    regular ones (``best_coco_bbox_mAP_epoch_N.pth``, written by MMEngine's own save_best). A config that
    sets ``save_best`` itself keeps its choice; ``--resume`` never picks the best checkpoint (engine/resume.py)."""
    checkpoint = (cfg.get("default_hooks") or {}).get("checkpoint")
    if not runs_validation(cfg) or checkpoint is None or checkpoint.get("save_best") is not None:
        return cfg
    cfg = _copy(cfg)
    cfg.default_hooks.checkpoint.save_best = BEST_METRIC
    cfg.default_hooks.checkpoint.rule = "greater"
    return cfg


def enable_early_stopping(cfg, patience: int | None):
    """``--patience N``: stop after N validations in a row without a higher bbox mAP (mmengine's
    EarlyStoppingHook, through engine/hooks/early_stopping.py, which says so in the log and the run record)."""
    if patience is None:
        return cfg
    if patience < 1:
        raise UsageError(f"--patience must be at least 1 (validations without improvement), not {patience}")
    if not runs_validation(cfg):
        raise UsageError(f"--patience {patience} stops training when the validation bbox mAP stops improving, but "
                         f"this run does not validate (--max-iters skips validation; the config needs val_dataloader, "
                         f"val_cfg and a CocoMetric val_evaluator); leave out --patience or --max-iters")
    cfg = _copy(cfg)
    hooks = [hook for hook in cfg.get("custom_hooks") or [] if hook.get("type") != "PatienceHook"]
    cfg.custom_hooks = [*hooks, dict(type="PatienceHook", monitor=BEST_METRIC, rule="greater", patience=patience,
                                     min_delta=PATIENCE_MIN_DELTA)]
    return cfg
