"""``python3 -m pisa_setup`` (from tools/): the same as tools/setup_env.py."""
import sys

from .cli import main

sys.exit(main())
