"""Hand a finished config to MMEngine: build the Runner and train or test; load a detector.

Everything that decides *what* runs lives in the config (config/build.py); this
module prepares what the config names (the demo's synthetic data), says what
the run will do, applies pisa-train's patches and registers its hooks
(``install_into_mmengine``, the one place for both), and starts MMEngine.
pisa-infer's ``load_detector`` builds the model without a Runner but loads its
checkpoint through the same weights-only loader and the same fit check.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import re
import warnings
from collections.abc import Callable

from pisa_train.data.presence import check_dataset_present, dataset_classes, innermost_dataset
from pisa_train.data.synthetic_shapes import ensure_synthetic_dataset
from pisa_train.engine.checkpoint_files import load_checkpoint_file, trust_checkpoints
from pisa_train.engine.patches.amp_on_cpu import allow_amp_optim_wrapper_on_cpu
from pisa_train.engine.patches.batched_nms_dtypes import fix_batched_nms_dtype_clash
from pisa_train.engine.patches.checkpoint_downloads import register_remote_checkpoint_loaders
from pisa_train.engine.patches.checkpoint_loading import guard_checkpoint_loading
from pisa_train.engine.patches.dataloader_worker_signals import keep_dataloader_workers_through_stop_signals
from pisa_train.engine.patches.mmcv_ops_in_float32 import run_mmcv_ops_in_float32_under_autocast
from pisa_train.engine.patches.skip_nonfinite_updates import skip_nonfinite_updates
from pisa_train.engine.patches.torchvision_nms import install_ops_backend
from pisa_train.engine.resume import resolve_auto_resume
from pisa_train.engine.trackers import allow_mlflow_file_store
from pisa_train.engine.work_dir_lock import one_run_in_work_dir
from pisa_train.errors import CheckpointNotFoundError
from pisa_train.fetch.weights import config_checkpoints, fetch_checkpoint, is_remote

Say = Callable[[str], None]


def prepare_datasets(cfg, dataloader_keys, say: Say) -> None:
    note = ensure_synthetic_dataset(cfg)
    if note:
        say(note)
    check_dataset_present(cfg, dataloader_keys)


# What each launcher tells its processes before MMEngine starts the process group: torchrun (and
# --nproc) RANK and WORLD_SIZE, srun SLURM_PROCID and SLURM_NTASKS (mmengine, or distributed_on_cpu,
# turns them into RANK and WORLD_SIZE later), mpirun (Open MPI) OMPI_COMM_WORLD_RANK and _SIZE.
_LAUNCHER_VARIABLES = {"pytorch": ("RANK", "WORLD_SIZE"), "slurm": ("SLURM_PROCID", "SLURM_NTASKS"),
                       "mpi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")}


def _from_launcher(cfg, which: int, default: int) -> int:
    """Rank (which=0) or world size (which=1) of a distributed run: the launcher's variable, which
    mmengine copies into RANK and WORLD_SIZE (and so overrides a stale one), else those."""
    launcher = cfg.get("launcher", "none")
    if launcher == "none":
        return default
    value = os.environ.get(_LAUNCHER_VARIABLES[launcher][which]) or os.environ.get(("RANK", "WORLD_SIZE")[which])
    return int(value) if value else default


def launched_rank(cfg) -> int:
    """This process's rank in the run, as its launcher gives it (0 when not distributed)."""
    return _from_launcher(cfg, 0, 0)


def launched_world_size(cfg) -> int:
    """The number of processes of the run, as its launcher gives it (1 when not distributed)."""
    return _from_launcher(cfg, 1, 1)


