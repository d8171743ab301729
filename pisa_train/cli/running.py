"""How every pisa-* command runs: parse the command line, then do the work through the one place
that turns errors into exit codes (``run_command``); or, with --print-config, show the config the
work would get and stop (``print_config``)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pisa_train.config.requests import TestRequest, TrainRequest
from pisa_train.error_reporting import run_reporting_errors
from pisa_train.terminal import write_line


def print_config(prog: str, request: TrainRequest | TestRequest, build: Callable) -> int:
    """--print-config: ``build`` (a builder of config/build.py) makes the config the run would
    get; it is printed in MMEngine's Python format (what --data resolved goes to stderr)."""
    from pisa_train.config.show import render_config
    from pisa_train.engine.device import choose_device
    from pisa_train.engine.runner import resolve_resume

    cfg, notes = build(request, choose_device(request.device))
    cfg = resolve_resume(cfg, request.trust_checkpoint, notes.append)
    for line in notes:
        write_line(f"[{prog}] {line}", sys.stderr)
    print(render_config(cfg, request.print_config), end="", flush=True)
    return 0


def request_parser(build_parser: Callable[[], argparse.ArgumentParser], request_class: type):
    """A command's ``parse_request(argv)``: the request (config/requests.py) its command line makes, as its
    main() hands it on; it exits on a bad command line, as argparse does."""
    def parse_request(argv: list[str]):
        return request_class.from_namespace(build_parser().parse_args(argv))

    parse_request.request_class = request_class  # tests/test_requests.py checks each command against it
    return parse_request


def run_request(prog: str, build_parser: Callable[[], argparse.ArgumentParser], request_class: type,
                work: Callable, argv: list[str] | None, build: Callable | None = None) -> int:
    """main() of a command whose work takes its request (config/requests.py): with --print-config, the
    config ``build`` makes is printed; else ``work(request)`` runs (what it returns is for the Python API)."""
    def run(args: argparse.Namespace) -> int:
        request = request_class.from_namespace(args)
        if build is not None and request.print_config is not None:
            return print_config(prog, request, build)
        work(request)
        return 0

    return run_command(prog, build_parser(), run, argv)


def run_command(prog: str, parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], int | None],
                argv: list[str] | None) -> int:
    """Parse ``argv`` and run ``work(args)`` through the one place that turns errors into exit codes.
    --help and usage errors end with argparse's own exit code (0 or 2), returned, not raised."""
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    return run_reporting_errors(prog, lambda: work(args), debug=args.debug)
