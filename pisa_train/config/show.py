"""``--print-config [KEY]``: the config a command would hand to MMEngine, shown instead of run.

What is printed is what config/build.py's builder returns (``_base_`` merged,
``--cfg-options``, ``--data`` and the flags applied), in MMEngine's Python format,
the text MMEngine's Runner dumps into the work dir (``Config.dump``); with a KEY,
only the part under it (``model.roi_head``), as one assignment that
``Config.fromstring`` reads back. This is mmdet's tools/misc/print_config.py for the
config as pisa-train runs it; it trains nothing and writes nothing.
"""
from __future__ import annotations

from typing import Any

from pisa_train.config.loading import closest_keys, config_key_paths, entry_at
from pisa_train.errors import ConfigError


def _part(cfg_dict: dict, key: str) -> Any:
    node: Any = cfg_dict
    segments = key.split(".")
    for depth, segment in enumerate(segments):
        found, value = entry_at(node, segment)
        if found:
            node = value
        else:
            same_depth = [path for path in config_key_paths(cfg_dict) if path.count(".") == key.count(".")]
            close = closest_keys(key, same_depth)
            parent = f"'{'.'.join(segments[:depth])}'" if depth else "the config"
            names = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, (list, tuple)) \
                else []
            hint = ("did you mean " + " or ".join(f"'{c}'" for c in close) + "?" if close
                    else f"{parent} has: {', '.join(map(str, names))}" if names
                    else f"{parent} is {node!r}, which has no '{segment}'")
            raise ConfigError(f"--print-config '{key}' is not in the config; {hint}")
    return node


def _assignment_name(key: str) -> str:
    """The name the part is assigned to: the key's last segment ('roi_head'), joined to the one
    before it where that is a list index ('pipeline_2')."""
    segments = key.split(".")
    name = segments[-1]
    if not name.isidentifier() and len(segments) > 1:
        name = f"{segments[-2]}_{name}"
    return name if name.isidentifier() else "value"


def render_config(cfg, key: str | None = None) -> str:
    """The config as MMEngine's Runner dumps it, or the part under ``key``; ConfigError for a
    key the config does not have, with the closest one it has."""
    from mmengine.config import Config

    if not key:
        return cfg.dump()
    part = _part(cfg.to_dict(), key)
    return Config({_assignment_name(key): part}).pretty_text
