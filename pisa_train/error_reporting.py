"""The one place where errors become a line on stderr and an exit code.

Every console command runs its work through ``run_reporting_errors``. Known
errors (``pisa_train.errors``) print one line; anything else prints its type
and message with a hint to rerun with ``--debug``, which shows the traceback.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable

from pisa_train import exit_codes
from pisa_train.errors import PisaError


def run_reporting_errors(prog: str, work: Callable[[], int | None], debug: bool = False) -> int:
    try:
        return work() or exit_codes.SUCCESS
    except PisaError as error:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted by user", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except Exception as error:  # noqa: BLE001 - this is the boundary that reports everything
        if debug:
            traceback.print_exc()
            print(f"{prog}: error: {type(error).__name__}: {error}", file=sys.stderr)
        else:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(f"{prog}: error: {type(error).__name__}: {first_line} (rerun with --debug for the traceback)",
                  file=sys.stderr)
        return exit_codes.UNEXPECTED_ERROR
