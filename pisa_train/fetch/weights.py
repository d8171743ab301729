"""One resolver for every checkpoint a run starts from: find it, download it from the first
source that has it, verify it, and hand a local file to the weights-only loader.

References (what configs, ``--load-from``, ``pisa-data weights`` and ``--doctor`` name):

* a local file;
* an http(s) URL;
* ``open-mmlab://NAME``, ``torchvision://NAME`` (``modelzoo://``), ``mmcls://NAME``: mapped
  to an URL by the functions mmengine 0.10.7 itself calls (mmengine/runner/checkpoint.py:
  hub/openmmlab.json with hub/deprecated.json and $MMENGINE_HOME/open_mmlab.json,
  torchvision's model URLs, hub/mmcls.json), so that a name means what it means to mmengine;
* a released model's name (fetch/model_zoo.py), for ``--load-from`` and ``pisa-data weights``.

Sources, in this order: each base URL in ``$PISA_TRAIN_WEIGHT_MIRRORS`` (whitespace-separated;
it replaces the scheme and host, the path is kept), then the URL itself, then
https://mmassets.onedl.ai, which serves download.openmmlab.com's files at the same paths
(download.openmmlab.com has failed since June 2026: mmdetection#12446, #12447). The mirrors
stand in for download.openmmlab.com and download.pytorch.org only; a torchvision URL keeps
its own host after them; any other URL is fetched as given.

Verification: the hex digits after the last ``-`` of a released file's name are the start
of its SHA-256 (torch.hub's convention). A download goes through fetch/http.py (resumable,
into ``NAME.part``); a file whose hash does not match is refused and deleted, and the next
source tried. The verified file is published atomically (files.py) as
``$TORCH_HOME/hub/checkpoints/NAME``, the folder torch.hub and mmengine use
(tests/test_pretrained_weights.py fails if torch.hub moves it); a file already there is
verified before its first use in a process. When no source has it, one line names the
file, each URL tried and why it failed, where to put the file by hand and, for a backbone,
how to train without it: exit 6 when no server answered (a network problem), else 5.

What each check is worth (docs/checkpoints.md says the same to users, and --doctor per file):

* the 8 hex digits in a released file's name are 32 bits of its SHA-256: they catch corruption
  (a truncated copy, an error page), not a hostile mirror, which can forge a file with the same
  prefix in minutes (tests/fixtures/prefix-collision);
* ``$PISA_TRAIN_WEIGHTS_SHA256=FILE`` (sha256sum's format, ``<sha256>  <file name>``; written by
  ``pisa-data weights --print-sha256``) pins files by name to their full SHA-256: a mirror cannot
  forge those;
* trust on first use: the first verified download of a file records its full SHA-256 in
  ``.pisa-train-sha256sums`` beside it; a later download of that name must match it. It keeps a
  file from changing after its first download, but trusts that first one;
* a plain ``http://`` mirror outside loopback and private addresses is refused unless named in
  ``$PISA_TRAIN_INSECURE_MIRRORS``: anyone on its path could serve other bytes;
* a download whose server does not say its size stops at ``max_bytes`` (fetch/http.py).
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pisa_train.errors import CheckpointError, EnvironmentProblem, PisaError, UsageError
from pisa_train.fetch.http import DownloadError, download_file, sha256_of_file
from pisa_train.fetch.model_zoo import MODEL_ZOO, released_model
from pisa_train.files import hold_exclusive_lock, remove_stale_temp_files, write_text_atomically
from pisa_train.terminal import write_line

WEIGHT_MIRRORS_ENV = "PISA_TRAIN_WEIGHT_MIRRORS"
WEIGHTS_SHA256_ENV = "PISA_TRAIN_WEIGHTS_SHA256"
INSECURE_MIRRORS_ENV = "PISA_TRAIN_INSECURE_MIRRORS"
FIRST_DOWNLOAD_RECORD = ".pisa-train-sha256sums"
DOWNLOAD_LOCK = ".pisa-train-download.lock"
# The largest checkpoints mmdet released are about 1 GB; a server that does not say the size stops here.
DEFAULT_MAX_WEIGHTS_BYTES = 4 << 30
_SHA256SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
OPENMMLAB_DOWNLOADS = "https://download.openmmlab.com"
ONEDL_ASSETS = "https://mmassets.onedl.ai"
TORCHVISION_DOWNLOADS = "https://download.pytorch.org"
URL_SCHEMES = ("http://", "https://")
NAME_SCHEMES = ("open-mmlab://", "openmmlab://", "torchvision://", "modelzoo://", "mmcls://")
# What `pisa-data weights` fetches without --only: what the main config and its released model need.
DEFAULT_WEIGHTS = ("open-mmlab://resnext101_32x4d", "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco")
_SHA256_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
# Enough for a mirror that is down to be passed over quickly, and for a flaky one to resume.
_RETRIES, _RETRY_WAIT_S, _TIMEOUT_S = 2, 1.0, 30.0


def torch_checkpoints_dir(environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """Where torch.hub (and so mmengine) caches and looks for downloaded checkpoints."""
    torch_home = environ.get("TORCH_HOME") or os.path.join(environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def is_remote(reference: str) -> bool:
    return str(reference).startswith(URL_SCHEMES + NAME_SCHEMES)


def sha256_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix a released file's name carries (``resnet50-0676ba61.pth``), or None."""
    match = _SHA256_IN_NAME.search(file_name)
    return match.group(1) if match else None


