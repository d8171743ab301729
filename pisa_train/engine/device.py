"""What this machine offers a run: the device, mmcv's compiled kernels (and so whose RoIAlign
and NMS kernels ``--ops-backend`` means), optional packages.

MMEngine has no device setting: it trains on CUDA whenever torch sees a GPU.
So ``--device cpu`` hides the GPUs from this process (CUDA_VISIBLE_DEVICES=""),
which must happen before anything initialises CUDA; the commands call
``choose_device`` first thing.
"""
from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled
from pisa_train.errors import EnvironmentProblem, UsageError

OPS_BACKENDS = ("auto", "mmcv", "torchvision")  # --ops-backend: kernels for RoIAlign and NMS
AMP_DTYPES = ("float16", "bfloat16")  # --amp-dtype: what --amp autocasts to


def choose_device(requested: str | None) -> str:
    if requested == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        built_with = f"torch {torch.__version__} built with CUDA {torch.version.cuda}" if torch.version.cuda \
            else f"torch {torch.__version__} is a CPU-only build"
        raise EnvironmentProblem(f"--device cuda asked for, but no CUDA GPU is visible ({built_with}; "
                                 f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                                 f"check nvidia-smi, or train on the CPU with --device cpu")
    return "cuda" if available else "cpu"


class MmcvKernels(NamedTuple):
    devices: frozenset  # the devices mmcv's compiled ops have kernels for: {'cpu'}, {'cpu', 'cuda'} or none
    description: str  # how mmcv was built, for messages


MMCV_LITE = ("mmcv-lite, without compiled ops: RoIAlign, NMS and nms_match run on torchvision's and torch's "
             "kernels")


def mmcv_kernels() -> MmcvKernels:
    """What mmcv's compiled ops (``mmcv._ext``) can run on: nothing with mmcv-lite."""

    if not mmcv_ext_is_compiled():
        return MmcvKernels(frozenset(), MMCV_LITE)
    try:
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
    except ImportError as error:  # mmcv without compiled ops (mmcv-lite)
        return MmcvKernels(frozenset(), f"mmcv has no compiled ops: {error}")
    cuda = get_compiling_cuda_version()
    with_cuda = bool(cuda) and cuda != "not available"
    return MmcvKernels(frozenset({"cpu", "cuda"} if with_cuda else {"cpu"}),
                       f"mmcv ops compiled with {get_compiler_version()}, "
                       f"{'CUDA ' + cuda if with_cuda else 'without CUDA'}")


def choose_ops_backend(requested: str, device: str, kernels: MmcvKernels) -> str:
    """``mmcv`` or ``torchvision``: the backend ``--ops-backend requested`` means on ``device``,
    given what mmcv's compiled ops have kernels for (``mmcv_kernels()``). Pure, so that it
    can be tested anywhere; engine/patches/torchvision_nms.py says why there is a choice."""
    if requested not in OPS_BACKENDS:
        raise UsageError(f"--ops-backend must be one of {', '.join(OPS_BACKENDS)}, not '{requested}'")
    if requested == "auto":
        return "mmcv" if device in kernels.devices else "torchvision"
    if requested == "mmcv" and not kernels.devices:
        raise EnvironmentProblem(
            f"--ops-backend mmcv asked for, but this environment has {kernels.description}; use --ops-backend "
            f"auto (torchvision's kernels), or install compiled mmcv with make setup MMCV=compiled")
    if requested == "mmcv" and device not in kernels.devices:
        raise EnvironmentProblem(
            f"--ops-backend mmcv asked for, but this mmcv was built without {device.upper()} kernels for its "
            f"ops ({kernels.description}); use --ops-backend torchvision (or auto), or rebuild mmcv "
            f"with {'nvcc on the PATH (make setup)' if device == 'cuda' else 'its compiled ops'}")
    return requested


def choose_amp_dtype(requested: str | None, device: str) -> str:
    """The dtype ``--amp`` autocasts to on ``device``: ``--amp-dtype``, else float16 on CUDA (as
    mmdet's ``--amp``) and bfloat16 on the CPU. Pure, so that it can be tested anywhere."""
    if requested is None:
        return "bfloat16" if device == "cpu" else "float16"
    if requested not in AMP_DTYPES:
        raise UsageError(f"--amp-dtype must be one of {', '.join(AMP_DTYPES)}, not '{requested}'")
    if requested == "float16" and device == "cpu":
        # torch 2.14 autocasts the CPU to float16, but its float16 convolutions there are slow (a 3x3
        # convolution's forward and backward took 32x bfloat16's time on the development machine's
        # AVX-512 Intel Xeon), and mmengine 0.10.7's autocast asserts bfloat16 on the CPU.
        raise UsageError("--amp-dtype float16 is for GPUs: on the CPU, mmengine 0.10.7 autocasts to bfloat16 only "
                         "and torch's float16 convolutions there are many times slower; use --amp alone "
                         "(bfloat16 on the CPU), or --device cuda")
    return requested


def require_tensorboard() -> None:
    """MMEngine 0.10.7's TensorboardVisBackend imports ``torch.utils.tensorboard``, which needs
    the ``tensorboard`` package; without it MMEngine fails only when the first scalar is logged."""
    if importlib.util.find_spec("tensorboard") is None:
        raise EnvironmentProblem("--tensorboard needs the tensorboard package, which is not installed in this "
                                 "environment; install it with `.venv/bin/pip install tensorboard` "
                                 "(or leave out --tensorboard: the curves are drawn into the work dir anyway, "
                                 "see pisa-plot)")
