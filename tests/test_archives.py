"""Safe extraction: hostile archives are refused whole; good ones land in place."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from pisa_train.fetch.archives import extract_archive
from pisa_train.errors import DataError


def _zip(path, members: dict[str, bytes], symlinks: dict[str, str] | None = None):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def _tar(path, members: dict[str, bytes], symlinks: dict[str, str] | None = None,
         hardlinks: dict[str, str] | None = None):
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


HOSTILE_ZIPS = {
    "dotdot": ({"train/ok.jpg": b"x", "../evil": b"pwned"}, None, "climbs out"),
    "absolute": ({"train/ok.jpg": b"x", "/tmp/evil_absolute": b"pwned"}, None, "absolute path"),
    "symlink-out": ({"train/ok.jpg": b"x"}, {"train/link": "../../../etc"}, "links outside"),
    "symlink-absolute": ({"train/ok.jpg": b"x"}, {"train/link": "/etc/passwd"}, "absolute path"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ZIPS))
def test_hostile_zip_is_refused_and_nothing_is_written(workspace, case):
    members, symlinks, message = HOSTILE_ZIPS[case]
    archive = _zip(workspace / "downloads" / "bad.zip", members, symlinks)
    dest = workspace / "area" / "data"
    before = _everything_under(workspace)
    with pytest.raises(DataError, match=message):
        extract_archive(archive, dest, output=io.StringIO())
    _assert_nothing_written(workspace, before)
    assert not dest.exists()


HOSTILE_TARS = {
    "dotdot": ({"ok/a.txt": b"x", "ok/../../evil": b"pwned"}, None, None, "climbs out"),
    "absolute": ({"/tmp/evil_absolute_tar": b"pwned"}, None, None, "absolute path"),
    "symlink-out": ({"ok/a.txt": b"x"}, {"ok/link": "../../outside"}, None, "links outside"),
    "hardlink-out": ({"ok/a.txt": b"x"}, None, {"ok/hard": "../outside"}, "links outside"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_refused_and_nothing_is_written(workspace, case):
    members, symlinks, hardlinks, message = HOSTILE_TARS[case]
    archive = _tar(workspace / "downloads" / "bad.tar.gz", members, symlinks, hardlinks)
    dest = workspace / "area" / "data"
    before = _everything_under(workspace)
    with pytest.raises(DataError, match=message):
        extract_archive(archive, dest, output=io.StringIO())
    _assert_nothing_written(workspace, before)


def test_refusal_lists_every_unsafe_entry(workspace):
    archive = _zip(workspace / "downloads" / "bad.zip", {"../a": b"", "../b": b"", "/c": b""})
    with pytest.raises(DataError, match="3 entries would write outside"):
        extract_archive(archive, workspace / "area" / "data", output=io.StringIO())


def test_good_zip_extracts_with_links_inside(workspace):
    archive = _zip(workspace / "downloads" / "good.zip",
                   {"train/a.jpg": b"A", "train/_annotations.coco.json": b"{}"}, {"train/alias.jpg": "a.jpg"})
    dest = workspace / "area" / "data"
    top = extract_archive(archive, dest, output=io.StringIO())
    assert top == ["train"]
    assert (dest / "train" / "a.jpg").read_bytes() == b"A"
    assert (dest / "train" / "alias.jpg").is_symlink()
    assert (dest / "train" / "alias.jpg").read_bytes() == b"A"
    assert not [p for p in (workspace / "area").iterdir() if p.name.startswith(".")], "staging folder left"


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
