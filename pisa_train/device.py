"""Choose the device a run uses: ``--device cpu|cuda``, or CUDA when a GPU is visible.

MMEngine has no device setting: it trains on CUDA whenever torch sees a GPU.
So ``--device cpu`` hides the GPUs from this process (CUDA_VISIBLE_DEVICES=""),
which must happen before anything initialises CUDA; the commands call
``choose_device`` first thing.
"""
from __future__ import annotations

import os

from pisa_train.errors import EnvironmentProblem


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
