"""pisa-train: train and evaluate Prime Sample Attention (PISA) detectors on MMDetection 3.

Importing this package is cheap on purpose: it imports neither torch nor mmdet,
so that ``pisa-train --help`` answers at once.
"""
__version__ = "0.1.0"
