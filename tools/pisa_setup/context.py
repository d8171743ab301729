"""What one run of the set-up works on, passed to every step: the repository, the venv, the pins and the
wheelhouse it installs from (None: the package index); with the few helpers that act on that venv."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .messages import SetupFailed, say
from .pins import Pins

__all__ = ["SetupContext", "SetupFailed", "cache_dir", "run", "say"]

# Written into the venv when the set-up finished: what it was asked for, so that an unchanged request
# returns at once.
STAMP_NAME = ".pisa-train-setup.json"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, **kwargs)


def cache_dir() -> Path:
    """Where built mmcv wheels, sdists and build logs are kept: outside the repository, so they outlive a venv."""
    root = os.environ.get("PISA_TRAIN_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pisa-train"


@dataclass(frozen=True)
class SetupContext:
    repo_root: Path
    venv: Path
    pins: Pins
    # The wheelhouse to install from, pip --no-index (--offline DIR); None: the package index.
    offline_from: Path | None = None

    @property
    def venv_python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.venv / STAMP_NAME

    def shown_path(self, path: Path) -> str:
        return str(path.relative_to(self.repo_root)) if path.is_relative_to(self.repo_root) else str(path)

    def pip_environment(self) -> dict:
        """pip's environment: offline, the wheelhouse and nothing else (no index, no find-links or
        constraints from pip's configuration files or PIP_* variables)."""
        env = dict(os.environ)
        if self.offline_from is not None:
            for variable in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONSTRAINT"):
                env.pop(variable, None)
            env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
        return env

    def pip(self, *args: str) -> None:
        """The venv's pip; ``install`` reads the wheelhouse alone when offline."""
        source = ["--no-index", "--find-links", str(self.offline_from)] \
            if self.offline_from and args[0] == "install" else []
        run([str(self.venv_python), "-m", "pip", "--disable-pip-version-check", *args, *source],
            env=self.pip_environment())

    def venv_python_json(self, code: str) -> dict:
        """Run ``code`` in the venv's Python; the JSON object its last line prints."""
        out = subprocess.run([str(self.venv_python), "-c", code], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def installed_version(self, distribution: str) -> str | None:
        code = ("import json, importlib.metadata as m\n"
                f"try: v = m.version({distribution!r})\n"
                "except m.PackageNotFoundError: v = None\n"
                "print(json.dumps({'v': v}))")
        return self.venv_python_json(code)["v"]
