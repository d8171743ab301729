"""How every pisa-* command runs: parse the command line, then do the work through the one place
that turns errors into exit codes (``run_command``); or, with --print-config, show the config the
work would get and stop (``print_config``)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pisa_train.error_reporting import run_reporting_errors


def print_config(prog: str, args: argparse.Namespace, build: Callable) -> int:
    """--print-config: ``build`` (a builder of config/build.py) makes the config the run would
    get; it is printed in MMEngine's Python format (what --data resolved goes to stderr)."""
    from pisa_train.config.show import render_config
    from pisa_train.engine.device import choose_device
    from pisa_train.engine.runner import resolve_resume

    cfg, notes = build(args, choose_device(args.device))
    cfg = resolve_resume(cfg, getattr(args, "trust_checkpoint", None) or (), notes.append)
    for line in notes:
        print(f"[{prog}] {line}", file=sys.stderr, flush=True)
    print(render_config(cfg, args.print_config), end="", flush=True)
    return 0


def run_command(prog: str, parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], int | None],
                argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``work(args)`` through the one place that turns errors into exit codes.
    --help and usage errors end with argparse's own exit code (0 or 2), returned, not raised."""
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    return run_reporting_errors(prog, lambda: work(args), debug=args.debug)
