"""Read an MMDetection config and the ``--cfg-options`` overrides, with errors a user can act on.

mmengine does the work (``Config.fromfile``, ``DictAction``'s value syntax);
this module only turns its failures into one line that says what to fix. A CONFIG
is a file, or the name of a model in the project's configs/ folder, without path
or ``.py`` (``pisa_ssd300_coco``): MMDetection's model names (``pisa-train --list``).
"""
from __future__ import annotations

import argparse
import ast
import difflib
from pathlib import Path

from pisa_train.config.settings import KNOWN_TOP_LEVEL_SETTINGS, class_built_by, takes_a_dict
from pisa_train.errors import ConfigError
from pisa_train.fetch.model_zoo import released_model
from pisa_train.fetch.weights import torch_checkpoints_dir

# The project's configs, named like MMDetection's models (beside the package: an editable install).
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def parse_cfg_options(items: list[str] | None, flag: str = "--cfg-options") -> dict:
    """Parse ``KEY=VALUE`` items the way mmengine's ``DictAction`` does.

    Values: ``1`` -> int, ``0.5`` -> float, ``True``/``False``/``None``, ``a,b`` or
    ``[a,b]`` or ``(a,b)`` -> list/tuple, anything else a string. DictAction itself
    parses each value (through its public argparse interface); a malformed item, which
    DictAction would let fail inside argparse with a traceback, is a ConfigError naming it.
    A value with dicts in it (``[dict(type=A),dict(type=B,x=1)]``, or ``{...}``) is read by
    ``parse_dict_value`` instead: mmengine 0.10.7's DictAction recurses until Python's stack
    is exhausted on a ``dict(...)`` holding a comma (tests/test_run_features.py's
    ``test_upstream_dict_action_recurses_on_dicts`` fails once upstream parses them).
    """

    from mmengine.config import DictAction

    options: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} item '{item}' is not KEY=VALUE; write it like "
                              f"train_dataloader.batch_size=4 or model.backbone.init_cfg=None")
        if key != key.strip() or " " in key:
            raise ConfigError(f"{flag} key '{key}' contains spaces; write KEY=VALUE with no spaces "
                              f"around '=' (quote the whole item if the value has spaces)")
        if _holds_dicts(value):
            options[key] = parse_dict_value(value, flag, key)
            continue
        parsed = argparse.Namespace()
        try:
            DictAction(option_strings=[flag], dest="options")(None, parsed, [item])
        except Exception as error:  # DictAction raises bare AssertionError/IndexError on bad brackets
            raise ConfigError(f"{flag} value for '{key}' cannot be parsed: '{value}' "
                              f"(check that its brackets and quotes are balanced)") from error
        options[key] = parsed.options[key]
    return options


def _holds_dicts(value: str) -> bool:
    return "dict(" in value.replace(" ", "") or value.strip().strip("[(").startswith("{")


