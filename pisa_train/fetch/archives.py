"""Safe extraction of zip and tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) archives.

Datasets come from the internet, so an archive is checked before anything is
written: entries with absolute paths, ``..`` components, links that point
outside the destination, and device files are refused. The archive is then
extracted into a temporary folder beside the destination and moved into place
only when extraction finished, so a refused or corrupt archive leaves nothing
half-extracted behind.
"""
from __future__ import annotations

import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pisa_train.fetch.http import require_free_space
from pisa_train.errors import DataError
from pisa_train.terminal import ProgressReporter

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_SHOWN_REFUSALS = 3


@dataclass(frozen=True)
class ArchiveEntry:
    """What an archive member would create, in the archive's own terms."""

    name: str
    kind: str  # "file", "dir", "symlink", "hardlink" or "special"
    size: int = 0
    link_target: str = ""


def archive_format(path: str | Path) -> str:
    """``"zip"`` or ``"tar"``, judged by content (download names often lack an extension)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    with path.open("rb") as file:
        head = file.read(64)
    hint = " (it looks like a web page)" if head.lstrip().lower().startswith((b"<!doctype", b"<html")) else ""
    raise DataError(f"{path} is neither a zip nor a tar archive{hint}; "
                    f"check that the link downloads the dataset archive itself")


def _split_parts(name: str) -> list[str]:
    return [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(_WINDOWS_DRIVE.match(name))


def unsafe_reason(entry: ArchiveEntry) -> str | None:
    """Why extracting ``entry`` could write outside the destination, or None if it is safe."""
    if _is_absolute(entry.name):
        return f"{entry.name!r} is an absolute path"
    if ".." in _split_parts(entry.name):
        return f"{entry.name!r} climbs out with '..'"
    if entry.kind == "special":
        return f"{entry.name!r} is a device or pipe, not a file"
    if entry.kind in ("symlink", "hardlink"):
        target = entry.link_target
        if _is_absolute(target):
            return f"{entry.name!r} links to the absolute path {target!r}"
        # A symlink is resolved from its own folder, a tar hard link from the archive root.
        base = posixpath.dirname(entry.name.replace("\\", "/")) if entry.kind == "symlink" else ""
        resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
        if resolved == ".." or resolved.startswith("../"):
            return f"{entry.name!r} links outside the destination ({target!r})"
    return None


def _zip_entries(archive: zipfile.ZipFile) -> list[ArchiveEntry]:
    entries = []
    for info in archive.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            target = archive.read(info).decode("utf-8", "replace")
            entries.append(ArchiveEntry(info.filename, "symlink", 0, target))
        elif info.is_dir():
            entries.append(ArchiveEntry(info.filename, "dir"))
        else:
            entries.append(ArchiveEntry(info.filename, "file", info.file_size))
    return entries


def _tar_entries(archive: tarfile.TarFile) -> list[ArchiveEntry]:
    entries = []
    for member in archive.getmembers():
        if member.issym():
            entries.append(ArchiveEntry(member.name, "symlink", 0, member.linkname))
        elif member.islnk():
            entries.append(ArchiveEntry(member.name, "hardlink", 0, member.linkname))
        elif member.isdir():
            entries.append(ArchiveEntry(member.name, "dir"))
        elif member.isfile():
            entries.append(ArchiveEntry(member.name, "file", member.size))
        else:
            entries.append(ArchiveEntry(member.name, "special"))
    return entries


def list_entries(archive_path: str | Path) -> list[ArchiveEntry]:
    archive_path = Path(archive_path)
    try:
        if archive_format(archive_path) == "zip":
            with zipfile.ZipFile(archive_path) as archive:
                return _zip_entries(archive)
        with tarfile.open(archive_path) as archive:
            return _tar_entries(archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        raise _corrupt(archive_path, error) from None


def _corrupt(archive_path: Path, error: Exception) -> DataError:
    return DataError(f"{archive_path} is corrupt or truncated ({type(error).__name__}: {error}); "
                     f"delete it and download it again")


def check_archive_is_safe(archive_path: str | Path, dest_dir: str | Path) -> list[ArchiveEntry]:
    """Return the entries of the archive, or raise DataError naming every unsafe one."""
    entries = list_entries(archive_path)
    refusals = [reason for reason in map(unsafe_reason, entries) if reason]
    if refusals:
        shown = "; ".join(refusals[:_SHOWN_REFUSALS])
        more = f"; and {len(refusals) - _SHOWN_REFUSALS} more" if len(refusals) > _SHOWN_REFUSALS else ""
        raise DataError(f"refusing to extract {archive_path}: {len(refusals)} entries would write outside "
                        f"{dest_dir} ({shown}{more}); nothing was extracted, get the archive from a "
                        f"trusted source")
    return entries


def extract_archive(archive_path: str | Path, dest_dir: str | Path, *, progress: bool = True,
                    output: TextIO | None = None) -> list[str]:
    """Extract a zip or tar archive into ``dest_dir``; return its top-level names.

    Existing folders in ``dest_dir`` are merged with the archive's, and files
    of the same name are replaced (re-extracting after an interruption works).
    """
    archive_path, dest_dir = Path(archive_path), Path(dest_dir)
    output = output if output is not None else sys.stdout
    entries = check_archive_is_safe(archive_path, dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    require_free_space(dest_dir.parent, sum(entry.size for entry in entries), f"extracting {archive_path.name}")

    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.extracting-", dir=dest_dir.parent))
    try:
        reporter = ProgressReporter(f"extracting {archive_path.name}", len(entries), unit="files",
                                    stream=output) if progress else None
        try:
            if archive_format(archive_path) == "zip":
                _extract_zip(archive_path, staging, reporter)
            else:
                _extract_tar(archive_path, staging, reporter)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise _corrupt(archive_path, error) from None
        finally:
            if reporter:
                reporter.finish()
        top_level = sorted(child.name for child in staging.iterdir())
        dest_dir.mkdir(parents=True, exist_ok=True)
        for name in top_level:
            _move_merging(staging / name, dest_dir / name)
        return top_level
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_zip(archive_path: Path, staging: Path, reporter: ProgressReporter | None) -> None:
    with zipfile.ZipFile(archive_path) as archive:
        for done, info in enumerate(archive.infolist(), start=1):
            if stat.S_ISLNK(info.external_attr >> 16):
                # zipfile would write the link as a text file; make the (already checked) link.
                link = staging / info.filename
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(archive.read(info).decode("utf-8"))
            else:
                archive.extract(info, staging)
            if reporter:
                reporter.update(done)


def _extract_tar(archive_path: Path, staging: Path, reporter: ProgressReporter | None) -> None:
    # The "data" filter (Python 3.11.4+, PEP 706) repeats our checks and drops
    # set-uid bits; our own check above gives the clearer, all-at-once message.
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive_path) as archive:
        for done, member in enumerate(archive, start=1):
            archive.extract(member, staging, **extra)
            if reporter:
                reporter.update(done)


def _move_merging(source: Path, target: Path) -> None:
    if source.is_dir() and not source.is_symlink() and target.is_dir() and not target.is_symlink():
        for child in source.iterdir():
            _move_merging(child, target / child.name)
        return
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    source.replace(target)
