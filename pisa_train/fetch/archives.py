"""Safe extraction of zip and tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) archives.

Datasets come from the internet, so an archive is checked before anything is
written, and refused whole when any entry is not a plain file or folder inside
the destination: absolute paths, ``..`` components, links of any kind, and
device files, FIFOs and sockets. Links are refused rather than checked because
datasets do not need them and a chain of them (``a -> .``, ``a/b -> ..``, ...)
defeats any check of their text: only the disk can say where a path through
several links ends. Tar archives are extracted only with tarfile's ``data``
filter (PEP 706), which repeats these checks as each member is written.

Before anything is written, the archive's total uncompressed size is checked
against a ratio to the archive's own size (``max_expansion``: a zip bomb expands
thousands of times, a dataset archive little) and against the free space, counted
as the disk allocates it: each file rounded up to whole blocks, a block per folder
(5,000 files of 500 bytes take 20 MB of 4 KiB blocks, not 2.5 MB).

The archive is extracted into a temporary folder beside the destination and
moved into place only when extraction finished, so a refused, corrupt or failed
(disk full) extraction leaves nothing half-extracted behind, and a rerun removes
the temporary folders of an extraction that was killed (``remove_stale_extractions``).
A file of the archive replaces a file of the same name (re-extracting after an
interruption works), but nothing the destination already holds is deleted to make
room for the archive's entries.
"""
from __future__ import annotations

import os
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

from pisa_train.errors import DataError, EnvironmentProblem
from pisa_train.fetch.http import require_free_space, write_failure
from pisa_train.terminal import ProgressReporter, format_bytes

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_SHOWN_REFUSALS = 3
# The Python releases whose tarfile has the data filter (PEP 706), among those pisa-train supports.
PYTHONS_WITH_TAR_DATA_FILTER = "3.10.12+, 3.11.4+, 3.12 and 3.13"
# Dataset archives expand little: images are stored as they are, COCO JSON deflates about 10 times.
# A zip bomb (a deflated run of zeros) expands about 1,000 times per layer.
DEFAULT_MAX_EXPANSION = 100


@dataclass(frozen=True)
class ArchiveEntry:
    """What an archive member would create, in the archive's own terms."""

    name: str
    kind: str  # "file", "dir", "symlink", "hardlink", or what else it is ("device file", "FIFO", ...)
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
    """What extracting ``entry`` would do that a dataset archive must not, or None if it is safe."""
    if _is_absolute(entry.name):
        return f"{entry.name!r} is an absolute path, outside the destination"
    if ".." in _split_parts(entry.name):
        return f"{entry.name!r} points outside the destination with '..'"
    if entry.kind in ("symlink", "hardlink"):
        kind = "symbolic" if entry.kind == "symlink" else "hard"
        return f"{entry.name!r} is a {kind} link (to {entry.link_target!r})"
    if entry.kind not in ("file", "dir"):
        return f"{entry.name!r} is a {entry.kind}, not a file"
    return None


def _special_kind(mode: int) -> str | None:
    """The name of a file type that is neither a regular file, a folder nor a link, from st_mode bits."""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return None


def _zip_entries(archive: zipfile.ZipFile) -> list[ArchiveEntry]:
    entries = []
    for info in archive.infolist():
        mode = info.external_attr >> 16  # the Unix st_mode, where the archive was made on Unix
        if stat.S_ISLNK(mode):
            target = archive.read(info).decode("utf-8", "replace")
            entries.append(ArchiveEntry(info.filename, "symlink", 0, target))
        elif _special_kind(mode):
            entries.append(ArchiveEntry(info.filename, _special_kind(mode)))
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
        elif member.ischr() or member.isblk():
            entries.append(ArchiveEntry(member.name, "device file"))
        elif member.isfifo():
            entries.append(ArchiveEntry(member.name, "FIFO (named pipe)"))
        else:
            entries.append(ArchiveEntry(member.name, f"tar member of type {member.type!r}"))
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
    """Return the entries of the archive, or raise DataError naming what the archive tried."""
    entries = list_entries(archive_path)
    refusals = [reason for reason in map(unsafe_reason, entries) if reason]
    if refusals:
        raise _hostile(archive_path, dest_dir, refusals)
    return entries


def _hostile(archive_path: Path | str, dest_dir: Path | str, refusals: list[str]) -> DataError:
    shown = "; ".join(refusals[:_SHOWN_REFUSALS])
    more = f"; and {len(refusals) - _SHOWN_REFUSALS} more" if len(refusals) > _SHOWN_REFUSALS else ""
    return DataError(f"refusing to extract {archive_path}: {len(refusals)} of its entries are not plain files "
                     f"and folders inside {dest_dir} ({shown}{more}); dataset archives need only files and "
                     f"folders, so this one was made to write elsewhere or was packed wrongly: nothing was "
                     f"extracted; get the dataset from a source you trust")


