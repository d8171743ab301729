"""Safe extraction: hostile archives are refused whole; good ones land in place."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from pisa_train.errors import DataError, EnvironmentProblem
from pisa_train.fetch import archives
from pisa_train.fetch.archives import extract_archive


def _zip(path, members: dict[str, bytes], symlinks: dict[str, str] | None = None,
         modes: dict[str, int] | None = None):
    """A zip of ``members``, then ``symlinks`` (name -> target) in that order, then entries
    with other Unix file types (name -> st_mode type bits, as zip on Unix records them)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
        for name, mode in (modes or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (mode | 0o644) << 16
            archive.writestr(info, b"")
    return path


def _tar(path, members: dict[str, bytes], symlinks: dict[str, str] | None = None,
         hardlinks: dict[str, str] | None = None, types: dict[str, bytes] | None = None):
    """A tar.gz of ``members``, links, and members of other tar types (name -> tarfile.CHRTYPE, ...)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for kind, links in ((tarfile.SYMTYPE, symlinks or {}), (tarfile.LNKTYPE, hardlinks or {})):
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = target
                archive.addfile(info)
        for name, kind in (types or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            archive.addfile(info)
    return path


# A chain of links that each look harmless alone (every target stays inside when read as text)
# but together lead three folders above the destination: a -> ., a/b -> .., a/b/c -> .., a/b/c/d -> ..,
# so a/b/c/d/x is x three levels up, once the links exist on disk.
LINK_CHAIN = {"a": ".", "a/b": "..", "a/b/c": "..", "a/b/c/d": ".."}


def zip_with_a_link_chain(path):
    with zipfile.ZipFile(path, "w") as archive:
        for name, target in LINK_CHAIN.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
        archive.writestr("a/b/c/d/x", b"pwned")
    return path


def _everything_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def workspace(tmp_path):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "area").mkdir()
    return tmp_path


def _assert_nothing_written(workspace, before):
    assert _everything_under(workspace) == before, "the refused archive wrote something"


def _assert_refused_as_hostile(error: pytest.ExceptionInfo, archive, dest, what: str):
    """The one line says what the archive tried, and does not call a hostile archive damaged."""
    message = str(error.value)
    assert message.startswith(f"refusing to extract {archive}: "), message
    assert f"are not plain files and folders inside {dest} (" in message, message
    assert what in message, message
    assert message.endswith("nothing was extracted; get the dataset from a source you trust"), message
    assert "corrupt" not in message and "download it again" not in message, message
    assert "\n" not in message


def _assert_refused_whole(workspace, archive, what: str) -> str:
    """Extracting ``archive`` is refused as hostile, naming ``what``, and writes nothing anywhere."""
    dest = workspace / "area" / "data"
    before = _everything_under(workspace)
    with pytest.raises(DataError) as error:
        extract_archive(archive, dest, output=io.StringIO())
    _assert_refused_as_hostile(error, archive, dest, what)
    _assert_nothing_written(workspace, before)
    assert not dest.exists()
    return str(error.value)


HOSTILE_ZIPS = {
    "dotdot": ({"train/ok.jpg": b"x", "../evil": b"pwned"}, None, None,
               "'../evil' points outside the destination with '..'"),
    "absolute": ({"train/ok.jpg": b"x", "/tmp/evil_absolute": b"pwned"}, None, None,
                 "'/tmp/evil_absolute' is an absolute path, outside the destination"),
    "symlink-out": ({"train/ok.jpg": b"x"}, {"train/link": "../../../etc"}, None,
                    "'train/link' is a symbolic link (to '../../../etc')"),
    "symlink-absolute": ({"train/ok.jpg": b"x"}, {"train/link": "/etc/passwd"}, None,
                         "'train/link' is a symbolic link (to '/etc/passwd')"),
    "symlink-inside": ({"train/a.jpg": b"A"}, {"train/alias.jpg": "a.jpg"}, None,
                       "'train/alias.jpg' is a symbolic link (to 'a.jpg')"),
    "device": ({"train/ok.jpg": b"x"}, None, {"train/null": stat.S_IFCHR}, "'train/null' is a device file, not a file"),
    "fifo": ({"train/ok.jpg": b"x"}, None, {"train/pipe": stat.S_IFIFO},
             "'train/pipe' is a FIFO (named pipe), not a file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zip_is_refused_and_nothing_is_written(workspace, case):
    members, symlinks, modes, what = HOSTILE_ZIPS[case]
    _assert_refused_whole(workspace, _zip(workspace / "downloads" / "bad.zip", members, symlinks, modes), what)


def test_a_zip_whose_links_chain_out_of_the_destination_writes_nothing_anywhere(workspace):
    message = _assert_refused_whole(workspace, zip_with_a_link_chain(workspace / "downloads" / "chain.zip"),
                                    "'a' is a symbolic link (to '.'); 'a/b' is a symbolic link (to '..'); 'a/b/c' is "
                                    "a symbolic link (to '..'); and 1 more")
    assert "4 of its entries" in message
    assert not (workspace.parent / "x").exists()


HOSTILE_TARS = {
    "dotdot": ({"ok/a.txt": b"x", "ok/../../evil": b"pwned"}, None, None, None,
               "'ok/../../evil' points outside the destination with '..'"),
    "absolute": ({"/tmp/evil_absolute_tar": b"pwned"}, None, None, None,
                 "'/tmp/evil_absolute_tar' is an absolute path, outside the destination"),
    "symlink-out": ({"ok/a.txt": b"x"}, {"ok/link": "../../outside"}, None, None,
                    "'ok/link' is a symbolic link (to '../../outside')"),
    "symlink-chain": ({}, LINK_CHAIN, None, None, "'a' is a symbolic link (to '.')"),
    "hardlink-out": ({"ok/a.txt": b"x"}, None, {"ok/hard": "../outside"}, None,
                     "'ok/hard' is a hard link (to '../outside')"),
    "device": ({"ok/a.txt": b"x"}, None, None, {"dev/sda": tarfile.BLKTYPE}, "'dev/sda' is a device file, not a file"),
    "fifo": ({"ok/a.txt": b"x"}, None, None, {"ok/pipe": tarfile.FIFOTYPE},
             "'ok/pipe' is a FIFO (named pipe), not a file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_refused_and_nothing_is_written(workspace, case):
    members, symlinks, hardlinks, types, what = HOSTILE_TARS[case]
    _assert_refused_whole(workspace, _tar(workspace / "downloads" / "bad.tar.gz", members, symlinks, hardlinks, types),
                          what)


def test_tar_archives_need_the_data_filter_and_a_python_without_it_is_told_which_have_it(workspace, monkeypatch):
    """Simulated: this Python has tarfile's data filter, so the test hides it, as 3.10.0-3.10.11
    and 3.11.0-3.11.3 lack it. The archive is a good one: without the filter, none is extracted."""
    archive = _tar(workspace / "downloads" / "good.tgz", {"val2017/1.jpg": b"J"})
    dest = workspace / "area" / "data"
    before = _everything_under(workspace)
    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(archives.sys, "version_info", (3, 11, 3, "final", 0))
    with pytest.raises(EnvironmentProblem) as error:
        extract_archive(archive, dest, output=io.StringIO())
    assert str(error.value) == (
        f"cannot extract the tar archive {archive} safely with Python 3.11.3: its tarfile module lacks the "
        f"'data' filter (PEP 706), which Python 3.10.12+, 3.11.4+, 3.12 and 3.13 have; use one of those for "
        f"pisa-data, or extract the archive yourself and point --data at the folder")
    _assert_nothing_written(workspace, before)


def test_the_data_filter_still_refuses_a_link_chain_that_our_own_check_were_to_miss(workspace, monkeypatch):
    """Defence in depth: with our entry check switched off (simulated), tarfile's data filter
    stops the chain as it is written, the user is told what the archive tried, and nothing lands."""
    archive = workspace / "downloads" / "chain.tgz"
    with tarfile.open(archive, "w:gz") as tar:  # the links first, then the file written through them
        for name, target in LINK_CHAIN.items():
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(link)
        file = tarfile.TarInfo("a/b/c/d/x")
        file.size = 5
        tar.addfile(file, io.BytesIO(b"pwned"))
    dest = workspace / "area" / "data"
    monkeypatch.setattr(archives, "unsafe_reason", lambda entry: None)
    with pytest.raises(DataError) as error:
        extract_archive(archive, dest, output=io.StringIO())
    _assert_refused_as_hostile(error, archive, dest, "tarfile's data filter: ")
    assert not dest.exists() and not (workspace.parent / "x").exists()
    assert not [p for p in (workspace / "area").iterdir()], "staging folder left"


def test_refusal_lists_every_unsafe_entry(workspace):
    archive = _zip(workspace / "downloads" / "bad.zip", {"../a": b"", "../b": b"", "/c": b""})
    with pytest.raises(DataError, match="3 of its entries are not plain files and folders"):
        extract_archive(archive, workspace / "area" / "data", output=io.StringIO())


def test_good_zip_extracts_and_leaves_no_staging_folder(workspace):
    archive = _zip(workspace / "downloads" / "good.zip", {"train/a.jpg": b"A", "train/_annotations.coco.json": b"{}"})
    dest = workspace / "area" / "data"
    top = extract_archive(archive, dest, output=io.StringIO())
    assert top == ["train"]
    assert (dest / "train" / "a.jpg").read_bytes() == b"A"
    assert not [p for p in (workspace / "area").iterdir() if p.name.startswith(".")], "staging folder left"


@pytest.mark.parametrize("existing", ["folder where the archive has a file", "file where the archive has a folder"])
def test_nothing_already_in_the_destination_is_deleted_to_make_room(workspace, existing):
    dest = workspace / "area" / "data"
    (dest / "train").mkdir(parents=True)
    (dest / "keep.txt").write_text("kept")
    if existing.startswith("folder"):
        (dest / "train" / "labels").mkdir()
        (dest / "train" / "labels" / "mine.txt").write_text("mine")
        members = {"train/labels": b"a file", "train/a.jpg": b"A"}
        clash = f"its file train/labels would replace the folder {dest / 'train' / 'labels'}"
    else:
        (dest / "train" / "labels").write_text("mine")
        members = {"train/labels/1.txt": b"1", "train/a.jpg": b"A"}
        clash = f"its folder train/labels would replace the file {dest / 'train' / 'labels'}"
    archive = _zip(workspace / "downloads" / "ds.zip", members)
    before = {p: (p.read_bytes() if p.is_file() else None) for p in dest.rglob("*")}
    with pytest.raises(DataError) as error:
        extract_archive(archive, dest, output=io.StringIO())
    assert str(error.value) == (f"refusing to extract {archive} into {dest}: {clash}; nothing was changed there: "
                                f"move those away, or choose another --dest")
    assert {p: (p.read_bytes() if p.is_file() else None) for p in dest.rglob("*")} == before
    assert not (dest / "train" / "a.jpg").exists()


def test_good_tar_merges_into_existing_folder(workspace):
    dest = workspace / "area" / "data"
    (dest / "annotations").mkdir(parents=True)
    (dest / "annotations" / "keep.json").write_text("kept")
    (dest / "annotations" / "replace.json").write_text("old")
    archive = _tar(workspace / "downloads" / "good.tgz",
                   {"annotations/replace.json": b"new", "val2017/1.jpg": b"J"})
    extract_archive(archive, dest, output=io.StringIO())
    assert (dest / "annotations" / "keep.json").read_text() == "kept"
    assert (dest / "annotations" / "replace.json").read_text() == "new"
    assert (dest / "val2017" / "1.jpg").read_bytes() == b"J"


def test_html_page_instead_of_archive_is_named(workspace):
    page = workspace / "downloads" / "ds.zip"
    page.write_text("<!DOCTYPE html><html>sign in</html>")
    with pytest.raises(DataError, match="looks like a web page"):
        extract_archive(page, workspace / "area" / "data", output=io.StringIO())


def test_corrupt_zip_leaves_nothing_half_extracted(workspace):
    archive = _zip(workspace / "downloads" / "c.zip", {"a/1.bin": b"1" * 5000, "a/2.bin": b"2" * 5000})
    data = bytearray(archive.read_bytes())
    second = data.find(b"2" * 100)
    data[second:second + 100] = b"3" * 100  # the CRC check of a/2.bin fails mid-extraction
    archive.write_bytes(bytes(data))
    dest = workspace / "area" / "data"
    with pytest.raises(DataError, match="corrupt"):
        extract_archive(archive, dest, output=io.StringIO())
    assert not dest.exists()
    assert list((workspace / "area").iterdir()) == []
