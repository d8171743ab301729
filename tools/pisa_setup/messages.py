"""How the set-up talks to its user: a ``[setup]`` line per step, and one exception whose message says
what failed and what to do (cli.main prints it as ``[setup] error: ...`` and exits 1)."""
from __future__ import annotations


class SetupFailed(Exception):
    """A step failed; the message says which and what to do."""


def say(message: str) -> None:
    print(f"[setup] {message}", flush=True)
