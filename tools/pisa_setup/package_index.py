"""Download one sdist from the package index without asking pip to read it.

``pip download mmcv==2.1.0`` prepares the sdist's metadata, which runs mmcv 2.1.0's setup.py, whose
``get_version`` fails on Python 3.13 (PEP 667: ``KeyError: '__version__'``) before the set-up can
patch it. So the set-up reads the index's simple page (PEP 503: one link per file, with its
SHA-256 in the link's fragment) and downloads the file itself, checking that hash.

The index is pip's: ``PIP_INDEX_URL`` when set, else pip's configured ``global.index-url``, else
PyPI. Standard library only: it runs before the environment exists.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

PYPI_SIMPLE = "https://pypi.org/simple/"


class IndexProblem(Exception):
    """The file could not be found or fetched; the message says where and why."""


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (text, href)
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None and data.strip():
            self.links.append((data.strip(), self._href))
            self._href = None


def index_url() -> str:
    """pip's index: PIP_INDEX_URL, pip's configured global.index-url, or PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    try:
        configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                    capture_output=True, text=True, timeout=60)
        if configured.returncode == 0 and configured.stdout.strip():
            return configured.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass  # no pip in this Python: PyPI
    return PYPI_SIMPLE


def _read(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as problem:
        raise IndexProblem(f"could not read {url}: {getattr(problem, 'reason', problem)}") from problem


def download_sdist(name: str, version: str, dest: Path, index: str | None = None) -> Path:
    """Download ``name``'s ``version`` sdist (.tar.gz) into ``dest`` and return its path, after checking
    the SHA-256 the index publishes for it."""
    index = index or index_url()
    page_url = index.rstrip("/") + "/" + re.sub(r"[-_.]+", "-", name).lower() + "/"
    page = _read(page_url).decode("utf-8", errors="replace")
    parser = _Links()
    parser.feed(page)
    wanted = {f"{name}-{version}.tar.gz", f"{name.replace('-', '_')}-{version}.tar.gz"}
    found = [(text, href) for text, href in parser.links if text in wanted]
    if not found:
        raise IndexProblem(f"the index {page_url} lists no {name}-{version}.tar.gz")
    filename, href = found[0]
    url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
    expected = dict(part.split("=", 1) for part in fragment.split("&") if "=" in part).get("sha256")
    data = _read(url)
    digest = hashlib.sha256(data).hexdigest()
    if expected and digest != expected:
        raise IndexProblem(f"{url} has SHA-256 {digest}, but the index says {expected}; not using it")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / filename
    with tempfile.NamedTemporaryFile(dir=dest, delete=False, prefix=".partial-") as partial:
        partial.write(data)
    os.replace(partial.name, target)
    return target
