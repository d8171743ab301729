"""Refuse a checkpoint written for another model before its weights are loaded.

MMEngine 0.10.7's ``Runner.load_checkpoint`` (used by resume and by testing)
loads with ``strict=False``: weights whose shape differs (another number of
classes) or that are missing (another architecture) are skipped with a warning
in the log, and the run goes on with those layers at their random initial
values: a resumed run silently restarts its head, an evaluation reports the
metrics of an untrained head. That leniency is right for fine-tuning from a
``load_from`` checkpoint, but only for the layers whose shape follows the number of
classes. So pisa-train adds ``CheckpointMatchesModelHook`` when resuming or
evaluating, and ``FineTuneCheckpointHook`` when starting from ``load_from``
(``--load-from``): the class-specific layers of a checkpoint trained on other
classes start fresh, named in one line (instead of MMEngine's "size mismatch"
warnings, mmdetection#10617, #10684, #1837), and any other difference is refused
as for resuming. Both hooks run in MMEngine's ``after_load_checkpoint`` call, after
the file is read and before the weights reach the model; pisa-infer, which builds
its model without a Runner, calls the same ``refuse_mismatched_checkpoint``
(engine/runner.py, ``load_detector``).
"""
from __future__ import annotations

import re

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from pisa_train.errors import CheckpointError

# As Runner.load_checkpoint's default revise_keys: DDP-wrapped weights are saved as module.*
MODULE_PREFIX = re.compile(r"^module\.")
# The layers whose shape follows the number of classes (mmdet 3.3.0): Faster/Mask R-CNN's bbox head
# fc_cls and fc_reg (class-specific regression), Mask R-CNN's conv_logits, RetinaNet's retina_cls
# (PISARetinaHead's too) and SSD's cls_convs (PISASSDHead's too). Cascade heads are numbered.
CLASS_SPECIFIC_LAYER = re.compile(r"^(roi_head\.(bbox_head|mask_head)(\.\d+)?\.(fc_cls|fc_reg|conv_logits)"
                                  r"|bbox_head\.(retina_cls|cls_convs\.\d+(\.\d+)*))\.[^.]+$")


def _shape(value) -> tuple:
    return tuple(getattr(value, "shape", ()))


def compare_state_dicts(checkpoint_shapes: dict, model_shapes: dict) -> tuple[list, list]:
    """(mismatched [(key, checkpoint shape, model shape)], model keys missing from the checkpoint)."""
    checkpoint_shapes = {MODULE_PREFIX.sub("", key): shape for key, shape in checkpoint_shapes.items()}
    mismatched = [(key, checkpoint_shapes[key], shape) for key, shape in model_shapes.items()
                  if key in checkpoint_shapes and tuple(checkpoint_shapes[key]) != tuple(shape)]
    missing = [key for key in model_shapes
               if key not in checkpoint_shapes and not key.endswith("num_batches_tracked")]
    return mismatched, missing


RESUME_FIX = ("use the config it was trained with, or set model.roi_head.bbox_head.num_classes (and the dataset "
              "classes) to match")
FINE_TUNE_FIX = ("only the class-specific layers may differ when fine-tuning (--load-from): start from a checkpoint "
                 "of this architecture")


def mismatch_message(path: str, mismatched: list, missing: list, checkpoint_classes, model_num_classes,
                     fix: str = RESUME_FIX) -> str | None:
    if not mismatched and not missing:
        return None
    if mismatched:
        key, theirs, ours = mismatched[0]
        detail = (f"{key} is {list(theirs)} in the checkpoint and {list(ours)} in this model"
                  f"{f' (and {len(mismatched) - 1} more weights differ in shape)' if len(mismatched) > 1 else ''}")
    else:
        detail = (f"{len(missing)} weights of this model are not in it, e.g. {missing[0]}")
    classes = ""
    if checkpoint_classes and model_num_classes is not None and len(checkpoint_classes) != model_num_classes:
        classes = (f"; it was trained on {len(checkpoint_classes)} classes ({', '.join(checkpoint_classes[:5])}"
                   f"{', ...' if len(checkpoint_classes) > 5 else ''}), this config has num_classes="
                   f"{model_num_classes}")
    return f"checkpoint {path} is for another model: {detail}{classes}; {fix}"