def checkpoint_url(reference: str) -> str:
    """The URL mmengine would download for ``reference`` (an URL stays as it is); for an
    ``open-mmlab://`` entry that names a file under $MMENGINE_HOME, that file's path."""
    if reference.startswith(URL_SCHEMES):
        return reference
    from mmengine.runner import checkpoint as mmengine_checkpoint  # mmengine's own tables

    scheme, _, name = reference.partition("://")
    if scheme in ("open-mmlab", "openmmlab"):
        table = mmengine_checkpoint.get_external_models()
        name = mmengine_checkpoint.get_deprecated_model_names().get(name, name)
    elif scheme in ("torchvision", "modelzoo"):
        table = mmengine_checkpoint.get_torchvision_models()
    elif scheme == "mmcls":
        table = mmengine_checkpoint.get_mmcls_models()
    else:
        raise CheckpointError(f"checkpoint {reference}: pisa-train fetches http(s) URLs and "
                              f"{', '.join(NAME_SCHEMES)} names, not {scheme}://")
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3)
        hint = f"did you mean {' or '.join(f'{scheme}://{c}' for c in close)}?" if close else \
            f"mmengine's {scheme}:// table has {len(table)} names, e.g. {', '.join(list(table)[:5])}"
        raise CheckpointError(f"checkpoint {reference} is not a name mmengine knows; {hint}")
    return table[name]


def weights_reference(value: str) -> str | None:
    """What ``value`` names as a checkpoint: an existing file, an URL or scheme reference, a
    released model (its URL) or a name of mmengine's open-mmlab:// table; None if none of these."""
    if os.path.isfile(os.path.expanduser(value)) or is_remote(value):
        return value
    model = released_model(value)
    if model is not None:
        if model.weights_url is None:
            raise CheckpointError(f"{model.name} has a config but no released checkpoint (MMDetection "
                                  f"published none); train it, or start from another model's weights")
        return model.weights_url
    if "/" in value or value.endswith((".pth", ".pt")):
        return None
    from mmengine.runner.checkpoint import get_external_models

    return f"open-mmlab://{value}" if value in get_external_models() else None


