#!/usr/bin/env python
"""MMDetection habit: ``python tools/test.py CONFIG CHECKPOINT [options]`` is ``pisa-eval CONFIG CHECKPOINT [options]``."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pisa_train.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