def _existing_folder(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def allocated_bytes(entries: list[ArchiveEntry], block_size: int) -> int:
    """What extracting ``entries`` takes on a disk of ``block_size`` blocks: each file rounded up to whole
    blocks, and a block for each folder (named or implied by a path), as ext4 and xfs allocate them."""
    folders = {entry.name.rstrip("/") for entry in entries if entry.kind == "dir"}
    for entry in entries:
        parts = _split_parts(entry.name)
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    files = sum(-(-entry.size // block_size) * block_size for entry in entries if entry.kind == "file")
    return files + len(folders) * block_size


def check_expansion(archive_path: Path, entries: list[ArchiveEntry], max_expansion: float) -> None:
    """Refuse an archive whose entries expand to more than ``max_expansion`` times its own size."""
    archive_size = max(archive_path.stat().st_size, 1)
    total = sum(entry.size for entry in entries)
    if total > max_expansion * archive_size:
        raise DataError(f"refusing to extract {archive_path}: its files expand to {format_bytes(total)} ({total} "
                        f"bytes), {total / archive_size:.0f} times the archive's {archive_size} bytes, and "
                        f"a dataset archive expands at most {max_expansion:g} times (images are stored as they are): "
                        f"it looks like a zip bomb; nothing was extracted; if you trust it, raise the limit with "
                        f"--max-expansion")


def remove_stale_extractions(dest_dir: str | Path) -> list[Path]:
    """The temporary folders that killed extractions into ``dest_dir`` left beside it; call this only
    while holding ``dest_dir``'s download lock, or it could remove a running extraction's folder."""
    dest_dir = Path(dest_dir)
    stale = sorted(dest_dir.parent.glob(f".{dest_dir.name}.extracting-*")) if dest_dir.parent.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _require_tar_data_filter(archive_path: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        version = ".".join(map(str, sys.version_info[:3]))
        raise EnvironmentProblem(
            f"cannot extract the tar archive {archive_path} safely with Python {version}: its tarfile module "
            f"lacks the 'data' filter (PEP 706), which Python {PYTHONS_WITH_TAR_DATA_FILTER} have; use one "
            f"of those for pisa-data, or extract the archive yourself and point --data at the folder")


def extract_archive(archive_path: str | Path, dest_dir: str | Path, *, progress: bool = True,
                    max_expansion: float = DEFAULT_MAX_EXPANSION, output: TextIO | None = None) -> list[str]:
    """Extract a zip or tar archive into ``dest_dir``; return its top-level names.

    Existing folders in ``dest_dir`` are merged with the archive's, and files of the same
    name are replaced (re-extracting after an interruption works); where the archive has a
    file in place of an existing folder, or a folder in place of an existing file, nothing
    is moved and the archive is refused.
    """
    archive_path, dest_dir = Path(archive_path), Path(dest_dir)
    output = output if output is not None else sys.stdout
    is_zip = archive_format(archive_path) == "zip"
    if not is_zip:
        _require_tar_data_filter(archive_path)
    entries = check_archive_is_safe(archive_path, dest_dir)
    check_expansion(archive_path, entries, max_expansion)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    needed = allocated_bytes(entries, os.statvfs(_existing_folder(dest_dir)).f_frsize)
    require_free_space(dest_dir, needed, f"extracting {archive_path.name}")

    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.extracting-", dir=dest_dir.parent))
    try:
        reporter = ProgressReporter(f"extracting {archive_path.name}", len(entries), unit="files",
                                    stream=output) if progress else None
        try:
            if is_zip:
                _extract_zip(archive_path, staging, reporter)
            else:
                _extract_tar(archive_path, staging, reporter)
        except tarfile.FilterError as error:  # the data filter caught what our check let through
            raise _hostile(archive_path, dest_dir, [f"tarfile's data filter: {error}"]) from None
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise _corrupt(archive_path, error) from None
        except OSError as error:  # the disk filled, or the folder is not writable
            raise write_failure(dest_dir, error, needed,
                                f"nothing was extracted from {archive_path} (what was written is deleted)") from None
        finally:
            if reporter:
                reporter.finish()
        top_level = sorted(child.name for child in staging.iterdir())
        clashes = [clash for name in top_level for clash in _clashes(staging / name, dest_dir / name, dest_dir)]
        if clashes:
            raise DataError(f"refusing to extract {archive_path} into {dest_dir}: {'; '.join(clashes[:3])}"
                            f"{f'; and {len(clashes) - 3} more' if len(clashes) > 3 else ''}; nothing was "
                            f"changed there: move those away, or choose another --dest")
        dest_dir.mkdir(parents=True, exist_ok=True)
        for name in top_level:
            _move_merging(staging / name, dest_dir / name)
        return top_level
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_zip(archive_path: Path, staging: Path, reporter: ProgressReporter | None) -> None:
    with zipfile.ZipFile(archive_path) as archive:
        for done, info in enumerate(archive.infolist(), start=1):
            archive.extract(info, staging)
            if reporter:
                reporter.update(done)


def _extract_tar(archive_path: Path, staging: Path, reporter: ProgressReporter | None) -> None:
    with tarfile.open(archive_path) as archive:
        for done, member in enumerate(archive, start=1):
            archive.extract(member, staging, filter="data")
            if reporter:
                reporter.update(done)


def _clashes(source: Path, target: Path, dest_dir: Path) -> list[str]:
    """Where moving ``source`` onto ``target`` would delete something the destination already holds."""
    if not target.exists() and not target.is_symlink():
        return []
    if source.is_dir():
        if not target.is_dir():
            return [f"its folder {target.relative_to(dest_dir)} would replace the file {target}"]
        return [clash for child in source.iterdir() for clash in _clashes(child, target / child.name, dest_dir)]
    if target.is_dir():
        return [f"its file {target.relative_to(dest_dir)} would replace the folder {target}"]
    return []


def _move_merging(source: Path, target: Path) -> None:
    if source.is_dir() and target.is_dir():
        for child in source.iterdir():
            _move_merging(child, target / child.name)
        return
    source.replace(target)  # a file over a file of the same name, or onto a free name