def describe_run(cfg, device: str) -> list[str]:
    """What the run will do, in the words of its config, logged before it starts."""
    lines = [f"config: {cfg.filename}", f"work dir: {osp.abspath(cfg.work_dir)}",
             f"device: {device}, launcher: {cfg.get('launcher', 'none')}, "
             f"RoIAlign and NMS kernels: {cfg.get('ops_backend') or 'as the config sets them (mmcv NMS)'}"]
    train_loader = cfg.get("train_dataloader") or {}
    dataset = innermost_dataset(train_loader.get("dataset")) or {}
    classes = (dataset.get("metainfo") or {}).get("classes")
    bbox_head = cfg.model.get("roi_head", {}).get("bbox_head") or cfg.model.get("bbox_head") or {}  # 2 or 1 stage
    lines.append(f"train data: {dataset.get('type')} at {dataset.get('data_root')} ({dataset.get('ann_file')}); "
                 f"classes: {', '.join(classes) if classes else 'from the annotation file'}; "
                 f"num_classes: {bbox_head.get('num_classes')}")
    lr = cfg.optim_wrapper.get("optimizer", {}).get("lr")
    scale = cfg.get("auto_scale_lr") or {}
    # MMEngine scales the learning rate by world size x batch per process / base_batch_size
    # when auto_scale_lr is enabled.
    world_size = launched_world_size(cfg)
    batch = train_loader.get("batch_size")
    total = batch * world_size if isinstance(batch, int) else None
    if scale.get("enable") and total and lr is not None:
        lr_note = (f"{lr * total / scale['base_batch_size']:g} (the config's {lr:g} x total batch {total} / "
                   f"{scale['base_batch_size']}, --auto-scale-lr)")
    else:
        lr_note = f"{lr}"
    lines.append(f"world size: {world_size}; batch size per process: {batch}; total batch size: {total}; "
                 f"learning rate: {lr_note}; optimizer wrapper: {cfg.optim_wrapper.get('type')}")
    loop = cfg.train_cfg
    length = (f"{loop.get('max_iters')} iterations" if "max_iters" in loop
              else f"{loop.get('max_epochs')} epochs")
    lines.append(f"schedule: {loop.get('type')}, {length}")
    lines.append(describe_precision(cfg))
    if cfg.get("resume"):
        lines.append(f"resuming from {cfg.get('load_from') or 'the newest checkpoint in the work dir'}")
    elif cfg.get("load_from"):
        lines.append(f"starting from the weights of {cfg.load_from} (not its optimizer state or iteration)")
    return lines


def autocast_test_dtype(cfg) -> str | None:
    """The dtype of inference under autocast (``--amp`` on pisa-eval, pisa-infer), None for float32."""
    hook = next((hook for hook in cfg.get("custom_hooks") or [] if hook.get("type") == "AutocastTestHook"), None)
    return hook.get("dtype", "float16") if hook is not None else None


def describe_precision(cfg, testing: bool = False) -> str:
    """The precision a run trains (or, ``testing``, infers) in, in the words of its config."""
    if testing:
        dtype = autocast_test_dtype(cfg)
        return f"precision: {dtype} autocast (--amp)" if dtype else "precision: float32"
    wrapper = cfg.get("optim_wrapper") or {}
    if wrapper.get("type") not in ("AmpOptimWrapper", "mmengine.AmpOptimWrapper"):
        return "precision: float32"
    scale = wrapper.get("loss_scale", "dynamic")
    scaling = ("no loss scaling" if isinstance(scale, dict) and scale.get("enabled") is False
               else f"{scale} loss scale" if scale == "dynamic" else f"loss scale {scale}")
    return (f"precision: mixed, {wrapper.get('dtype') or 'float16 (bfloat16 on the CPU)'} autocast "
            f"(AmpOptimWrapper, {scaling}); mmcv's RoIAlign and NMS kernels in float32")


def nonfinite_loss_action(cfg) -> str:
    """What a NaN or Inf loss does in this run: 'stop' or 'skip' (NonFiniteLossHook's action, which
    config/rewrites.py's add_training_safeguards sets from ``nonfinite_loss``)."""
    hook = next((hook for hook in cfg.get("custom_hooks") or [] if hook.get("type") == "NonFiniteLossHook"), None)
    return hook.get("action", "stop") if hook is not None else "stop"