def _is_local_network(host: str) -> bool:
    """True for loopback, private and link-local addresses, and for names that resolve only to them."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, None)]
        except (OSError, UnicodeError):
            return False
    return bool(addresses) and all(a.is_loopback or a.is_private or a.is_link_local for a in addresses)


def check_mirrors(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Refuse a mirror that anyone on its path could answer for: plain http:// outside loopback and
    private networks, unless $PISA_TRAIN_INSECURE_MIRRORS names it; any scheme but http(s)."""
    accepted = {mirror.rstrip("/") for mirror in environ.get(INSECURE_MIRRORS_ENV, "").split()}
    for mirror in environ.get(WEIGHT_MIRRORS_ENV, "").split():
        parts = urllib.parse.urlsplit(mirror)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{WEIGHT_MIRRORS_ENV} names {mirror!r}, which is not an http(s) base URL; give "
                             f"base URLs such as https://weights.example.org, separated by spaces")
        if parts.scheme == "http" and mirror.rstrip("/") not in accepted and not _is_local_network(parts.hostname):
            raise UsageError(f"{WEIGHT_MIRRORS_ENV} names {mirror}, a plain-http mirror outside loopback and "
                             f"private networks: anyone on the way could serve other weights (the 8 hex digits in "
                             f"a file's name do not stop a forged file); use https://, pin the files with "
                             f"{WEIGHTS_SHA256_ENV}, or accept the risk by naming the mirror in "
                             f"{INSECURE_MIRRORS_ENV}")


def read_sha256sums(path: Path, what: str) -> dict[str, str]:
    """{file name: full SHA-256} from a file in sha256sum's format (``<sha256>  <name>``, ``*`` for binary
    mode; a name with folders counts by its last part); blank lines and ``#`` comments are skipped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{what} {path} cannot be read ({getattr(error, 'strerror', None) or error}); give "
                         f"a file in sha256sum's format, e.g. written by `pisa-data weights --print-sha256`") from None
    table: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SHA256SUM_LINE.match(line.rstrip("\r"))
        if not match:
            raise UsageError(f"{what} {path}, line {number}, is not '<sha256>  <file name>' (sha256sum's format: "
                             f"64 hex digits, two spaces, the name): {line[:80]!r}; fix it, or write the file "
                             f"again with `pisa-data weights --print-sha256`")
        name, digest = match.group(2).rsplit("/", 1)[-1], match.group(1).lower()
        if table.get(name, digest) != digest:
            raise UsageError(f"{what} {path} pins {name} twice, to different SHA-256s (line {number}); keep one")
        table[name] = digest
    return table


@dataclass(frozen=True)
class ExpectedSha256:
    """What a file's SHA-256 must be (all of it, or a prefix) and which check says so."""

    digest: str
    check: str  # "pinned in FILE", "recorded at its first download in FILE", "in its name"

    @property
    def full(self) -> bool:
        return len(self.digest) == 64


def expected_sha256(target: Path, environ: dict[str, str] | os._Environ = os.environ) -> ExpectedSha256 | None:
    """The strongest check there is for ``target``: its pin, else the record of its first download,
    else the prefix in its name; None for a name that carries no hash and is pinned nowhere."""
    pins = environ.get(WEIGHTS_SHA256_ENV, "").strip()
    if pins:
        digest = read_sha256sums(Path(pins).expanduser(), WEIGHTS_SHA256_ENV).get(target.name)
        if digest:
            return ExpectedSha256(digest, f"pinned in {pins}")
    record = target.parent / FIRST_DOWNLOAD_RECORD
    if record.is_file():
        digest = read_sha256sums(record, "the record of first downloads").get(target.name)
        if digest:
            return ExpectedSha256(digest, f"recorded at its first download in {record}")
    prefix = sha256_prefix(target.name)
    return ExpectedSha256(prefix, "in its name") if prefix else None


def record_first_download(target: Path, digest: str) -> Path:
    """Add ``target``'s full SHA-256 to the record beside it, unless the record has the name already."""
    record = target.parent / FIRST_DOWNLOAD_RECORD
    known = read_sha256sums(record, "the record of first downloads") if record.is_file() else {}
    if target.name not in known:
        known[target.name] = digest
        write_text_atomically(record, "".join(f"{value}  {name}\n" for name, value in sorted(known.items())))
    return record


