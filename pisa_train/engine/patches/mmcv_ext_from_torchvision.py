"""Patch: ``mmcv._ext``, mmcv's compiled kernels, answered by torchvision and torch when absent.

Upstream: mmcv 2.1.0 (and mmcv-lite 2.1.0, the same Python code without compiled ops).
Every op in ``mmcv/ops/*.py`` gets its kernels at import time with
``ext_loader.load_ext('_ext', [names])``, which imports ``mmcv._ext`` and asserts that each
name exists (``mmcv/utils/ext_loader.py``). mmcv-lite has no ``mmcv._ext``, so
``import mmcv.ops`` fails, and with it ``import mmdet.models``. No mmcv wheel with compiled ops
exists for torch >= 2.6 (the last mmcv release is from 2024-04; the C++20 fix, mmcv PR #3340,
is unmerged), so compiled mmcv means a 5 to 25 minute build with a C++ compiler, and an nvcc
matching torch's CUDA for GPU kernels.

The change: a finder at the end of ``sys.meta_path`` answers ``import mmcv._ext`` only when
no compiled ``mmcv/_ext*.so`` was found before it, with a ``TorchKernelsModule`` serving
``engine/torch_kernels.py``: RoIAlign, NMS and nms_match from torchvision and torch, and every
other name a function that raises one line naming the op and how to get compiled mmcv. With
compiled mmcv installed, Python's own path finder finds the ``.so`` first and nothing changes.

Installed from ``pisa_train/__init__.py``, not from ``engine/runner.py`` like the other
patches: mmdet imports ``mmcv.ops`` as it is imported, which happens in config loading,
tests and Python callers long before a runner is built. Installing the finder imports
nothing heavy (torch comes only when mmcv imports ``_ext``), so ``--help`` stays fast.

Guard tests: tests/test_mmcv_kernels.py::test_upstream_mmcv_loads_kernels_by_name_from_mmcv_ext
(fails if mmcv stops looking its kernels up on ``mmcv._ext``) and
::test_upstream_mmcv_ops_call_these_kernel_names (fails if the ops the PISA zoo runs call a kernel
name or argument list that torch_kernels.py does not answer).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

MODULE_NAME = "mmcv._ext"


class TorchKernelsModule(types.ModuleType):
    """``mmcv._ext`` without compiled mmcv: the kernels of engine/torch_kernels.py, and for any other
    name a function that raises when called (mmcv checks only that its names exist)."""

    provided_by_pisa_train = True

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        from pisa_train.engine import torch_kernels

        kernel = torch_kernels.KERNELS.get(name) or torch_kernels.missing_kernel(name)
        setattr(self, name, kernel)
        return kernel


class TorchKernelsLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return TorchKernelsModule(spec.name)

    def exec_module(self, module) -> None:
        module.__doc__ = "mmcv's kernels from torchvision and torch (pisa_train/engine/torch_kernels.py)"


class TorchKernelsFinder(importlib.abc.MetaPathFinder):
    """Asked for ``mmcv._ext`` only after Python's own finders found no compiled one."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != MODULE_NAME:
            return None
        return importlib.machinery.ModuleSpec(fullname, TorchKernelsLoader(), origin="pisa-train")


def provide_mmcv_ext_when_missing() -> None:
    """Put the finder last on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(finder, TorchKernelsFinder) for finder in sys.meta_path):
        sys.meta_path.append(TorchKernelsFinder())


def mmcv_ext_is_compiled() -> bool:
    """Whether ``mmcv._ext`` is mmcv's compiled module (not this patch's stand-in)."""
    try:
        module = importlib.import_module(MODULE_NAME)
    except ImportError:
        return False
    return not getattr(module, "provided_by_pisa_train", False)
