"""pisa-train: train and evaluate Prime Sample Attention (PISA) detectors on MMDetection 3.

Importing this package is cheap on purpose: it imports neither torch nor mmdet,
so that ``pisa-train --help`` answers at once.
"""
from pisa_train.engine.patches.mmcv_ext_from_torchvision import provide_mmcv_ext_when_missing

__version__ = "0.1.0"

# The Python API (api.py): pisa_train.train(config, **options), pisa_train.evaluate(config, checkpoint,
# **options), pisa_train.infer(config, checkpoint, images, **options). Imported when first used, so
# that `import pisa_train` (and every console command's --help) stays as cheap as it was.
API = ("train", "evaluate", "infer", "TrainingResult")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from pisa_train import api  # noqa: PLC0415 - deferred: see API above

        return getattr(api, name)
    raise AttributeError(f"module 'pisa_train' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])

# Before anything imports mmcv.ops (mmdet does as it is imported): without compiled mmcv, its kernels
# come from torchvision and torch. Registering the finder imports nothing; see the module's docstring.
provide_mmcv_ext_when_missing()