def checkpoint_classes(checkpoint: dict) -> list[str]:
    """The class names a checkpoint was trained on: MMEngine's meta.dataset_meta, or MMDetection 2's meta.CLASSES."""
    meta = checkpoint.get("meta") or {}
    return list((meta.get("dataset_meta") or {}).get("classes") or meta.get("CLASSES") or [])


def model_num_classes(model):
    head = getattr(getattr(model, "roi_head", None), "bbox_head", None) or getattr(model, "bbox_head", None)
    return getattr(head, "num_classes", None)


def refuse_mismatched_checkpoint(model, checkpoint: dict, path: str) -> None:
    """A CheckpointError if ``checkpoint`` (as loaded from ``path``) does not fit ``model``:
    a weight of another shape, or a weight of the model missing from it."""

    model = model.module if is_model_wrapper(model) else model
    state = checkpoint.get("state_dict", checkpoint)
    mismatched, missing = compare_state_dicts({k: _shape(v) for k, v in state.items()},
                                              {k: _shape(v) for k, v in model.state_dict().items()})
    message = mismatch_message(path, mismatched, missing, checkpoint_classes(checkpoint), model_num_classes(model))
    if message:
        raise CheckpointError(message)


def layers_to_start_fresh(mismatched: list) -> list[str]:
    """The class-specific layers (module names) among mismatched weights [(key, theirs, ours)]."""
    layers = []
    for key, _, _ in mismatched:
        layer = MODULE_PREFIX.sub("", key).rsplit(".", 1)[0]
        if CLASS_SPECIFIC_LAYER.match(MODULE_PREFIX.sub("", key)) and layer not in layers:
            layers.append(layer)
    return layers


def prepare_fine_tuning(model, checkpoint: dict, path: str) -> str | None:
    """Make ``checkpoint`` (as loaded from ``path``) load into ``model`` for fine-tuning: the weights of
    its class-specific layers that differ in shape (another number of classes) are replaced, in
    place, by the model's freshly initialised ones. Returns the line that names those layers (None
    when there are none); raises CheckpointError for any other difference."""

    model = model.module if is_model_wrapper(model) else model
    state = checkpoint.get("state_dict", checkpoint)
    own = model.state_dict()
    mismatched, missing = compare_state_dicts({k: _shape(v) for k, v in state.items()},
                                              {k: _shape(v) for k, v in own.items()})
    fresh = layers_to_start_fresh(mismatched)
    others = [entry for entry in mismatched if MODULE_PREFIX.sub("", entry[0]).rsplit(".", 1)[0] not in fresh]
    classes, num_classes = checkpoint_classes(checkpoint), model_num_classes(model)
    if others or missing:
        raise CheckpointError(mismatch_message(path, others, missing, classes, num_classes, FINE_TUNE_FIX))
    if not fresh:
        return None
    for key in list(state):
        if MODULE_PREFIX.sub("", key).rsplit(".", 1)[0] in fresh:
            state[key] = own[MODULE_PREFIX.sub("", key)]  # loading the model's own weights keeps them
    trained_on = (f"{len(classes)} classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
                  if classes else "other classes")
    return (f"fine-tuning from {path}, trained on {trained_on}, to num_classes={num_classes}: "
            f"{', '.join(fresh)} start from fresh weights; every other weight is the checkpoint's")


class CheckpointMatchesModelHook(Hook):
    priority = "VERY_HIGH"

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # pisa-train always loads through load_from (pisa-eval CHECKPOINT, --resume [PATH]).
        refuse_mismatched_checkpoint(runner.model, checkpoint, getattr(runner, "_load_from", None) or "(load_from)")


class FineTuneCheckpointHook(Hook):
    """``load_from`` without resume: see the module's docstring."""

    priority = "VERY_HIGH"

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        line = prepare_fine_tuning(runner.model, checkpoint, getattr(runner, "_load_from", None) or "(load_from)")
        if line:
            runner.logger.info(line)
