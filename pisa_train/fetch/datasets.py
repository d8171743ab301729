"""Fetch a dataset archive, extract it safely, and remember that it is done.

``download_coco2017`` fetches the official COCO 2017 archives;
``download_dataset_url`` fetches a Roboflow COCO export link or any zip/tar of
a COCO-format dataset. Both record each extracted archive in
``DEST/.pisa-data.json``, so a second run checks that record and the extracted
folders and returns without downloading anything.

One download per destination: each holds an advisory lock on ``DEST/.pisa-data.lock``
(files.hold_exclusive_lock), which the kernel releases when the process ends, so a second
``pisa-data download`` into the same folder is refused at once, naming the first, and a killed
one never blocks the next. Only under that lock are the leftovers of killed runs removed: the
temporary files of atomic writes in DEST and the ``.DEST.extracting-*`` folders beside it.
A downloaded archive that turns out not to be the dataset asked for leaves nothing behind
that its extraction created.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import shutil
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pisa_train.data.layout import DatasetLayout, resolve_dataset
from pisa_train.errors import DataError, UsageError
from pisa_train.fetch.archives import DEFAULT_MAX_EXPANSION, extract_archive, remove_stale_extractions
from pisa_train.fetch.http import DEFAULT_MAX_DOWNLOAD_BYTES, download_file, mirrored_url, require_free_space
from pisa_train.files import hold_exclusive_lock, remove_stale_temp_files, write_json_atomically
from pisa_train.terminal import write_line

RECORD_FILE = ".pisa-data.json"
LOCK_FILE = ".pisa-data.lock"


@dataclass(frozen=True)
class DownloadLimits:
    """What a server or an archive may make pisa-data write (pisa-data download's flags)."""

    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES  # a download whose size the server does not say
    max_expansion: float = DEFAULT_MAX_EXPANSION  # an archive's uncompressed size over its own


@contextlib.contextmanager
def destination_lock(dest: Path, output: TextIO):
    """Hold ``dest``'s download lock; clear what killed runs left there, now that none can be running."""
    with hold_exclusive_lock(dest / LOCK_FILE, f"the dataset folder {dest}", "download into another --dest"):
        leftovers = [path.name for path in remove_stale_extractions(dest)] + remove_stale_temp_files(dest)
        if leftovers:
            write_line(f"{dest}: removed what an interrupted run left: {', '.join(leftovers)}", output)
        yield


@dataclass(frozen=True)
class RemoteArchive:
    file_name: str
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    # Paths the extracted archive must have produced; checked on later runs.
    provides: tuple[str, ...] = ()
    # Known files keep their path on a PISA_DATA_MIRROR; a link the user typed is used as given.
    use_mirror: bool = False


# Sizes and MD5s of the images.cocodataset.org files. COCO publishes neither;
# the values are the ones used independently by PaddleDetection
# (ppdet/utils/download.py), the R torchvision port and other download scripts
# (MD5), and by several mirrors' manifests (sizes, e.g. val2017.zip "Length:
# 815585330" in wget logs). The annotations come first: small, and they make
# a wrong --dest obvious quickly.
COCO2017_ARCHIVES = (
    RemoteArchive("annotations_trainval2017.zip",
                  "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                  252_907_541, md5="f4bbac642086de4f52a3fdda2de5fa2c",
                  provides=("annotations/instances_train2017.json", "annotations/instances_val2017.json"),
                  use_mirror=True),
    RemoteArchive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                  815_585_330, md5="442b8da7639aecaf257c1dceb8ba8c80", provides=("val2017",), use_mirror=True),
    RemoteArchive("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip",
                  19_336_861_798, md5="cced6f7f71b7629ddf16f17bbcfab6b2", provides=("train2017",), use_mirror=True),
)


def _source_id(archive: RemoteArchive) -> str:
    # A hash, not the URL: Roboflow URLs carry the user's key.
    return hashlib.sha256(f"{archive.url} {archive.md5} {archive.sha256}".encode()).hexdigest()