def install_into_mmengine(cfg, trusted_checkpoints=(), say: Say = print) -> None:
    """pisa-train's hooks registered and its patches applied (engine/hooks/, engine/patches/), for ``cfg``.
    Every patch that holds for a run is applied here, side by side, and nowhere else. Two exceptions, each for
    a reason of time: mmcv_ext_from_torchvision.py, which pisa_train/__init__.py installs (mmdet imports
    mmcv.ops long before a run), and the two export patches, which engine/onnx_export.py applies for the length
    of one trace only. The patches do not import each other (pyproject.toml's contracts)."""
    from pisa_train.engine.hooks import register_hooks
    from pisa_train.engine.patches.distributed_on_cpu import init_process_group_on_cpu, register_cpu_model_wrapper

    register_hooks()
    allow_mlflow_file_store(cfg)  # --vis-backend mlflow's store in the work dir (engine/trackers.py)
    register_cpu_model_wrapper()
    guard_checkpoint_loading(trusted_checkpoints, say)  # local files, then downloads: both weights-only
    register_remote_checkpoint_loaders()
    install_ops_backend(cfg)  # NMS on torchvision's kernels when the config says so
    # Mixed precision (--amp); all three leave float32 runs as they were.
    allow_amp_optim_wrapper_on_cpu()
    run_mmcv_ops_in_float32_under_autocast()
    fix_batched_nms_dtype_clash()
    # nonfinite_loss='skip'; taken back for a run that stops instead (a second run in this process).
    skip_nonfinite_updates(nonfinite_loss_action(cfg) == "skip")
    init_process_group_on_cpu(cfg)  # before the Runner: mmengine 0.10.7's own init needs a GPU
    # Before the Runner too: an iteration-based train loop forks its dataloader workers when it is built.
    keep_dataloader_workers_through_stop_signals()


def build_runner(cfg, trusted_checkpoints=(), say: Say = print):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    install_into_mmengine(cfg, trusted_checkpoints, say)
    if "runner_type" in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def fetch_checkpoints(cfg, only_load_from: bool = False) -> None:
    """Download (or verify in the cache) every checkpoint the config names by URL or open-mmlab://
    name before anything is built, so that a missing one fails in seconds, not after the model and
    datasets are set up; the loaders (engine/patches/checkpoint_downloads.py) then find them cached.
    One process downloads; in a distributed run the others wait for it in the loader. Testing
    initialises no weights from init_cfg, so it needs only ``load_from``."""

    if launched_rank(cfg) != 0:
        return
    for setting, reference in config_checkpoints(cfg):
        if is_remote(reference) and (setting == "load_from" or not only_load_from):
            fetch_checkpoint(reference, setting=setting)


def resolve_resume(cfg, trusted_checkpoints=(), say: Say = print):
    """For a bare --resume, ``load_from`` set to the checkpoint the run continues from (engine/resume.py),
    as the run hands it to MMEngine and --print-config shows it."""

    trust_checkpoints(trusted_checkpoints)  # before resolve_auto_resume loads any of them
    return resolve_auto_resume(cfg, say)


def run_training(cfg, trusted_checkpoints=(), say: Say = print, on_start=None) -> dict:
    """Train; ``on_start`` (engine/hooks/run_record.py) hears where the run starts, once its checkpoint is
    loaded. Returns ``training_outcome``: the best checkpoint and an early stop, for run.json."""
    # One run per work dir (engine/work_dir_lock.py), from before --resume picks a checkpoint; rank 0
    # takes it for the whole distributed run, whose processes share the work dir on purpose.
    with one_run_in_work_dir(cfg.work_dir) if launched_rank(cfg) == 0 else contextlib.nullcontext():
        cfg = resolve_resume(cfg, trusted_checkpoints, say)
        fetch_checkpoints(cfg)
        runner = build_runner(cfg, trusted_checkpoints, say)
        if on_start is not None:
            from pisa_train.engine.hooks.run_record import RunRecordHook

            runner.register_hook(RunRecordHook(on_start, cfg.get("load_from") if cfg.get("resume") else None))
        try:
            runner.train()
        finally:
            restore_hooks(runner)
        leave_process_group()
    return training_outcome(runner)


