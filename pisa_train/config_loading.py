"""Read an MMDetection config and the ``--cfg-options`` overrides, with errors a user can act on.

mmengine does the work (``Config.fromfile``, ``DictAction``'s value syntax);
this module only turns its failures into one line that says what to fix.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from pisa_train.errors import ConfigError


def parse_cfg_options(items: list[str] | None) -> dict:
    """Parse ``KEY=VALUE`` items the way mmengine's ``DictAction`` does.

    Values: ``1`` -> int, ``0.5`` -> float, ``True``/``False``/``None``, ``a,b`` or
    ``[a,b]`` or ``(a,b)`` -> list/tuple, anything else a string. Unlike
    ``DictAction`` (which fails inside argparse with a traceback), a malformed
    item is a ConfigError naming the item.
    """
    from mmengine.config import DictAction

    options: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--cfg-options item '{item}' is not KEY=VALUE; write it like "
                              f"train_dataloader.batch_size=4 or model.backbone.init_cfg=None")
        if key != key.strip() or " " in key:
            raise ConfigError(f"--cfg-options key '{key}' contains spaces; write KEY=VALUE with no spaces "
                              f"around '=' (quote the whole item if the value has spaces)")
        try:
            options[key] = DictAction._parse_iterable(value)
        except Exception as error:  # DictAction raises bare AssertionError/IndexError on bad brackets
            raise ConfigError(f"--cfg-options value for '{key}' cannot be parsed: '{value}' "
                              f"(check that its brackets and quotes are balanced)") from error
    return options


def load_config(config_path: str, cfg_options: dict | None = None):
    """``Config.fromfile`` plus the overrides, or a ConfigError that says what is wrong."""
    from mmengine.config import Config

    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(_missing_config_message(path))
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
        try:
            cfg.merge_from_dict(cfg_options)
        except Exception as error:
            raise ConfigError(f"--cfg-options could not be applied to {path}: {error}") from error
    return cfg


def _missing_config_message(path: Path) -> str:
    folder = path.parent if str(path.parent) not in ("", ".") else Path("configs")
    candidates = sorted(p.name for p in folder.glob("*.py")) if folder.is_dir() else []
    close = difflib.get_close_matches(path.name, candidates, n=1, cutoff=0.6)
    if close:
        return f"config file {path} not found; did you mean {folder / close[0]}?"
    if candidates:
        return f"config file {path} not found; {folder}/ holds: {', '.join(candidates)}"
    return f"config file {path} not found; pass the path of an MMDetection config, e.g. configs/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco.py"