def cached_sha256sums(dest: str | Path | None = None, environ: dict[str, str] | os._Environ = os.environ
                      ) -> list[str]:
    """``pisa-data weights --print-sha256``: sha256sum lines for the checkpoints in ``dest`` (default: the
    torch hub cache), to save as the file $PISA_TRAIN_WEIGHTS_SHA256 names."""
    folder = Path(dest).expanduser() if dest is not None else torch_checkpoints_dir(environ)
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")
                   and not path.name.endswith(".part")) if folder.is_dir() else []
    if not files:
        raise CheckpointError(f"no checkpoints in {folder} to list; fetch them first from a source you trust "
                              f"(`pisa-data weights [--only NAME]{f' --dest {dest}' if dest else ''}`)")
    return [f"{sha256_of_file(path)}  {path.name}" for path in files]


def download_sources(url: str, environ: dict[str, str] | os._Environ = os.environ) -> list[str]:
    """The URLs to try for ``url``, in order (see the module's docstring)."""
    mirrors = [mirror.rstrip("/") for mirror in environ.get(WEIGHT_MIRRORS_ENV, "").split()]
    for host, fallback in ((OPENMMLAB_DOWNLOADS, ONEDL_ASSETS), (TORCHVISION_DOWNLOADS, None)):
        if url.startswith(host + "/"):
            path = url[len(host):]
            sources = [mirror + path for mirror in mirrors] + [url]
            return sources + ([fallback + path] if fallback else [])
    return [url]


def _file_name(url: str) -> str:
    return url.partition("?")[0].rsplit("/", 1)[-1]