def parse_dict_value(value: str, flag: str, key: str):
    """A value with dicts, read as the Python literal it is written as: ``dict(k=v, ...)`` and ``{'k': v}``,
    lists, tuples, numbers, strings, True/False/None; a bare word is a string, as DictAction makes it
    (``dict(type=MLflowVisBackend)``). Nothing is evaluated: anything else is refused."""
    def convert(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        if isinstance(node, ast.List):
            return [convert(element) for element in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(convert(element) for element in node.elts)
        if isinstance(node, ast.Dict) and None not in node.keys:
            return {convert(k): convert(v) for k, v in zip(node.keys, node.values)}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
                and not node.args and all(keyword.arg for keyword in node.keywords)):
            return {keyword.arg: convert(keyword.value) for keyword in node.keywords}
        raise ValueError(ast.dump(node))

    try:
        return convert(ast.parse(value.strip(), mode="eval").body)
    except (SyntaxError, ValueError) as error:
        raise ConfigError(f"{flag} value for '{key}' cannot be parsed: '{value}' (write dicts as "
                          f"dict(type=NAME,key=value) or {{'key':value}}, with balanced brackets and quotes, "
                          f"and only numbers, strings, True/False/None, lists and dicts inside)") from error


def load_config(config_path: str, cfg_options: dict | None = None, new_keys: dict | None = None):
    """``Config.fromfile`` plus the overrides, or a ConfigError that says what is wrong.

    ``cfg_options`` (--cfg-options) may only change keys the config has, or set parameters
    of the classes its dicts build (``default_hooks.checkpoint.max_keep_ckpts``); ``new_keys``
    (--cfg-add) may also add other keys, because the user said so."""
    from mmengine.config import Config

    path = resolve_config_path(config_path)
    try:
        cfg = Config.fromfile(str(path))
    except SyntaxError as error:
        # mmengine wraps the SyntaxError of the file (or one of its _base_ files).
        raise ConfigError(f"config {path} (or one of its _base_ files) has a syntax error: {error}") from error
    except FileNotFoundError as error:
        raise ConfigError(f"config {path} names a _base_ file that does not exist: {error}") from error
    except Exception as error:
        raise ConfigError(f"config {path} could not be read: {type(error).__name__}: {error}") from error
    if cfg_options:
        check_cfg_option_keys(cfg, cfg_options)
    for flag, options in (("--cfg-options", cfg_options), ("--cfg-add", new_keys)):
        if options:
            try:
                cfg.merge_from_dict(options)
            except Exception as error:
                raise ConfigError(f"{flag} could not be applied to {path}: {error}") from error
    return cfg


def model_names() -> list[str]:
    """The models CONFIG may name without path or suffix: the configs in configs/."""
    return sorted(path.stem for path in CONFIGS_DIR.glob("*.py"))


def resolve_config_path(config: str) -> Path:
    """The config file ``config`` names: a path, or a model name (no folder, no .py) in configs/."""
    path = Path(config)
    if path.is_file():
        return path
    if "/" in config or config.endswith(".py"):
        raise ConfigError(_missing_config_message(path))
    if (CONFIGS_DIR / f"{config}.py").is_file():
        return CONFIGS_DIR / f"{config}.py"
    close = difflib.get_close_matches(config, model_names(), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"the models are: {', '.join(model_names())}"
    raise ConfigError(f"no config file or model named {config}; {hint} (`pisa-train --list` shows the models; "
                      f"a config file is given by its path, e.g. configs/{config}.py)")


def model_zoo_table() -> str:
    """``pisa-train --list``: each model in configs/, its published COCO AP, its released checkpoint,
    and whether that is in the torch hub cache already."""

    cache = torch_checkpoints_dir()
    rows = [("model", "box AP", "mask AP", "checkpoint", "downloaded")]
    for name in model_names():
        model = released_model(name)
        file_name = model.file_name if model else None
        rows.append((name, *(f"{ap:.1f}" if ap else "-" for ap in ((model.box_ap, model.mask_ap) if model else
                                                                    (None, None))),
                     file_name or "(none released)",
                     ("yes" if (cache / file_name).is_file() else "no") if file_name else "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = ["  ".join(cell.rjust(width) if column in (1, 2) else cell.ljust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    return "\n".join([*lines, f"box and mask AP: COCO val2017, as MMDetection published them; checkpoints are kept "
                               f"in {cache}. Train one: pisa-train NAME; start from one: --load-from NAME; "
                               f"download ahead: pisa-data weights --only NAME"])


def _missing_config_message(path: Path) -> str:
    folder = path.parent if str(path.parent) not in ("", ".") else Path("configs")
    candidates = sorted(p.name for p in folder.glob("*.py")) if folder.is_dir() else []
    close = difflib.get_close_matches(path.name, candidates, n=1, cutoff=0.6)
    if close:
        return f"config file {path} not found; did you mean {folder / close[0]}?"
    if candidates:
        return f"config file {path} not found; {folder}/ holds: {', '.join(candidates)}"
    return f"config file {path} not found; pass the path of an MMDetection config, e.g. configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"


def entry_at(node, segment: str):
    """(True, value) if ``segment`` names an entry of ``node`` (a dict key, or a list index
    as mmengine's merge_from_dict accepts them), else (False, None)."""
    if isinstance(node, dict):
        return (True, node[segment]) if segment in node else (False, None)
    if isinstance(node, (list, tuple)) and segment.isdigit() and int(segment) < len(node):
        return True, node[int(segment)]
    return False, None


def config_key_paths(node, prefix: str = "") -> list[str]:
    """Every key path of a config, dict keys and list indices alike: 'model', 'model.backbone',
    ..., 'train_dataloader.dataset.pipeline.2.scale'."""
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, (list, tuple)):
        items = [(str(index), value) for index, value in enumerate(node)]
    else:
        return []
    paths = []
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        paths.append(path)
        paths.extend(config_key_paths(value, path))
    return paths


def unknown_key_message(cfg_dict: dict, key: str, built_class=class_built_by) -> str | None:
    """None if ``key`` names a setting the config has, one MMEngine or pisa-train gives a default,
    or a parameter of the class that the enclosing dict builds (``built_class``: config/settings.py);
    else the one-line refusal, with the closest keys of the config and parameters of its classes."""
    segments = key.split(".")
    if segments[0] not in cfg_dict and segments[0] in KNOWN_TOP_LEVEL_SETTINGS:
        return None
    nodes = [cfg_dict]  # nodes[i]: the value at segments[:i]
    for segment in segments:
        found, node = entry_at(nodes[-1], segment)
        if not found:
            break
        nodes.append(node)
    else:
        return None
    depth = len(nodes) - 1  # the first segment the config does not have
    missing, parent_path, scope = segments[depth], ".".join(segments[:depth]), cfg_dict.get("default_scope")
    owner = built_class(nodes[depth], parent_path, scope) if depth else None
    parameter = owner.parameters.get(missing) if owner else None
    if parameter is not None:
        if depth == len(segments) - 1 or takes_a_dict(parameter):
            return None  # a parameter left at its default, or anything inside a dict-valued one
        return (f"--cfg-options '{key}' is not in the config: '{parent_path}.{missing}' is a parameter of "
                f"{owner.name} whose value is not a dict ({_type_name(parameter.annotation)}), so it has no "
                f"'{segments[depth + 1]}'; set '{parent_path}.{missing}' itself")
    if owner is None and depth >= 2 and _inside_dict_parameter(nodes[depth], segments[:depth], nodes[depth - 1],
                                                                 scope, built_class):
        return None
    where = (f" (there is no '{missing}' under '{parent_path}'"
             f"{f', and {owner.name} takes no parameter {missing!r}' if owner else ''})" if depth else "")
    return (f"--cfg-options '{key}' is not in the config{where}; "
            f"{_hint(cfg_dict, segments, depth, nodes[depth], owner, scope, built_class)} "
            f"(to add a new key on purpose, pass it with --cfg-add {key}=VALUE)")


def _hint(cfg_dict: dict, segments: list[str], depth: int, parent, owner, scope, built_class) -> str:
    """The closest keys of the config and parameters of its classes; else what ``parent`` (the
    value at ``segments[:depth]``, the deepest the key reaches) has, and what its class takes."""
    key, parent_path = ".".join(segments), ".".join(segments[:depth])
    # Compare whole paths of the same depth: a typo anywhere in a long key still scores high.
    same_depth = [path for path in config_key_paths(cfg_dict) if path.count(".") == key.count(".")]
    same_depth += _parameter_paths(cfg_dict, key.count(".") - 1, scope, built_class)
    if owner is not None:
        rest = "".join(f".{segment}" for segment in segments[depth + 1:])
        same_depth += [f"{parent_path}.{name}{rest}" for name in owner.parameters]
    if "." not in key:
        same_depth += [name for name in KNOWN_TOP_LEVEL_SETTINGS if name not in cfg_dict]
    close = closest_keys(key, list(dict.fromkeys(same_depth)))
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    names = [str(name) for name in parent] if isinstance(parent, dict) else []
    hint = (f"'{parent_path or 'the config'}' has: {_some(names)}" if names
            else f"'{parent_path}' is {type(parent).__name__ if parent is not None else 'None'} "
                 f"in the config, so it has no '{segments[depth]}'")
    if owner is not None:
        hint += f"; {owner.name} also takes: {_some([name for name in owner.parameters if name not in names])}"
    return hint


def _type_name(annotation) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _some(names: list[str], shown: int = 15) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _inside_dict_parameter(node, segments: list[str], parent, scope, built_class) -> bool:
    """Whether ``node`` (a dict without a type of its own) is the value of a dict-valued parameter
    of the class its parent builds (``optim_wrapper.clip_grad``): its keys are that class's business."""
    if not isinstance(node, dict) or "type" in node:
        return False
    owner = built_class(parent, ".".join(segments[:-1]), scope)
    parameter = owner.parameters.get(segments[-1]) if owner else None
    return parameter is not None and takes_a_dict(parameter)


def _parameter_paths(cfg_dict: dict, depth: int, scope, built_class) -> list[str]:
    """'<path>.<parameter>' for each dict at ``depth`` (dots in its path) that builds a class."""
    if depth < 1:
        return []
    paths = []
    for path in config_key_paths(cfg_dict):
        if path.count(".") != depth:
            continue
        node = cfg_dict
        for segment in path.split("."):
            node = entry_at(node, segment)[1]
        owner = built_class(node, path, scope) if isinstance(node, dict) else None
        paths += [f"{path}.{name}" for name in owner.parameters] if owner else []
    return paths


def closest_keys(key: str, candidates: list[str], cutoff: float = 0.8) -> list[str]:
    """The candidates most like ``key`` (ties included), as difflib.get_close_matches scores them,
    among those whose part after the segments they share is alike too ('max_keep_ckpt' and
    'max_keep_ckpts', not 'zzzz' and 'rule' under the same long 'default_hooks.checkpoint');
    only the best, since the runners-up of a long dotted key are mostly noise."""
    def alike(first: str, second: str) -> float:
        matcher = difflib.SequenceMatcher(None, first, second)
        ok = matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff
        return matcher.ratio() if ok else 0.0

    key_segments = key.split(".")
    scored = []
    for candidate in candidates:
        segments = candidate.split(".")
        shared = 0
        while shared < min(len(segments), len(key_segments)) - 1 and segments[shared] == key_segments[shared]:
            shared += 1
        score = alike(key, candidate)
        if score >= cutoff and alike(".".join(key_segments[shared:]), ".".join(segments[shared:])) >= cutoff:
            scored.append((score, candidate))
    if not scored:
        return []
    best = max(score for score, _ in scored)
    return [candidate for score, candidate in scored if score == best][:3]


def check_cfg_option_keys(cfg, options: dict) -> None:
    """Refuse a --cfg-options key that is neither in the config nor a parameter of the class its
    dict builds: mmengine's merge would add it silently, so a typo (model.roi_hed...) would
    train the unchanged config."""
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    for key in options:
        message = unknown_key_message(cfg_dict, key)
        if message:
            raise ConfigError(message)