def training_outcome(runner) -> dict:
    """What run.json records of a finished run beyond its description: the best checkpoint kept by
    save_best (its file name, epoch or iteration, and score) and the early stop, if any."""
    from pisa_train.engine.hooks.early_stopping import STOPPED_EARLY
    from pisa_train.engine.hooks.run_record import BEST_SAVED_AT

    info = runner.message_hub.runtime_info
    outcome: dict = {"stopped_early": info.get(STOPPED_EARLY), "best_checkpoint": None}
    best = info.get("best_ckpt")
    if best:
        saved_at = info.get(BEST_SAVED_AT) or {}
        if saved_at.get("file") != best:  # saved before a resume: its file name says when
            when = re.search(r"_(epoch|iter)_(\d+)\.pth$", osp.basename(best))
            saved_at = {when.group(1): int(when.group(2))} if when else {}
        saver = next((hook for hook in runner.hooks if getattr(hook, "key_indicators", None)), None)
        score = info.get("best_score")
        outcome["best_checkpoint"] = {"file": osp.basename(best), "path": best,
                                      "metric": saver.key_indicators[0] if saver else None,
                                      "score": float(score) if score is not None else None,
                                      "epoch": saved_at.get("epoch"), "iter": saved_at.get("iter")}
    return outcome


def leave_process_group() -> None:
    """At the end of a distributed run, every process waits for the others, then leaves the process group.
    Rank 0 saves the last checkpoint after the others have finished their last iteration; a process that
    exits meanwhile with its gloo group alive can abort in the group's teardown ("terminate called without
    an active exception", exit -6, seen in CI), and torchrun then stops the whole run. After this call
    mmengine's get_rank() is 0 in every process: ask launched_rank() who is rank 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def restore_hooks(runner) -> None:
    """A failed run leaves no signal handler behind (in-process callers, tests) and no progress bar
    over its error message: MMEngine calls after_run only when a run succeeds."""
    from pisa_train.engine.hooks import ProgressBarHook, StopOnSignalHook

    for hook in runner.hooks:
        if isinstance(hook, (StopOnSignalHook, ProgressBarHook)):
            hook.restore()


def run_testing(cfg, trusted_checkpoints=(), say: Say = print) -> dict:
    fetch_checkpoints(cfg, only_load_from=True)
    runner = build_runner(cfg, trusted_checkpoints, say)
    try:
        return runner.test()
    finally:
        restore_hooks(runner)


def load_detector(cfg, checkpoint: str, device: str, trusted_checkpoints=(), say: Say = print):
    """The config's model with ``checkpoint``'s weights, in eval mode on ``device``, without a Runner:
    read weights-only and refused if it does not fit, as pisa-eval reads it (mmdet's
    ``init_detector`` alone would accept weights of another shape with a warning)."""
    from mmdet.apis import init_detector
    from mmengine.runner import load_state_dict

    from pisa_train.engine.hooks.autocast_testing import autocast_test_steps
    from pisa_train.engine.hooks.checkpoint_compatibility import MODULE_PREFIX, refuse_mismatched_checkpoint

    if not osp.isfile(checkpoint):
        raise CheckpointNotFoundError(f"checkpoint {checkpoint} not found; give the path of a .pth file written by "
                              f"pisa-train (work_dirs/<config>/epoch_N.pth or iter_N.pth)")
    install_into_mmengine(cfg, trusted_checkpoints, say)
    cfg = cfg.copy()
    cfg.model.backbone.init_cfg = None  # the checkpoint holds the backbone: no ImageNet download

    with warnings.catch_warnings():  # "checkpoint is None, use COCO classes": the classes are set below
        warnings.filterwarnings("ignore", message="checkpoint is None")
        model = init_detector(cfg, checkpoint=None, device="cpu", palette="none")
    state = load_checkpoint_file(checkpoint, map_location="cpu")
    refuse_mismatched_checkpoint(model, state, checkpoint)
    weights = {MODULE_PREFIX.sub("", key): value for key, value in state.get("state_dict", state).items()}
    load_state_dict(model, weights, strict=False)  # shapes and keys were checked above
    classes = list(((state.get("meta") or {}).get("dataset_meta") or {}).get("classes") or [])
    if not classes:  # a checkpoint without metadata: the classes of the config's test set
        classes = dataset_classes(cfg, "test_dataloader") or []
    if classes:
        model.dataset_meta = {**(model.dataset_meta or {}), "classes": tuple(classes)}
    model.cfg = cfg
    model = model.to(device).eval()
    if autocast_test_dtype(cfg):  # what AutocastTestHook does in a Runner's test loop
        autocast_test_steps(model, autocast_test_dtype(cfg))
    return model
