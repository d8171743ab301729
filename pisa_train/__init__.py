"""pisa-train: train and evaluate Prime Sample Attention (PISA) detectors on MMDetection 3.

Importing this package is cheap on purpose: it imports neither torch nor mmdet,
so that ``pisa-train --help`` answers at once.
"""
from pisa_train.engine.patches.mmcv_ext_from_torchvision import provide_mmcv_ext_when_missing

__version__ = "0.1.0"

# Before anything imports mmcv.ops (mmdet does as it is imported): without compiled mmcv, its kernels
# come from torchvision and torch. Registering the finder imports nothing; see the module's docstring.
provide_mmcv_ext_when_missing()
