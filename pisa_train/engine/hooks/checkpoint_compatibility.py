"""Refuse a checkpoint written for another model before its weights are loaded.

MMEngine 0.10.7's ``Runner.load_checkpoint`` (used by resume and by testing)
loads with ``strict=False``: weights whose shape differs (another number of
classes) or that are missing (another architecture) are skipped with a warning
in the log, and the run goes on with those layers at their random initial
values: a resumed run silently restarts its head, an evaluation reports the
metrics of an untrained head. That leniency is right for fine-tuning from a
``load_from`` checkpoint, so pisa-train keeps it there, and only adds
``CheckpointMatchesModelHook`` when resuming or evaluating. The hook runs in
MMEngine's ``after_load_checkpoint`` call, after the file is read and before the
weights reach the model; pisa-infer, which builds its model without a Runner,
calls the same ``refuse_mismatched_checkpoint`` (engine/runner.py, ``load_detector``).
"""
from __future__ import annotations

import re

from mmengine.hooks import Hook

from pisa_train.errors import CheckpointError

# As Runner.load_checkpoint's default revise_keys: DDP-wrapped weights are saved as module.*
MODULE_PREFIX = re.compile(r"^module\.")


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


def mismatch_message(path: str, mismatched: list, missing: list, checkpoint_classes, model_num_classes) -> str | None:
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
    return (f"checkpoint {path} is for another model: {detail}{classes}; use the config it was trained with, or "
            f"set model.roi_head.bbox_head.num_classes (and the dataset classes) to match")


def refuse_mismatched_checkpoint(model, checkpoint: dict, path: str) -> None:
    """A CheckpointError if ``checkpoint`` (as loaded from ``path``) does not fit ``model``:
    a weight of another shape, or a weight of the model missing from it."""
    from mmengine.model import is_model_wrapper

    model = model.module if is_model_wrapper(model) else model
    state = checkpoint.get("state_dict", checkpoint)
    mismatched, missing = compare_state_dicts({k: _shape(v) for k, v in state.items()},
                                              {k: _shape(v) for k, v in model.state_dict().items()})
    meta = checkpoint.get("meta") or {}
    classes = list((meta.get("dataset_meta") or {}).get("classes") or [])
    bbox_head = getattr(getattr(model, "roi_head", None), "bbox_head", None)
    message = mismatch_message(path, mismatched, missing, classes, getattr(bbox_head, "num_classes", None))
    if message:
        raise CheckpointError(message)


class CheckpointMatchesModelHook(Hook):
    priority = "VERY_HIGH"

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # pisa-train always loads through load_from (pisa-eval CHECKPOINT, --resume [PATH]).
        refuse_mismatched_checkpoint(runner.model, checkpoint, getattr(runner, "_load_from", None) or "(load_from)")
