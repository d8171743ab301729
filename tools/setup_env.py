#!/usr/bin/env python3
"""Create or update ``.venv/`` with everything pisa-train needs: ``make setup`` runs this script, and
``python3 tools/setup_env.py --help`` lists its options. The set-up itself is the package pisa_setup/
beside it (standard library only: it runs before the environment it builds exists); Python puts this
script's folder on sys.path, which is how the import below finds it."""
import sys

from pisa_setup.cli import main

if __name__ == "__main__":
    sys.exit(main())