def _read_record(dest: Path) -> dict:
    try:
        return json.loads((dest / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}


def is_extracted(archive: RemoteArchive, dest: str | Path) -> bool:
    """True when an earlier run extracted this archive into ``dest`` and its files are still there."""
    dest = Path(dest)
    entry = _read_record(dest).get("extracted", {}).get(archive.file_name)
    if not entry or entry.get("source") != _source_id(archive):
        return False
    expected = list(archive.provides) or entry.get("top_level", [])
    return bool(expected) and all((dest / path).exists() for path in expected)


def remove_created(dest: Path, created: list[str]) -> str:
    """Remove the top-level entries an extraction created in ``dest``; say what, for the error line."""
    for name in created:
        target = dest / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    return f"removed what it extracted ({', '.join(created)})" if created else "nothing of it was kept"


def fetch_archive(archive: RemoteArchive, dest: str | Path, *, keep_archive: bool = False, progress: bool = True,
                  limits: DownloadLimits = DownloadLimits(), output: TextIO | None = None) -> list[str]:
    """Download, verify and extract ``archive`` into ``dest`` unless that was done already; return
    the top-level names the extraction created (that were not in ``dest`` before)."""
    dest = Path(dest)
    output = output if output is not None else sys.stdout
    if is_extracted(archive, dest):
        write_line(f"{archive.file_name}: already downloaded and extracted into {dest}", output)
        return []
    dest.mkdir(parents=True, exist_ok=True)
    path = download_file(mirrored_url(archive.url) if archive.use_mirror else archive.url, dest / archive.file_name,
                         expected_size=archive.size, md5=archive.md5, sha256=archive.sha256,
                         progress=progress, max_bytes=limits.max_bytes, output=output)
    present = {child.name for child in dest.iterdir()}
    top_level = extract_archive(path, dest, progress=progress, max_expansion=limits.max_expansion, output=output)
    created = [name for name in top_level if name not in present]
    missing = [name for name in archive.provides if not (dest / name).exists()]
    if missing:
        removed = remove_created(dest, created)
        raise DataError(f"{path} did not contain {', '.join(missing)}; it is not the expected archive ({removed}), "
                        f"delete it and run the command again")
    record = _read_record(dest)
    record.setdefault("extracted", {})[archive.file_name] = {"source": _source_id(archive), "top_level": top_level}
    write_json_atomically(dest / RECORD_FILE, record, sort_keys=True)
    if not keep_archive:
        path.unlink()
    write_line(f"{archive.file_name}: extracted {', '.join(top_level)} into {dest}", output)
    return created


def download_coco2017(dest: str | Path, *, keep_archives: bool = False, progress: bool = True,
                      output: TextIO | None = None, archives: tuple[RemoteArchive, ...] | None = None,
                      limits: DownloadLimits = DownloadLimits()) -> DatasetLayout:
    """COCO 2017 train/val images and annotations in the layout the configs expect.

    ``archives`` replaces the official list (tests serve small stand-ins).
    """
    dest = Path(dest).expanduser()
    output = output if output is not None else sys.stdout
    with destination_lock(dest, output):
        return _download_coco2017(dest, keep_archives, progress, output, archives, limits)


def _download_coco2017(dest: Path, keep_archives: bool, progress: bool, output: TextIO,
                       archives: tuple[RemoteArchive, ...] | None, limits: DownloadLimits) -> DatasetLayout:
    archives = archives if archives is not None else COCO2017_ARCHIVES
    pending = [archive for archive in archives if not is_extracted(archive, dest)]
    # JPEG archives are stored, not compressed: extracting needs about their
    # size again. The exact need of each archive is checked before extracting it.
    still_to_download = sum(archive.size - _bytes_present(dest, archive) for archive in pending)
    needed = still_to_download + sum(archive.size for archive in pending)
    if pending:
        require_free_space(dest, needed, "COCO 2017 (archives and their extracted images)")
    for archive in archives:
        fetch_archive(archive, dest, keep_archive=keep_archives, progress=progress, limits=limits, output=output)
    return resolve_dataset(dest)


def _bytes_present(dest: Path, archive: RemoteArchive) -> int:
    for candidate in (dest / archive.file_name, dest / (archive.file_name + ".part")):
        if candidate.exists():
            return candidate.stat().st_size
    return 0


def is_roboflow_link(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname is not None and parts.hostname.endswith("roboflow.com") and "/ds/" in parts.path


def archive_for_url(url: str, sha256: str | None = None, md5: str | None = None) -> RemoteArchive:
    """The archive a user-given link points at, with the file name it is saved under."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{url!r} is not an http(s) link; give `coco2017` or the URL of a zip or tar archive")
    if is_roboflow_link(url):
        if "key=" not in parts.query:
            raise UsageError(f"the Roboflow link {url} has no ?key=...; copy the whole link from Roboflow's "
                             f"Export > 'show download code' > Terminal (format COCO JSON)")
        dataset_id = posixpath.basename(parts.path.rstrip("/")) or "dataset"
        file_name = f"roboflow-{dataset_id}.zip"
    else:
        file_name = posixpath.basename(parts.path.rstrip("/")) or "dataset-archive"
    return RemoteArchive(file_name, url, md5=md5, sha256=sha256)


def download_dataset_url(url: str, dest: str | Path, *, sha256: str | None = None, md5: str | None = None,
                         keep_archive: bool = False, progress: bool = True, output: TextIO | None = None,
                         limits: DownloadLimits = DownloadLimits()) -> DatasetLayout:
    """A Roboflow COCO export or any zip/tar of a COCO-format dataset, extracted into ``dest``."""
    archive = archive_for_url(url, sha256, md5)
    dest = Path(dest).expanduser()
    output = output if output is not None else sys.stdout
    with destination_lock(dest, output):
        created = fetch_archive(archive, dest, keep_archive=keep_archive, progress=progress, limits=limits,
                                output=output)
        try:
            return resolve_dataset(dest)
        except DataError as error:
            removed = f"; {remove_created(dest, created)}" if created else ""
            roboflow = " (for Roboflow, choose the 'COCO JSON' export format)" if is_roboflow_link(url) else ""
            raise DataError(f"{error}{roboflow}{removed}") from None