def cached_checkpoint_path(reference: str, environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """Where a downloaded ``reference`` is kept (it may not be there yet)."""
    url = checkpoint_url(reference)
    return torch_checkpoints_dir(environ) / _file_name(url) if url.startswith(URL_SCHEMES) else Path(url)


_verified: dict[str, tuple] = {}  # path -> (size, mtime, expected digest) when its hash was last found right


def cached_file_problem(path: Path, environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """None if ``path`` matches its pin, the record of its first download or the SHA-256 prefix in its
    name (the first of these there is; a name pinned nowhere, without a hash, passes), else why not."""
    expected = expected_sha256(path, environ)
    stamp = (path.stat().st_size, path.stat().st_mtime_ns, expected and expected.digest)
    if expected is None or _verified.get(str(path)) == stamp:
        return None
    actual = sha256_of_file(path)
    if not actual.startswith(expected.digest):
        if not expected.full:
            return f"its SHA-256 {actual[:16]}... does not start with the {expected.digest} in its name"
        return f"its SHA-256 {actual[:16]}... is not the {expected.digest[:16]}... {expected.check}"
    _verified[str(path)] = stamp
    return None


def verification_note(expected: ExpectedSha256 | None, record: Path | None) -> str:
    """What a download's check was worth, for its line."""
    if expected is None:
        return "not verified: its name carries no SHA-256 and no pin names it"
    if expected.full:
        return f"verified: its full SHA-256 matches the one {expected.check}"
    return (f"checked against the SHA-256 prefix in its name ({expected.digest}: catches corruption, not a forged "
            f"file; pin it with {WEIGHTS_SHA256_ENV}); its full SHA-256 is now recorded in {record}")


@dataclass
class _Attempt:
    url: str
    reason: str
    no_answer: bool


def fetch_checkpoint(reference: str, *, setting: str | None = None, dest: str | Path | None = None,
                     progress: bool = True, output: TextIO | None = None,
                     environ: dict[str, str] | os._Environ = os.environ,
                     max_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES) -> Path:
    """The local, verified file for ``reference`` (a file, URL or scheme reference), downloaded
    into ``dest`` (default: the torch hub cache) from the first source that serves it.
    ``setting``: the config key or flag that names it, for the message when nothing does."""
    if not is_remote(reference):
        path = Path(os.path.expanduser(reference))
        if not path.is_file():
            raise CheckpointError(f"checkpoint {reference} not found ({setting or 'load_from'}); give the path "
                                  f"of a .pth file, an URL, or a released model's name")
        return path
    output = output if output is not None else sys.stdout
    url = checkpoint_url(reference)
    if not url.startswith(URL_SCHEMES):  # an open-mmlab:// name of a file under $MMENGINE_HOME
        if not Path(url).is_file():
            raise CheckpointError(f"checkpoint {reference} is {url} (mmengine's open_mmlab.json), which does "
                                  f"not exist; put the file there or fix $MMENGINE_HOME/open_mmlab.json")
        return Path(url)
    target = Path(dest).expanduser() / _file_name(url) if dest is not None else \
        torch_checkpoints_dir(environ) / _file_name(url)
    check_mirrors(environ)
    if target.is_file() and cached_file_problem(target, environ) is None:
        return target
    # One download at a time into a weights folder: two runs that start together would write one .part.
    # The second waits, then finds the file the first verified.
    with hold_exclusive_lock(target.parent / DOWNLOAD_LOCK, f"the weights folder {target.parent}", "",
                             on_wait=lambda holder: write_line(f"{target.name}: waiting for {holder}, which is "
                                                               f"downloading into {target.parent}", output)):
        return _fetch_under_lock(reference, url, target, setting, progress, output, environ, max_bytes)


def _fetch_under_lock(reference: str, url: str, target: Path, setting: str | None, progress: bool, output: TextIO,
                      environ: dict[str, str] | os._Environ, max_bytes: int) -> Path:
    """fetch_checkpoint's download, while holding the weights folder's lock."""
    remove_stale_temp_files(target.parent)  # of killed downloads: none can be running now
    attempts: list[_Attempt] = []
    if target.is_file():
        problem = cached_file_problem(target, environ)
        if problem is None:
            return target
        target.unlink()  # not the file its name promises (a partial copy, an error page): fetch it afresh
        attempts.append(_Attempt(str(target), f"{problem}; deleted", no_answer=False))
        print(f"{target.name}: the copy in {target.parent} was not the right file ({problem}); deleted it",
              file=output, flush=True)
    expected = expected_sha256(target, environ)
    for source in download_sources(url, environ):
        try:
            download_file(source, target, sha256=expected and expected.digest, progress=progress, output=output,
                          retries=_RETRIES, retry_wait_s=_RETRY_WAIT_S, timeout_s=_TIMEOUT_S, max_bytes=max_bytes)
        except DownloadError as error:
            mismatch = expected is not None and "does not match the expected" in error.reason
            reason = f"{error.reason} ({expected.check})" if mismatch and expected.full else error.reason
            attempts.append(_Attempt(source, reason, error.no_answer))
            write_line(f"{target.name}: {source} failed ({reason})", output)
            continue
        # Trust on first use: the full hash of a file that passed its check guards every later download of it.
        record = record_first_download(target, sha256_of_file(target)) if expected is not None else None
        verified = verification_note(expected, record)
        write_line(f"{target.name}: downloaded from {source} into {target.parent}; {verified}", output)
        return target
    raise unavailable_error(reference, target, attempts, setting, expected)


def weights_name(reference: str) -> str:
    """What `pisa-data weights --only` takes for ``reference``: a released model's name where it is one."""
    return next((model.name for model in MODEL_ZOO.values() if model.weights_url == reference), reference)


def unavailable_error(reference: str, target: Path, attempts: list[_Attempt], setting: str | None,
                      expected: ExpectedSha256 | None = None) -> PisaError:
    """The one line for a checkpoint no source served: ENVIRONMENT_ERROR when no server answered."""
    name = weights_name(reference)
    known_as = f" ({name})" if not name.startswith(URL_SCHEMES) else ""
    tried = "; ".join(f"{attempt.url} ({attempt.reason})" for attempt in attempts)
    message = (f"cannot get checkpoint {target.name}{known_as}, tried: {tried}; download it where there is network "
               f"(`pisa-data weights --only {name}`, or set {WEIGHT_MIRRORS_ENV} to a mirror that has it) and put "
               f"it at {target}")
    if expected is not None and expected.full and any("does not match the expected" in attempt.reason
                                                      for attempt in attempts):
        undo = f"correct {expected.check.removeprefix('pinned in ')}" if expected.check.startswith("pinned") else \
            f"delete its line from {target.parent / FIRST_DOWNLOAD_RECORD}"
        message += (f"; a file whose SHA-256 is not the {expected.digest[:16]}... {expected.check} is refused from "
                    f"any source: if the file changed upstream on purpose, {undo}; to use a copy you trust anyway, "
                    f"give its path instead of {reference}")
    elif any("does not match the expected" in attempt.reason for attempt in attempts):
        # The name's hash is the check, so no copy of other bytes passes it; a local path is loaded as it is.
        message += (f"; a file whose SHA-256 does not start with {sha256_prefix(target.name)} is refused from any "
                    f"source: to use a copy you trust anyway, give its path instead of {reference} (a local file is "
                    f"loaded weights-only, without the check of its name)")
    backbone_init = setting if setting and setting.endswith("init_cfg.checkpoint") else \
        "model.backbone.init_cfg.checkpoint" if setting is None and reference.startswith(NAME_SCHEMES) else None
    if backbone_init:
        message += (f", or train without it: --cfg-options {backbone_init.removesuffix('.checkpoint')}=None "
                    f"(the backbone starts from random weights: far lower accuracy)")
    error_type = EnvironmentProblem if attempts and all(a.no_answer for a in attempts) else CheckpointError
    return error_type(message)


def fetch_weights(names: list[str] | None = None, dest: str | Path | None = None, *, progress: bool = True,
                  output: TextIO | None = None, max_bytes: int = DEFAULT_MAX_WEIGHTS_BYTES) -> list[Path]:
    """``pisa-data weights``: download (or verify, if present) the named weights into ``dest``
    (default: the torch hub folder). Names: released models, open-mmlab:// names, references, URLs."""
    references = []
    for name in names or DEFAULT_WEIGHTS:
        reference = weights_reference(name)
        if reference is None:
            raise UsageError(f"unknown weights {name!r}; give a released model's name (`pisa-train --list`), a "
                            f"name of mmengine's open-mmlab:// table (e.g. resnext101_32x4d, vgg16_caffe), a "
                            f"reference such as torchvision://resnet50, or an URL")
        references.append(reference)
    return [fetch_checkpoint(reference, dest=dest, progress=progress, output=output, max_bytes=max_bytes)
            for reference in references]


def config_checkpoints(cfg) -> list[tuple[str, str]]:
    """(config key, reference) for every checkpoint a config starts from: each
    ``init_cfg=dict(type='Pretrained', checkpoint=...)`` in its model, and ``load_from``."""
    found = []

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "Pretrained" and node.get("checkpoint"):
                found.append((f"{key}.checkpoint", str(node["checkpoint"])))
            for name, value in node.items():
                walk(value, f"{key}.{name}")
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, f"{key}.{index}")

    walk(cfg.get("model"), "model")
    if cfg.get("load_from"):
        found.append(("load_from", str(cfg.load_from)))
    return found


def where_mmengine_looks(paths: list[Path]) -> list[str]:
    """A note for weights fetched into a folder other than the one mmengine reads, else nothing."""
    if not paths or paths[0].parent.resolve() == torch_checkpoints_dir().resolve():
        return []
    return [f"note: mmengine looks in {torch_checkpoints_dir()}; set TORCH_HOME so that $TORCH_HOME/hub/checkpoints "
            f"is {paths[0].parent}, or give the file path in the config"]
