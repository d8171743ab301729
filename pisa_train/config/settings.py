"""The config keys a config may leave out: MMEngine's, pisa-train's own, and the parameters
of the classes its dicts build.

Setting one of these with ``--cfg-options`` is not adding a new key, so it needs
no ``--cfg-add`` (config/loading.py). pisa-train's own keys are plain top-level
entries of an MMDetection config; MMEngine ignores them, and the saved config in
the work dir records them. A dict such as ``default_hooks.checkpoint`` builds a
class (``type='CheckpointHook'``), and every parameter of that class is a setting
the config may leave at its default (``max_keep_ckpts``, ``save_best``, ``by_epoch``):
``class_built_by`` finds the class in the registries MMEngine and mmdet build it from,
and ``class_parameters`` reads its signature.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, NamedTuple

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

# Where a config's dicts are built, and from which registries (tried in order), as MMEngine 0.10.7's
# Runner and mmdet 3.3 build them. Paths are dotted, with '#' for a list index; the first match wins.
_PLACES = (
    (r"default_hooks\.\w+|custom_hooks\.#", ("HOOKS",)),
    (r"optim_wrapper", ("OPTIM_WRAPPERS",)),
    (r"optim_wrapper\.optimizer", ("OPTIMIZERS",)),
    (r"param_scheduler(\.#)?", ("PARAM_SCHEDULERS",)),
    (r".*pipeline\.#", ("TRANSFORMS",)),
    (r"\w+_dataloader\.(sampler|batch_sampler)", ("DATA_SAMPLERS",)),
    (r"\w+_dataloader(\.dataset|\.datasets\.#)+", ("DATASETS",)),
    (r"\w+_evaluator(\.#)?", ("METRICS",)),
    (r"(train|val|test)_cfg", ("LOOPS",)),
    (r"visualizer", ("VISUALIZERS",)),
    (r".*vis_backends\.#", ("VISBACKENDS",)),
    (r"log_processor", ("LOG_PROCESSORS",)),
    (r"model_wrapper_cfg", ("MODEL_WRAPPERS",)),
    (r".*\.init_cfg(\.#)?", ("WEIGHT_INITIALIZERS",)),
    (r"model\..*\.(roi_layer|nms)", ("mmcv.ops",)),  # mmdet takes these from mmcv.ops by name, not a registry
    (r"model(\..+)?", ("MODELS", "TASK_UTILS")),  # assigners, samplers, coders, anchor generators
)
# What MMEngine builds where a dict there has no ``type``.
_DEFAULT_TYPES = {"optim_wrapper": "OptimWrapper", "val_cfg": "ValLoop", "test_cfg": "TestLoop",
                  "log_processor": "LogProcessor", "model_wrapper_cfg": "MMDistributedDataParallel"}
# Keys MMEngine takes out of such a dict itself before it builds the class, with the kind of value.
_READ_BY_MMENGINE = {
    "HOOKS": {"priority": int},  # Runner.register_hook
    "OPTIM_WRAPPERS": {"constructor": str, "paramwise_cfg": dict},  # build_optim_wrapper
    "DATALOADER": {"num_batch_per_epoch": int, "disable_subprocess_warning": bool},  # Runner.build_dataloader
    "TRAIN_LOOP_WITHOUT_TYPE": {"by_epoch": bool},  # Runner.build_train_loop
    "mmcv.ops": {"class_agnostic": bool, "split_thr": int},  # mmcv's batched_nms, around its nms
}


class BuiltClass(NamedTuple):
    name: str  # as a message names it, e.g. CheckpointHook
    parameters: dict  # name -> inspect.Parameter, its own and those it passes up to its base classes


def class_parameters(built: Any) -> dict:
    """The keyword parameters of a class (or function), following ``*args``/``**kwargs`` to the
    base classes' ``__init__`` (AtomicCheckpointHook's go to CheckpointHook, CocoDataset's to
    BaseDetDataset and BaseDataset). A class that keeps ``**kwargs`` for itself and has no base
    with parameters (CheckpointHook's file-backend arguments) takes only its named parameters."""
    parameters: dict = {}
    is_class = inspect.isclass(built)
    for owner in (built.__mro__ if is_class else (built,)):
        if owner is object:
            break
        function = owner.__dict__.get("__init__") if is_class else owner
        if function is None:
            continue
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # a C extension's __init__: nothing to read
            break
        passes_on = False
        for index, (name, parameter) in enumerate(signature.parameters.items()):
            if is_class and index == 0:
                continue  # self
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                passes_on = True
            else:
                parameters.setdefault(name, parameter)
        if not passes_on:
            break
    return parameters


def takes_a_dict(parameter: inspect.Parameter) -> bool:
    """Whether a parameter's value may be a dict, whose keys are then the class's business
    (OptimWrapper's ``clip_grad``): so its annotation says, or, without one, its default."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return parameter.default is inspect.Parameter.empty or parameter.default is None \
            or isinstance(parameter.default, dict)
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return re.search(r"dict|Dict|ConfigType|MultiConfig|Mapping", text) is not None


def _place(path: str) -> str:
    return ".".join("#" if segment.isdigit() else segment for segment in path.split("."))


def _lookup(registry_names: tuple, type_name: str, scope: str):
    """The class ``type_name`` names in the first of the registries that has it, in ``scope``
    (mmdet's registries, falling back to MMEngine's, as mmengine's builders switch scope)."""
    import mmengine.registry as registries

    if "HOOKS" in registry_names:  # so that a saved config's AtomicCheckpointHook is known
        from pisa_train.engine.hooks import register_hooks

        register_hooks()
    for name in registry_names:
        if name == "mmcv.ops":
            import mmcv.ops

            found = getattr(mmcv.ops, type_name, None)
            if found is not None:
                return found
            continue
        root = getattr(registries, name)
        try:
            with root.switch_scope_and_registry(scope) as registry:
                found = registry.get(type_name)
        except Exception:  # noqa: BLE001 - an unknown scope prefix ('foo.Bar') is just not found
            found = None
        if found is not None:
            return found
    return None


def class_built_by(node: Any, path: str, scope: str | None = None) -> BuiltClass | None:
    """The class MMEngine or mmdet builds from the config dict ``node`` found at ``path``
    (e.g. 'default_hooks.checkpoint'), with its parameters; None if the dict builds none
    that pisa-train can name (a plain settings dict such as ``model.train_cfg``)."""
    if not isinstance(node, dict):
        return None
    place = _place(path)
    extras: dict = {}
    if re.fullmatch(r"\w+_dataloader", place):  # Runner.build_dataloader: torch's DataLoader
        from torch.utils.data import DataLoader

        built, extras = DataLoader, _READ_BY_MMENGINE["DATALOADER"]
    else:
        registry_names = next((names for pattern, names in _PLACES if re.fullmatch(pattern, place)), None)
        type_name = node.get("type") or _DEFAULT_TYPES.get(place)
        if place == "train_cfg" and not type_name and "by_epoch" in node:
            type_name = "EpochBasedTrainLoop" if node["by_epoch"] else "IterBasedTrainLoop"
            extras = _READ_BY_MMENGINE["TRAIN_LOOP_WITHOUT_TYPE"]
        if registry_names is None or not type_name:
            return None
        built = type_name if not isinstance(type_name, str) else _lookup(registry_names, type_name,
                                                                         scope or "mmdet")
        if built is None or not callable(built):
            return None
        for names in registry_names:
            extras = {**extras, **_READ_BY_MMENGINE.get(names, {})}
    parameters = class_parameters(built)
    for name, kind in extras.items():
        parameters.setdefault(name, inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind))
    return BuiltClass(getattr(built, "__name__", str(built)), parameters)
