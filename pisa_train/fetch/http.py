"""Fetch one file over HTTP(S): resumable, verified, and atomic.

``download_file`` streams into ``DEST.part``, resumes it with an HTTP Range
request after an interruption, checks size and checksum, and only then renames
it to ``DEST``. A file under its final name is therefore always complete and
verified, which is what makes a second run a quick no-op. Only the standard
library (urllib) is used, so downloading needs no extra dependency.

Set ``PISA_DATA_MIRROR=http://host:port`` to fetch every known file from a
mirror that keeps the original paths (the tests point it at 127.0.0.1).

What a server cannot make it do: follow a redirect to another scheme than http(s), or from
https to plain http (``_RedirectsWithinHttp``); write more than ``max_bytes`` when it does not
say the size (a server that streams forever is cut there, and the ``.part`` deleted); leave a
``.part`` behind after a failed write (a full disk names the path, the space needed and free).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, TypeVar

from pisa_train.errors import DataError
from pisa_train.files import publish_atomically
from pisa_train.terminal import ProgressReporter, format_bytes, write_line

T = TypeVar("T")
MIRROR_ENV = "PISA_DATA_MIRROR"
USER_AGENT = "pisa-train (urllib)"
_CHUNK_BYTES = 1 << 20
# The most a download whose size the server does not announce may write (pisa-data --max-download-size).
DEFAULT_MAX_DOWNLOAD_BYTES = 64 << 30
# Names a checksum may be given as; a prefix of at least this many hex digits
# is accepted because released checkpoints carry the first 8 digits of their
# SHA-256 in the file name (the torch.hub convention).
_MIN_CHECKSUM_DIGITS = 8


class DownloadError(DataError):
    """A download that failed. ``reason`` says why in a few words (for a list of the sources
    tried); ``no_answer`` is True when no server answered usefully (refused, unreachable, TLS,
    timed out, kept failing): a network problem rather than a wrong file."""

    def __init__(self, message: str, reason: str, no_answer: bool = False):
        super().__init__(message)
        self.reason = reason
        self.no_answer = no_answer


def mirrored_url(url: str, environ: dict[str, str] | os._Environ = os.environ) -> str:
    """``url`` with its scheme and host replaced by ``$PISA_DATA_MIRROR``, if set."""
    mirror = environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return mirror.rstrip("/") + path


def require_free_space(directory: str | Path, needed_bytes: int, what: str) -> None:
    """Raise DataError if the filesystem holding ``directory`` has less than ``needed_bytes`` free."""
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise DataError(
            f"not enough free disk space for {what} in {directory}: needs {format_bytes(needed_bytes)} "
            f"({needed_bytes} bytes), {format_bytes(free)} ({free} bytes) free; "
            f"free some space or choose another --dest")


def _checksums(sha256: str | None, md5: str | None) -> dict[str, str]:
    wanted = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    for name, value in wanted.items():
        if len(value) < _MIN_CHECKSUM_DIGITS or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"{name} checksum {value!r} must be at least {_MIN_CHECKSUM_DIGITS} hex digits")
    return wanted


def _hash_file(path: Path, algorithms: list[str]) -> dict[str, hashlib._Hash]:
    hashers = {name: hashlib.new(name) for name in algorithms}
    with path.open("rb") as file:
        for block in iter(lambda: file.read(_CHUNK_BYTES), b""):
            for hasher in hashers.values():
                hasher.update(block)
    return hashers


def sha256_of_file(path: str | Path) -> str:
    return _hash_file(Path(path), ["sha256"])["sha256"].hexdigest()


def _mismatch(hashers: dict, wanted: dict[str, str]) -> str | None:
    for name, expected in wanted.items():
        actual = hashers[name].hexdigest()
        if not actual.startswith(expected):
            return f"{name} {actual} does not match the expected {expected}"
    return None


def verify_file(path: str | Path, expected_size: int | None = None,
                sha256: str | None = None, md5: str | None = None) -> None:
    """Raise DataError unless ``path`` has the expected size and checksums (those given)."""
    path = Path(path)
    wanted = _checksums(sha256, md5)
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DataError(f"{path} is {size} bytes but {expected_size} were expected; "
                        f"delete it and run the command again to download it afresh")
    problem = _mismatch(_hash_file(path, list(wanted)), wanted) if wanted else None
    if problem:
        raise DataError(f"{path} is not the expected file: {problem}; "
                        f"delete it and run the command again to download it afresh")


def shown_url(url: str) -> str:
    """``url`` for messages and logs: the query is hidden, as it may hold a key (Roboflow's ?key=...)."""
    base, separator, _ = url.partition("?")
    return base + ("?..." if separator else "")


class _Interrupted(Exception):
    """The transfer stopped before the end; the .part file keeps what arrived."""


def refused_redirect(url: str, target: str) -> DownloadError | None:
    """The error for a redirect from ``url`` to ``target`` that pisa-train does not follow, or None:
    https may go to https only (else anyone on the path could answer the plain request), http to http(s)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    new_scheme = urllib.parse.urlsplit(target).scheme.lower()
    allowed = ("https",) if scheme == "https" else ("http", "https")
    if new_scheme in allowed:
        return None
    return DownloadError(
        f"download of {shown_url(url)} was redirected to {shown_url(target)}, which pisa-train refuses: it follows "
        f"redirects from https to https and from http to http or https only; ask the server's owner for a direct "
        f"{'https' if scheme == 'https' else 'http(s)'} link, or download the file yourself",
        f"redirected to {new_scheme or 'a relative'}:// ({shown_url(target)}), refused")


class _RedirectsWithinHttp(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handler, which follows ftp:// too, with pisa-train's rule (``refused_redirect``)
    checked before anything is requested from the new address."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri")
        if target:
            refusal = refused_redirect(req.full_url, urllib.parse.urljoin(req.full_url, target))
            if refusal:
                fp.close()
                raise refusal
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_RedirectsWithinHttp)


def _open(url: str, start: int, timeout_s: float):
    headers = {"User-Agent": USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    return _OPENER.open(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def write_failure(path: Path, error: OSError, needed_bytes: int | None, what: str,
                  unknown_need: str | None = "an unknown amount (the server did not say the size)") -> DataError:
    """One line for a write that failed; for a full disk, the path, the space needed (when known, or
    ``unknown_need``) and the space free."""
    if error.errno != errno.ENOSPC:
        return DataError(f"could not write {path}: {error.strerror or error} (errno {error.errno}); {what}; "
                         f"fix that (a file-size limit such as `ulimit -f`, a read-only folder, a failing disk) "
                         f"and run the command again")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    needed = "" if needed_bytes is None and unknown_need is None else \
        f"needs {unknown_need if needed_bytes is None else f'{format_bytes(needed_bytes)} ({needed_bytes} bytes)'}, "
    return DataError(f"could not write {path}: the disk is full (No space left on device); {needed}"
                     f"{format_bytes(free)} ({free} bytes) free; {what}; free some space or choose another --dest")


def _content_range_start_and_total(value: str | None) -> tuple[int | None, int | None]:
    # "bytes 100-999/1000" or "bytes 100-999/*"
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[len("bytes "):].partition("/")
    start = span.partition("-")[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


def _http_error_message(url: str, error: urllib.error.HTTPError) -> str:
    if error.code in (401, 403):
        fix = "check that the link is complete and still valid (Roboflow links need their ?key=...)"
    elif error.code == 404:
        fix = "check the link; the file may have moved"
    else:
        fix = "try again later"
    return f"download of {shown_url(url)} failed: HTTP {error.code} {error.reason}; {fix}"


def _unreachable(error: urllib.error.URLError) -> bool:
    """No route to the server at all: retrying will not help, so fail at once."""
    # A TLS failure (download.openmmlab.com's since June 2026) will not pass on a retry either.
    return isinstance(error.reason, (socket.gaierror, ConnectionRefusedError, ssl.SSLError))


def download_file(url: str, dest: str | Path, *, expected_size: int | None = None,
                  sha256: str | None = None, md5: str | None = None, progress: bool = True,
                  retries: int = 5, retry_wait_s: float = 2.0, timeout_s: float = 60.0,
                  max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES, output: TextIO | None = None) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to ``dest.part`` first; after an interruption the transfer
    resumes from where it stopped (up to ``retries`` times, and again on the
    next call). Size and checksums (``sha256``/``md5``, full or a prefix of at
    least 8 hex digits) are checked before the rename to ``dest``. A ``dest``
    that already exists is verified and kept, not downloaded again. Without
    ``expected_size``, a file larger than ``max_bytes`` is refused (or cut and
    deleted, when the server does not say its size).
    """
    dest = Path(dest)
    output = output if output is not None else sys.stdout
    wanted = _checksums(sha256, md5)
    if dest.exists():
        verify_file(dest, expected_size, sha256, md5)
        verified = " and verified" if expected_size is not None or wanted else ""
        write_line(f"{dest}: already downloaded{verified}", output)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if expected_size is not None:
        have = part.stat().st_size if part.exists() else 0
        require_free_space(dest.parent, max(expected_size - have, 0), f"downloading {dest.name}")

    attempt = 0
    while True:
        try:
            _transfer(url, part, expected_size, progress, timeout_s, max_bytes, output)
            break
        except _Interrupted as interruption:
            attempt += 1
            have = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                raise DownloadError(
                    f"download of {shown_url(url)} was interrupted ({interruption}) after {format_bytes(have)}; "
                    f"run the same command again to resume from {part}",
                    f"interrupted: {interruption}", no_answer=True) from None
            wait = retry_wait_s * attempt
            print(f"{dest.name}: interrupted ({interruption}) at {format_bytes(have)}; "
                  f"resuming in {wait:g} s (attempt {attempt} of {retries})", file=output, flush=True)
            time.sleep(wait)

    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(f"download of {shown_url(url)} gave {size} bytes but {expected_size} were expected; "
                            f"the partial file was deleted, run the command again",
                            f"{size} bytes, not {expected_size}")
    problem = _mismatch(_hash_file(part, list(wanted)), wanted) if wanted else None
    if problem:
        # Keeping bad bytes would make every later resume reuse them.
        part.unlink()
        raise DownloadError(f"download of {shown_url(url)} is corrupt: {problem}; the file was deleted, "
                            f"run the command again (if it fails again, the file changed upstream)",
                            f"refused and deleted: {problem}")
    publish_atomically(dest, lambda temp: os.replace(part, temp))
    return dest


def _transfer(url: str, part: Path, expected_size: int | None, progress: bool,
              timeout_s: float, max_bytes: int, output: TextIO) -> None:
    """One request: append what the server sends to ``part``; raise _Interrupted if it stops early."""
    start = part.stat().st_size if part.exists() else 0
    if expected_size is not None and start > expected_size:
        part.unlink()
        start = 0
    if expected_size is not None and start == expected_size:
        return  # complete already; verification follows
    try:
        response = _open(url, start, timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start > 0:
            # Our .part is longer than the file the server has now: start over.
            part.unlink()
            raise _Interrupted("the server could not resume (HTTP 416)") from None
        if error.code >= 500 or error.code == 429:
            raise _Interrupted(f"HTTP {error.code} {error.reason}") from None
        raise DownloadError(_http_error_message(url, error), f"HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if _unreachable(error):
            raise DownloadError(f"cannot reach {urllib.parse.urlsplit(url).netloc} to download {shown_url(url)} "
                                f"({error.reason}); check the network connection, or set {MIRROR_ENV} "
                                f"to a mirror", f"cannot connect: {error.reason}", no_answer=True) from None
        raise _Interrupted(str(error.reason)) from None
    except (OSError, http.client.HTTPException) as error:
        raise _Interrupted(f"{type(error).__name__}: {error}") from None

    with response:
        length_header = response.headers.get("Content-Length")
        body_length = int(length_header) if length_header and length_header.isdigit() else None
        if start > 0 and response.status == 206:
            range_start, total = _content_range_start_and_total(response.headers.get("Content-Range"))
            if range_start != start:
                part.unlink()
                raise _Interrupted(f"the server resumed at byte {range_start}, not {start}")
            if total is None and body_length is not None:
                total = start + body_length
        else:
            if start > 0:
                print(f"{part.name}: the server does not support resuming; starting again from the beginning",
                      file=output, flush=True)
                start = 0
            total = body_length
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(f"{shown_url(url)} is {total} bytes on the server but {expected_size} were "
                                f"expected; the file changed upstream or the link is wrong",
                                f"{total} bytes on the server, not {expected_size}")
        if expected_size is None and total is not None and total > max_bytes:
            raise DownloadError(f"{shown_url(url)} is {format_bytes(total)} ({total} bytes), more than the "
                                f"{format_bytes(max_bytes)} limit for a file whose size is not known beforehand; "
                                f"if the file is really that big, raise the limit with pisa-data's "
                                f"--max-download-size",
                                f"{total} bytes, over the limit of {max_bytes}")
        if total is not None:
            require_free_space(part.parent, total - start, f"downloading {part.name[:-len('.part')]}")

        reporter = ProgressReporter(part.name[:-len(".part")], total, done=start, stream=output) if progress else None
        received = start
        try:
            with _writing(part, url, None if total is None else total - start), \
                    part.open("r+b" if start > 0 else "wb") as file:
                file.seek(start)
                file.truncate()
                while True:
                    # Only network errors count as an interruption; a failed
                    # write (disk full) is not retried.
                    try:
                        block = response.read(_CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as error:
                        raise _Interrupted(f"{type(error).__name__}: {error}") from None
                    if not block:
                        break
                    if total is None and received + len(block) > max_bytes:
                        file.close()
                        part.unlink()
                        raise DownloadError(
                            f"download of {shown_url(url)} went past {format_bytes(max_bytes)} without the server "
                            f"saying its size (no Content-Length); stopped, and deleted {part}; if the file is "
                            f"really that big, raise the limit with pisa-data's --max-download-size",
                            f"size not announced, cut at the limit of {max_bytes} bytes; deleted")
                    file.write(block)
                    received += len(block)
                    if reporter:
                        reporter.update(received)
                file.flush()
                os.fsync(file.fileno())
        finally:
            if reporter:
                reporter.finish()
        # http.client returns a short body without an error when the server
        # closes the connection early, so the length is checked here.
        if total is not None and received < total:
            raise _Interrupted(f"connection closed after {received} of {total} bytes")


@contextlib.contextmanager
def _writing(part: Path, url: str, needed_bytes: int | None):
    """Turn a failed write of ``part`` into a DownloadError, deleting ``part``: resuming onto a disk that
    could not take the bytes would fail again, and the next source may be tried on a disk with room."""
    try:
        yield
    except OSError as error:
        part.unlink(missing_ok=True)
        failure = write_failure(part, error, needed_bytes, "the partial file was deleted")
        raise DownloadError(str(failure), f"writing failed ({error.strerror or error}); deleted") from None


def full_disk_is_one_line(work: Callable[[], T], folder: str | os.PathLike) -> T:
    """``work()``, with a full disk anywhere in it (a record, a synthetic image, a plot) as one line naming the
    path (else ``folder``); downloads and extractions say the space they needed themselves."""
    try:
        return work()
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise write_failure(Path(error.filename or folder), error, None, "what was finished is kept",
                            unknown_need=None) from None
