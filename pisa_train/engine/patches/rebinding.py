"""Replacing an upstream function where its callers look it up, not only where it is defined.

mmcv's functions are copied into other modules' namespaces by imports such as mmdet's
``from mmcv.ops import batched_nms`` (rpn_head.py, base_dense_head.py, ...) and
``from mmcv.ops.nms import batched_nms`` (layers/bbox_nms.py): setting
``mmcv.ops.nms.batched_nms`` alone leaves those modules calling the original. So
``rebind_everywhere`` replaces the function object in every loaded module that holds
it under its name; a module imported later copies the replacement from mmcv.
Used by batched_nms_dtypes.py and mmcv_ops_in_float32.py.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def rebind_everywhere(module_name: str, name: str, make_replacement: Callable[[Callable], Callable]) -> Callable:
    """Replace ``module_name.name`` by ``make_replacement(original)`` in every loaded module
    that holds the original under ``name``, and return the replacement (whose ``__wrapped__``
    is the original). Done once: a second call finds the replacement in place and returns it."""

    current = vars(importlib.import_module(module_name))[name]
    if getattr(current, "_pisa_train_replacement", False):
        return current
    replacement = make_replacement(current)
    replacement.__wrapped__ = current
    replacement._pisa_train_replacement = True
    # vars(), not getattr: some packages' modules import things on attribute access.
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict) and namespace.get(name) is current:
            namespace[name] = replacement
    return replacement


def upstream_of(module_name: str, name: str) -> Callable:
    """``module_name.name`` as upstream defines it, replaced or not (for guard tests)."""

    current = vars(importlib.import_module(module_name))[name]
    return current.__wrapped__ if getattr(current, "_pisa_train_replacement", False) else current
