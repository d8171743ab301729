"""download_file against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import io
import os
from collections import namedtuple

import pytest
from local_http_server import LocalHTTPServer

from pisa_train.errors import DataError
from pisa_train.fetch import http as downloads
from pisa_train.fetch.http import download_file, mirrored_url, verify_file
from pisa_train.terminal import ProgressReporter

PAYLOAD = os.urandom(300_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_full_download_verifies_and_renames(tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    out = io.StringIO()
    with LocalHTTPServer(files={"/file.bin": PAYLOAD}) as server:
        result = download_file(server.url("/file.bin"), dest, expected_size=len(PAYLOAD),
                               sha256=SHA256, md5=MD5, output=out)
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("file.bin.part").exists()


def test_interrupted_download_resumes_with_range_and_gives_the_same_bytes(tmp_path):
    dest = tmp_path / "file.bin"
    with LocalHTTPServer(files={"/file.bin": PAYLOAD}, cut_after={"/file.bin": [100_000]}) as server:
        download_file(server.url("/file.bin"), dest, expected_size=len(PAYLOAD), sha256=SHA256,
                      retry_wait_s=0, output=io.StringIO())
        gets = server.gets("/file.bin")
    assert dest.read_bytes() == PAYLOAD
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range == "bytes=100000-"


def test_interrupted_download_resumes_on_the_next_run(tmp_path):
    dest = tmp_path / "file.bin"
    with LocalHTTPServer(files={"/file.bin": PAYLOAD}, cut_after={"/file.bin": [120_000]}) as server:
        with pytest.raises(DataError, match="run the same command again to resume"):
            download_file(server.url("/file.bin"), dest, sha256=SHA256, retries=0, output=io.StringIO())
        part = tmp_path / "file.bin.part"
        assert part.stat().st_size == 120_000 and not dest.exists()
        download_file(server.url("/file.bin"), dest, sha256=SHA256, retries=0, output=io.StringIO())
        assert server.gets("/file.bin")[-1].range == "bytes=120000-"
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_server_that_ignores_range_restarts_from_the_beginning(tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"garbage that must not survive")
    out = io.StringIO()
    with LocalHTTPServer(files={"/file.bin": PAYLOAD}, ignore_range={"/file.bin"}) as server:
        download_file(server.url("/file.bin"), dest, sha256=SHA256, output=out)
        assert server.gets("/file.bin")[0].range is not None
    assert dest.read_bytes() == PAYLOAD
    assert "does not support resuming" in out.getvalue()


def test_wrong_checksum_is_rejected_and_not_left_under_the_final_name(tmp_path):
    dest = tmp_path / "file.bin"
    with LocalHTTPServer(files={"/file.bin": PAYLOAD}) as server:
        with pytest.raises(DataError, match="corrupt: sha256"):
            download_file(server.url("/file.bin"), dest, sha256="0" * 64, output=io.StringIO())
    assert not dest.exists()
    assert not (tmp_path / "file.bin.part").exists()


def test_wrong_size_announced_by_the_server_is_rejected_before_downloading(tmp_path):
    dest = tmp_path / "file.bin"
    with LocalHTTPServer(files={"/file.bin": PAYLOAD}) as server:
        with pytest.raises(DataError, match="changed upstream or the link is wrong"):
            download_file(server.url("/file.bin"), dest, expected_size=len(PAYLOAD) + 1, output=io.StringIO())
    assert not dest.exists()


def test_present_verified_file_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "file.bin"
    with LocalHTTPServer(files={"/file.bin": PAYLOAD}) as server:
        download_file(server.url("/file.bin"), dest, sha256=SHA256, output=io.StringIO())
        out = io.StringIO()
        download_file(server.url("/file.bin"), dest, sha256=SHA256, output=out)
        assert len(server.gets("/file.bin")) == 1
    assert "already downloaded and verified" in out.getvalue()


def test_present_file_with_wrong_content_is_reported_not_overwritten(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"something else")
    with pytest.raises(DataError, match="delete it and run the command again"):
        download_file("http://127.0.0.1:9/never", dest, sha256=SHA256, output=io.StringIO())
    assert dest.read_bytes() == b"something else"


def test_http_404_is_one_clear_error(tmp_path):
    with LocalHTTPServer() as server:
        with pytest.raises(DataError, match="HTTP 404.*check the link"):
            download_file(server.url("/missing.zip"), tmp_path / "x.zip", output=io.StringIO())


def test_not_enough_disk_space_names_bytes_needed_and_free(tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda path: Usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(DataError, match=r"needs .*\(300000 bytes\).*\(1000 bytes\) free"):
        download_file("http://127.0.0.1:9/never", tmp_path / "x.bin", expected_size=300_000,
                      output=io.StringIO())
    assert not list(tmp_path.iterdir())


def test_redirect_is_followed(tmp_path):
    with LocalHTTPServer(files={"/real.zip": PAYLOAD}, redirects={"/ds/abc?key=k": "/real.zip"}) as server:
        download_file(server.url("/ds/abc?key=k"), tmp_path / "x.zip", md5=MD5, output=io.StringIO())
    assert (tmp_path / "x.zip").read_bytes() == PAYLOAD


def test_non_tty_progress_has_no_control_characters(tmp_path):
    out = io.StringIO()  # not a terminal
    with LocalHTTPServer(files={"/file.bin": PAYLOAD * 8}) as server:
        download_file(server.url("/file.bin"), tmp_path / "file.bin", output=out)
    text = out.getvalue()
    assert "file.bin" in text and "100.0%" in text
    assert "\r" not in text and "\x1b" not in text


def test_terminal_progress_redraws_in_place_with_rate_and_eta():
    out = io.StringIO()
    ticks = iter([0.0, 1.0, 2.0, 3.0, 4.0])
    reporter = ProgressReporter("x.zip", 4 * 2**20, stream=out, interactive=True, clock=lambda: next(ticks))
    reporter.update(2**20)
    text = out.getvalue()
    assert text.startswith("\r") and "25.0%" in text and "1.0 MiB/s" in text and "ETA 0:03" in text


def test_mirror_keeps_the_path_and_query():
    env = {"PISA_DATA_MIRROR": "http://127.0.0.1:8000/"}
    assert mirrored_url("http://images.cocodataset.org/zips/val2017.zip", env) == \
        "http://127.0.0.1:8000/zips/val2017.zip"
    assert mirrored_url("https://public.roboflow.com/ds/abc?key=k", env) == "http://127.0.0.1:8000/ds/abc?key=k"
    assert mirrored_url("https://a.b/c", {}) == "https://a.b/c"


def test_verify_accepts_a_sha256_prefix(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    verify_file(path, len(PAYLOAD), sha256=SHA256[:8])
    with pytest.raises(DataError):
        verify_file(path, sha256="deadbeef")


def test_non_tty_progress_logs_plain_lines_every_tenth_at_most_every_few_seconds():
    out = io.StringIO()
    now = [0.0]
    reporter = ProgressReporter("big.zip", 1000, stream=out, interactive=False, clock=lambda: now[0])
    for done in range(0, 1001, 50):
        now[0] += 10.0
        reporter.update(done)
    reporter.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("big.zip: 100.0%")
    assert all("ETA" in line for line in lines)
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_errors_do_not_print_the_key_in_a_link(tmp_path):
    with LocalHTTPServer() as server:
        with pytest.raises(DataError) as raised:
            download_file(server.url("/ds/abc?key=SECRET123"), tmp_path / "x.zip", output=io.StringIO())
    assert "SECRET123" not in str(raised.value) and "/ds/abc?..." in str(raised.value)
