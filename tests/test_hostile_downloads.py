"""What a mirror, a download server or an archive cannot make pisa-data do (issue 20, points 4, 5, 6, 10, 11).

Everything goes through the real command (pisa-data's ``main`` or a real process) against real HTTP servers on
127.0.0.1, with real files and real archives. Two faults cannot be produced for real at a chosen write, and are
faked where said: a full disk (ENOSPC) during a download or an extraction, and the free space a disk reports.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import pathlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest
from local_http_server import LocalHTTPServer

from pisa_train.cli.data import main
from pisa_train.data.layout import _EXPECTED_LAYOUTS
from pisa_train.exit_codes import CHECKPOINT_ERROR, DATA_ERROR, ENVIRONMENT_ERROR, USAGE_ERROR
from pisa_train.fetch import datasets
from pisa_train.fetch.http import refused_redirect
from pisa_train.fetch.weights import check_mirrors
from pisa_train.terminal import format_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]
# Two real checkpoints whose SHA-256s share their first 8 hex digits; the README says how B was forged.
PREFIX_COLLISION = Path(__file__).parent / "fixtures" / "prefix-collision"
GENUINE = (PREFIX_COLLISION / "A.pth").read_bytes()
FORGED = (PREFIX_COLLISION / "B.pth").read_bytes()
GENUINE_SHA256 = hashlib.sha256(GENUINE).hexdigest()
FORGED_SHA256 = hashlib.sha256(FORGED).hexdigest()
NAME = f"pisa_faster_rcnn_demo-{GENUINE_SHA256[:8]}.pth"
PATH = f"/v3/pisa/{NAME}"
URL = f"https://download.openmmlab.com{PATH}"
ONEDL = f"https://mmassets.onedl.ai{PATH}"
DiskUsage = namedtuple("DiskUsage", "total used free")


def _zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _dataset_zip(folder: Path) -> bytes:
    """A Roboflow export (conftest's roboflow_fixture), zipped as Roboflow serves it."""
    return _zip_bytes({path.relative_to(folder).as_posix(): path.read_bytes()
                       for path in sorted(folder.rglob("*")) if path.is_file()})


def _tree(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


def _failures(out: str) -> dict[str, str]:
    """{source: reason} from the "NAME: SOURCE failed (REASON)" lines the weights download prints."""
    failed = {}
    for line in out.splitlines():
        if line.startswith(f"{NAME}: ") and line.endswith(")") and " failed (" in line:
            source, _, reason = line[len(NAME) + 2:].partition(" failed (")
            failed[source] = reason[:-1]
    return failed


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("PISA_TRAIN_WEIGHTS_SHA256", "PISA_TRAIN_INSECURE_MIRRORS", "PISA_TRAIN_WEIGHT_MIRRORS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


# Point 4: weights pinned by their full SHA-256.

def test_the_forged_file_passes_the_8_hex_check_of_its_name_which_is_why_pins_exist(hub, monkeypatch, capsys):
    assert GENUINE_SHA256[:8] == FORGED_SHA256[:8] and GENUINE != FORGED
    with LocalHTTPServer(files={PATH: FORGED}) as forged:
        monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", forged.base_url)
        assert main(["weights", "--only", URL, "--no-progress"]) == 0
    assert (hub / NAME).read_bytes() == FORGED
    assert (f"{NAME}: downloaded from {forged.url(PATH)} into {hub}; checked against the SHA-256 prefix in its name "
            f"({GENUINE_SHA256[:8]}: catches corruption, not a forged file; pin it with PISA_TRAIN_WEIGHTS_SHA256)"
            ) in capsys.readouterr().out


def test_a_forged_checkpoint_sharing_the_8_hex_prefix_is_refused_by_the_pin_file(tmp_path, hub, monkeypatch,
                                                                                  capsys):
    pins = tmp_path / "pins.sha256"
    pins.write_text(f"# our trusted weights\n{GENUINE_SHA256}  {NAME}\n")
    monkeypatch.setenv("PISA_TRAIN_WEIGHTS_SHA256", str(pins))
    # The forged file first, then the genuine one: refused and deleted, the next source tried.
    with LocalHTTPServer(files={PATH: FORGED}) as forged, LocalHTTPServer(files={PATH: GENUINE}) as genuine:
        monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", f"{forged.base_url} {genuine.base_url}")
        assert main(["weights", "--only", URL, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (hub / NAME).read_bytes() == GENUINE
    assert (f"{NAME}: {forged.url(PATH)} failed (refused and deleted: sha256 {FORGED_SHA256} does not match the "
            f"expected {GENUINE_SHA256} (pinned in {pins}))") in out.splitlines()
    assert (f"{NAME}: downloaded from {genuine.url(PATH)} into {hub}; verified: its full SHA-256 matches the one "
            f"pinned in {pins}") in out.splitlines()

    # Only the forged file anywhere: one line, exit 5, nothing kept.
    (hub / NAME).unlink()
    with LocalHTTPServer(files={PATH: FORGED}) as forged:
        monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", forged.base_url)
        assert main(["weights", "--only", URL, "--no-progress"]) == CHECKPOINT_ERROR
    out, err = capsys.readouterr()
    network = _failures(out)  # download.openmmlab.com and mmassets.onedl.ai, unreachable from the test machine
    assert err == (
        f"pisa-data: error: cannot get checkpoint {NAME}, tried: {forged.url(PATH)} (refused and deleted: sha256 "
        f"{FORGED_SHA256} does not match the expected {GENUINE_SHA256} (pinned in {pins})); {URL} ({network[URL]}); "
        f"{ONEDL} ({network[ONEDL]}); download it where there is network (`pisa-data weights --only {URL}`, or set "
        f"PISA_TRAIN_WEIGHT_MIRRORS to a mirror that has it) and put it at {hub / NAME}; a file whose SHA-256 is not "
        f"the {GENUINE_SHA256[:16]}... pinned in {pins} is refused from any source: if the file changed upstream on "
        f"purpose, correct {pins}; to use a copy you trust anyway, give its path instead of {URL}\n")
    assert sorted(path.name for path in hub.iterdir()) == [".pisa-train-download.lock", ".pisa-train-sha256sums"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pins.sha256", "torch"]  # nothing elsewhere


def test_a_forged_checkpoint_is_refused_by_the_record_of_the_first_download(tmp_path, hub, monkeypatch, capsys):
    with LocalHTTPServer(files={PATH: GENUINE}) as genuine:
        monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", genuine.base_url)
        assert main(["weights", "--only", URL, "--no-progress"]) == 0
    record = hub / ".pisa-train-sha256sums"
    assert record.read_text() == f"{GENUINE_SHA256}  {NAME}\n"
    (hub / NAME).unlink()  # the cache was cleaned; the next download must bring the same bytes
    capsys.readouterr()
    with LocalHTTPServer(files={PATH: FORGED}) as forged:
        monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", forged.base_url)
        assert main(["weights", "--only", URL, "--no-progress"]) == CHECKPOINT_ERROR
    out, err = capsys.readouterr()
    network = _failures(out)
    assert err == (
        f"pisa-data: error: cannot get checkpoint {NAME}, tried: {forged.url(PATH)} (refused and deleted: sha256 "
        f"{FORGED_SHA256} does not match the expected {GENUINE_SHA256} (recorded at its first download in {record})); "
        f"{URL} ({network[URL]}); {ONEDL} ({network[ONEDL]}); download it where there is network (`pisa-data weights "
        f"--only {URL}`, or set PISA_TRAIN_WEIGHT_MIRRORS to a mirror that has it) and put it at {hub / NAME}; a file "
        f"whose SHA-256 is not the {GENUINE_SHA256[:16]}... recorded at its first download in {record} is refused "
        f"from any source: if the file changed upstream on purpose, delete its line from {record}; to use a copy you "
        f"trust anyway, give its path instead of {URL}\n")
    # No .part, no forged file:
    assert sorted(path.name for path in hub.iterdir()) == [".pisa-train-download.lock", ".pisa-train-sha256sums"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["torch"]  # nothing elsewhere


def test_print_sha256_writes_a_pin_file_that_sha256sum_and_pisa_train_both_read(tmp_path, hub, monkeypatch, capsys):
    with LocalHTTPServer(files={PATH: GENUINE}) as genuine:
        monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", genuine.base_url)
        assert main(["weights", "--only", URL, "--no-progress"]) == 0
        capsys.readouterr()
        assert main(["weights", "--print-sha256"]) == 0
        pins = tmp_path / "pins.sha256"
        pins.write_text(capsys.readouterr().out)
        assert pins.read_text() == f"{GENUINE_SHA256}  {NAME}\n"
        assert subprocess.run(["sha256sum", "--check", "--quiet", pins], cwd=hub).returncode == 0
        monkeypatch.setenv("PISA_TRAIN_WEIGHTS_SHA256", str(pins))
        assert main(["weights", "--only", URL, "--no-progress"]) == 0  # the cached file matches its pin
        assert len(genuine.gets(PATH)) == 1


def test_a_pin_file_not_in_sha256sum_format_is_refused_with_its_line(tmp_path, hub, monkeypatch, capsys):
    pins = tmp_path / "pins.txt"
    pins.write_text(f"{GENUINE_SHA256[:8]} {NAME}\n")
    monkeypatch.setenv("PISA_TRAIN_WEIGHTS_SHA256", str(pins))
    assert main(["weights", "--only", URL]) == USAGE_ERROR
    assert capsys.readouterr().err == (
        f"pisa-data: error: PISA_TRAIN_WEIGHTS_SHA256 {pins}, line 1, is not '<sha256>  <file name>' (sha256sum's "
        f"format: 64 hex digits, two spaces, the name): '{GENUINE_SHA256[:8]} {NAME}'; fix it, or write the file "
        f"again with `pisa-data weights --print-sha256`\n")


def test_a_plain_http_mirror_outside_private_networks_is_refused(hub, monkeypatch, capsys):
    monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", "https://weights.example.org http://8.8.8.8:8000")
    assert main(["weights", "--only", URL]) == USAGE_ERROR
    assert capsys.readouterr().err == (
        "pisa-data: error: PISA_TRAIN_WEIGHT_MIRRORS names http://8.8.8.8:8000, a plain-http mirror outside loopback "
        "and private networks: anyone on the way could serve other weights (the 8 hex digits in a file's name do not "
        "stop a forged file); use https://, pin the files with PISA_TRAIN_WEIGHTS_SHA256, or accept the risk by naming "
        "the mirror in PISA_TRAIN_INSECURE_MIRRORS\n")
    assert not hub.exists()  # refused before anything was fetched
    accepted = {"PISA_TRAIN_WEIGHT_MIRRORS": "http://127.0.0.1:8000 http://10.0.0.5 http://[::1]:80 "
                                             "http://localhost:9 https://weights.example.org http://8.8.8.8:8000/",
                "PISA_TRAIN_INSECURE_MIRRORS": "http://8.8.8.8:8000"}
    check_mirrors(accepted)  # loopback, private, https, and the one named as insecure on purpose


# Point 5: size limits; point 11: nothing half-written left behind.

def test_a_download_without_content_length_stops_at_the_limit_and_is_removed(tmp_path, capsys):
    dest = tmp_path / "data"
    with LocalHTTPServer(endless={"/forever.zip"}, files={"/big.zip": bytes(2 << 20)}) as server:
        assert main(["download", server.url("/forever.zip"), "--dest", str(dest), "--max-download-size", "1M",
                     "--no-progress"]) == DATA_ERROR
        assert capsys.readouterr().err == (
            f"pisa-data: error: download of {server.url('/forever.zip')} went past 1.0 MiB without the server saying "
            f"its size (no Content-Length); stopped, and deleted {dest / 'forever.zip.part'}; if the file is really "
            f"that big, raise the limit with pisa-data's --max-download-size\n")
        assert main(["download", server.url("/big.zip"), "--dest", str(dest), "--max-download-size", "1M",
                     "--no-progress"]) == DATA_ERROR
        assert capsys.readouterr().err == (
            f"pisa-data: error: {server.url('/big.zip')} is 2.0 MiB (2097152 bytes), more than the 1.0 MiB limit for "
            f"a file whose size is not known beforehand; if the file is really that big, raise the limit with "
            f"pisa-data's --max-download-size\n")
    assert _tree(tmp_path) == ["data", "data/.pisa-data.lock"]  # nothing else, here or beside it


def test_a_weights_mirror_streaming_forever_is_cut_and_the_next_source_tried(hub, monkeypatch, capsys):
    with LocalHTTPServer(endless={PATH}) as endless, LocalHTTPServer(files={PATH: GENUINE}) as genuine:
        monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", f"{endless.base_url} {genuine.base_url}")
        assert main(["weights", "--only", URL, "--max-download-size", "2M", "--no-progress"]) == 0
    assert f"{NAME}: {endless.url(PATH)} failed (size not announced, cut at the limit of 2097152 bytes; " \
           f"deleted)" in capsys.readouterr().out.splitlines()
    assert (hub / NAME).read_bytes() == GENUINE and not (hub / f"{NAME}.part").exists()


def test_a_write_error_removes_the_part_file(tmp_path):
    """A real write error: the process runs under a 1 MiB file-size limit (RLIMIT_FSIZE, as `ulimit -f`)."""
    dest = tmp_path / "data"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write(2) then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    with LocalHTTPServer(files={"/x.zip": os.urandom(3 << 20)}, no_length={"/x.zip"}) as server:
        result = subprocess.run([sys.executable, "-m", "pisa_train.cli.data", "download", server.url("/x.zip"),
                                 "--dest", dest, "--no-progress"], cwd=REPO_ROOT, capture_output=True, text=True,
                                preexec_fn=limit_file_size, timeout=120)
    assert result.returncode == DATA_ERROR
    assert result.stderr == (
        f"pisa-data: error: could not write {dest / 'x.zip.part'}: File too large (errno 27); the partial file was "
        f"deleted; fix that (a file-size limit such as `ulimit -f`, a read-only folder, a failing disk) and run the "
        f"command again\n")
    assert _tree(tmp_path) == ["data", "data/.pisa-data.lock"]


def test_a_full_disk_during_a_download_is_one_line_with_the_space_needed_and_free(tmp_path, monkeypatch, capsys):
    """ENOSPC faked at the second block written to the .part file: no test machine fills its disk on cue."""
    real_open = pathlib.Path.open

    class FillsUp(io.RawIOBase):
        def __init__(self, file):
            self.file, self.blocks = file, 0

        def writable(self):
            return True

        def write(self, block):
            self.blocks += 1
            if self.blocks == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(block)

        def seek(self, *args):
            return self.file.seek(*args)

        def truncate(self, *args):
            return self.file.truncate(*args)

        def fileno(self):
            return self.file.fileno()

        def close(self):
            self.file.close()
            super().close()

    def open_filling_up(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FillsUp(file) if path.name.endswith(".part") else file

    monkeypatch.setattr(pathlib.Path, "open", open_filling_up)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 << 30, 0, 5 << 30))  # passes the check
    dest = tmp_path / "data"
    with LocalHTTPServer(files={"/x.zip": os.urandom(3 << 20)}) as server:
        assert main(["download", server.url("/x.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
    assert capsys.readouterr().err == (
        f"pisa-data: error: could not write {dest / 'x.zip.part'}: the disk is full (No space left on device); needs "
        f"3.0 MiB (3145728 bytes), 5.0 GiB (5368709120 bytes) free; the partial file was deleted; free some space or "
        f"choose another --dest\n")
    assert _tree(tmp_path) == ["data", "data/.pisa-data.lock"]


def test_a_zip_bomb_is_refused_before_anything_is_extracted(tmp_path, capsys):
    bomb = _zip_bytes({"train/_annotations.coco.json": bytes(50 << 20)}, zipfile.ZIP_DEFLATED)
    dest = tmp_path / "data"
    with LocalHTTPServer(files={"/bomb.zip": bomb}) as server:
        assert main(["download", server.url("/bomb.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
    assert capsys.readouterr().err == (
        f"pisa-data: error: refusing to extract {dest / 'bomb.zip'}: its files expand to 50.0 MiB (52428800 bytes), "
        f"{(50 << 20) / len(bomb):.0f} times the archive's {len(bomb)} bytes, and a dataset archive expands "
        f"at most 100 times (images are stored as they are): it looks like a zip bomb; nothing was extracted; if you "
        f"trust it, raise the limit with --max-expansion\n")
    assert _tree(tmp_path) == ["data", "data/.pisa-data.lock", "data/bomb.zip"]


def test_the_free_space_check_counts_each_files_blocks_not_its_size(tmp_path, monkeypatch, capsys):
    """3,000 files of 100 bytes: 300 KB by their sizes, 12 MB in 4 KiB blocks. The free space is faked."""
    tiny = _zip_bytes({f"train/{index:04d}.txt": b"x" * 100 for index in range(3000)})
    dest = tmp_path / "data"
    block = os.statvfs(tmp_path).f_frsize
    needed = 3000 * -(-100 // block) * block + block  # the files' blocks, and train/'s
    free = 2 << 20
    assert 3000 * 100 + len(tiny) < free < needed  # a check of the sizes alone would let it through
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 << 30, 0, free))
    with LocalHTTPServer(files={"/tiny.zip": tiny}) as server:
        assert main(["download", server.url("/tiny.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
    assert capsys.readouterr().err == (
        f"pisa-data: error: not enough free disk space for extracting tiny.zip in {dest}: needs "
        f"{format_bytes(needed)} ({needed} bytes), 2.0 MiB (2097152 bytes) free; free some space or choose another "
        f"--dest\n")
    assert _tree(tmp_path) == ["data", "data/.pisa-data.lock", "data/tiny.zip"]


def test_a_full_disk_during_extraction_removes_what_it_wrote(tmp_path, monkeypatch, capsys, roboflow_fixture):
    """ENOSPC faked at the third file extracted (the disk filling as another job writes)."""
    real_extract = zipfile.ZipFile.extract
    extracted = []

    def extract_until_full(self, member, path=None, pwd=None):
        extracted.append(member)
        if len(extracted) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", extract_until_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 << 30, 0, 1 << 30))
    dataset = _dataset_zip(roboflow_fixture)
    dest = tmp_path / "data"
    with LocalHTTPServer(files={"/ds.zip": dataset}) as server:
        assert main(["download", server.url("/ds.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
    err = capsys.readouterr().err
    needed = int(err.split("needs ")[1].split("(")[1].split(" bytes")[0])
    assert err == (
        f"pisa-data: error: could not write {dest}: the disk is full (No space left on device); needs "
        f"{format_bytes(needed)} ({needed} bytes), 1.0 GiB (1073741824 bytes) free; nothing was extracted from "
        f"{dest / 'ds.zip'} (what was written is deleted); free some space or choose another --dest\n")
    assert needed >= len(dataset) and len(extracted) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]  # no .data.extracting-* beside it
    assert _tree(dest) == [".pisa-data.lock", "ds.zip"]  # the archive is kept: a rerun extracts it


def test_an_archive_that_is_not_a_dataset_leaves_nothing_it_extracted(tmp_path, capsys):
    dest = tmp_path / "data"
    with LocalHTTPServer(files={"/x.zip": _zip_bytes({"readme.txt": b"hello", "docs/a.txt": b"a"})}) as server:
        assert main(["download", server.url("/x.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
    assert capsys.readouterr().err == (f"pisa-data: error: no COCO-format dataset recognised in {dest}: expected "
                                       f"{_EXPECTED_LAYOUTS}; removed what it extracted (docs, readme.txt)\n")
    assert _tree(tmp_path) == ["data", "data/.pisa-data.json", "data/.pisa-data.lock"]


def test_a_rerun_removes_the_extracting_folder_of_a_killed_run(tmp_path, capsys):
    """kill -9 during a real extraction, then the same command again."""
    many = _zip_bytes({f"train/{index:05d}.txt": b"x" * 200 for index in range(20000)})
    dest = tmp_path / "data"
    with LocalHTTPServer(files={"/many.zip": many}) as server:
        first = subprocess.Popen([sys.executable, "-m", "pisa_train.cli.data", "download", server.url("/many.zip"),
                                  "--dest", dest, "--no-progress"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".data.extracting-*/train/*")) and time.monotonic() < deadline:
            assert first.poll() is None, "the extraction ended before it could be killed"
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait()
        [left] = tmp_path.glob(".data.extracting-*")
        assert main(["download", server.url("/many.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
    out, err = capsys.readouterr()
    assert f"{dest}: removed what an interrupted run left: {left.name}" in out.splitlines()
    assert not left.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["data"]
    assert err.startswith(f"pisa-data: error: no COCO-format dataset recognised in {dest}")  # then: a text zip


# Point 6: redirects.

@pytest.mark.parametrize("scheme", ["ftp", "file"])
def test_a_redirect_to_another_scheme_is_refused_in_one_line(tmp_path, capsys, scheme):
    with socket.socket() as listener:  # where the redirect points: nothing may connect to it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.3)
        target = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/ds.zip" if scheme == "ftp" else "file:///etc/passwd"
        with LocalHTTPServer(redirects={"/ds.zip": target}) as server:
            dest = tmp_path / "data"
            assert main(["download", server.url("/ds.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
        with pytest.raises(TimeoutError):
            listener.accept()
    assert capsys.readouterr().err == (
        f"pisa-data: error: download of {server.url('/ds.zip')} was redirected to {target}, which pisa-train refuses: "
        f"it follows redirects from https to https and from http to http or https only; ask the server's owner for a "
        f"direct http(s) link, or download the file yourself\n")
    assert _tree(tmp_path) == ["data", "data/.pisa-data.lock"]


def test_the_redirect_rule():
    assert refused_redirect("http://a/x", "http://b/x") is None
    assert refused_redirect("http://a/x", "https://b/x") is None
    assert refused_redirect("https://a/x", "https://b/x") is None
    assert refused_redirect("https://a/x", "http://b/x").reason == "redirected to http:// (http://b/x), refused"
    assert refused_redirect("https://a/x", "ftp://b/x").reason == "redirected to ftp:// (ftp://b/x), refused"


# Point 10: one download per destination.

def test_a_second_download_into_the_same_dest_is_refused_naming_the_first(tmp_path, roboflow_fixture):
    dataset = _dataset_zip(roboflow_fixture)
    dest = tmp_path / "data"
    command = [sys.executable, "-m", "pisa_train.cli.data", "download", None, "--dest", dest, "--no-progress"]
    with LocalHTTPServer(files={"/ds.zip": dataset}, slow={"/ds.zip": 8.0}) as server:
        command[4] = server.url("/ds.zip")
        first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (dest / "ds.zip.part").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == ENVIRONMENT_ERROR
        assert second.stderr == (
            f"pisa-data: error: the dataset folder {dest} is in use by process {first.pid} (it holds the lock "
            f"{dest / '.pisa-data.lock'}); wait for it to finish, or download into another --dest\n")
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert len(server.gets("/ds.zip")) == 1  # the second never downloaded
    assert main(["check", str(dest)]) == 0
    after = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert after.returncode == 0 and "already downloaded and extracted" in after.stdout  # the lock went with it
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_two_runs_fetching_the_same_weights_download_them_once(tmp_path, hub):
    """Two real processes: the second waits for the first's download, then uses the file it verified."""
    payload = os.urandom(1 << 20)
    name = f"backbone-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    path = f"/pretrain/{name}"
    with LocalHTTPServer(files={path: payload}, slow={path: 6.0}) as mirror:
        env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), PISA_TRAIN_WEIGHT_MIRRORS=mirror.base_url)
        command = [sys.executable, "-m", "pisa_train.cli.data", "weights", "--only",
                   f"https://download.openmmlab.com{path}", "--no-progress"]
        first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        deadline = time.monotonic() + 60
        while not (hub / f"{name}.part").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        out, err = first.communicate(timeout=120)
        assert (first.returncode, second.returncode) == (0, 0), (err, second.stderr)
        assert f"{name}: waiting for process {first.pid}, which is downloading into {hub}" in second.stdout
        assert len(mirror.gets(path)) == 1
    assert (hub / name).read_bytes() == payload and not (hub / f"{name}.part").exists()


def test_a_full_disk_anywhere_else_in_pisa_data_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    """ENOSPC faked where the download's record is written, once the dataset is in place."""
    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(datasets, "write_json_atomically", disk_full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 << 30, 0, 1 << 30))
    dest = tmp_path / "data"
    with LocalHTTPServer(files={"/x.zip": _zip_bytes({"readme.txt": b"hello"})}) as server:
        assert main(["download", server.url("/x.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
    assert capsys.readouterr().err == (
        f"pisa-data: error: could not write {dest / '.pisa-data.json'}: the disk is full (No space left on device); "
        f"1.0 GiB (1073741824 bytes) free; what was finished is kept; free some space or choose another --dest\n")
