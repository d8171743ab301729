#!/usr/bin/env python
"""MMDetection habit: ``python tools/train.py CONFIG [options]`` is ``pisa-train CONFIG [options]``."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pisa_train.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
