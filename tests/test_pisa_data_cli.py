"""The pisa-data command end to end, against a local HTTP server."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest
from conftest import DEMO_CONFIG
from local_http_server import LocalHTTPServer
from mmengine.config import Config
from roboflow_export import read_export
from test_archives import zip_with_a_link_chain
from tiny_coco import coco_dict, write_image

from pisa_train.cli.data import main
from pisa_train.data.synthetic_shapes import DEMO_SETTINGS
from pisa_train.errors import UsageError
from pisa_train.exit_codes import DATA_ERROR, USAGE_ERROR
from pisa_train.fetch import datasets as dataset_downloads
from pisa_train.fetch.datasets import RemoteArchive, archive_for_url

CONTROL_CHARACTERS = ("\r", "\x1b")


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _jpeg_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "one.jpg"
    write_image(path, 64, 48)
    return path.read_bytes()


def _folder_zip(folder: Path) -> bytes:
    return _zip_bytes({path.relative_to(folder).as_posix(): path.read_bytes()
                       for path in sorted(folder.rglob("*")) if path.is_file()})


def test_import_is_light_and_help_works(capsys):
    code = ("import sys, pisa_train.cli.data; "
            "print(sorted(m for m in ('torch', 'mmdet', 'mmengine', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "[]"
    assert main(["--help"]) == 0
    assert "download" in capsys.readouterr().out


@pytest.fixture
def coco_mirror(tmp_path, monkeypatch):
    """Small stand-ins for the three COCO 2017 archives, served at their official paths."""
    jpeg = _jpeg_bytes(tmp_path)
    data = coco_dict(image_names=("000000000001.jpg", "000000000002.jpg"))
    files = {
        "/annotations/annotations_trainval2017.zip": _zip_bytes({
            "annotations/instances_train2017.json": json.dumps(data).encode(),
            "annotations/instances_val2017.json": json.dumps(data).encode(),
            "annotations/captions_val2017.json": b"{}"}),
        "/zips/val2017.zip": _zip_bytes({f"val2017/{image['file_name']}": jpeg for image in data["images"]}),
        "/zips/train2017.zip": _zip_bytes({f"train2017/{image['file_name']}": jpeg for image in data["images"]}),
    }
    archives = tuple(
        RemoteArchive(official.file_name, official.url, len(files[path]), md5=hashlib.md5(files[path]).hexdigest(),
                      provides=official.provides, use_mirror=True)
        for official in dataset_downloads.COCO2017_ARCHIVES
        for path in ["/" + official.url.split("/", 3)[3]])
    monkeypatch.setattr(dataset_downloads, "COCO2017_ARCHIVES", archives)
    # The val archive drops its connection half-way once: the download must resume.
    half = len(files["/zips/val2017.zip"]) // 2
    with LocalHTTPServer(files=files, cut_after={"/zips/val2017.zip": [half]}) as server:
        monkeypatch.setenv("PISA_DATA_MIRROR", server.base_url)
        yield server


def test_download_coco2017_resumes_extracts_and_is_idempotent(tmp_path, coco_mirror, capsys, monkeypatch):
    monkeypatch.setattr("pisa_train.fetch.http.time.sleep", lambda seconds: None)
    dest = tmp_path / "data" / "coco"
    assert main(["download", "coco2017", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    for path in ("annotations/instances_train2017.json", "annotations/instances_val2017.json",
                 "train2017/000000000001.jpg", "val2017/000000000002.jpg"):
        assert (dest / path).is_file(), path
    assert not list(dest.glob("*.zip")) and not list(dest.glob("*.part")), "archives should be removed"
    val_gets = coco_mirror.gets("/zips/val2017.zip")
    assert len(val_gets) == 2 and val_gets[1].range is not None
    assert "classes (2): cat, dog" in out and "train2017/" in out
    assert not any(character in out for character in CONTROL_CHARACTERS)

    requests_before = len(coco_mirror.requests)
    assert main(["download", "coco2017", "--dest", str(dest)]) == 0
    assert len(coco_mirror.requests) == requests_before, "a second run must not download again"
    assert "already downloaded and extracted" in capsys.readouterr().out
    assert main(["check", str(dest)]) == 0


def test_download_coco2017_refuses_when_disk_is_too_small(tmp_path, coco_mirror, monkeypatch, capsys):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr("pisa_train.fetch.http.shutil.disk_usage", lambda path: Usage(100, 90, 10))
    assert main(["download", "coco2017", "--dest", str(tmp_path / "coco")]) == DATA_ERROR
    assert "not enough free disk space" in capsys.readouterr().err
    assert coco_mirror.requests == []


def test_download_roboflow_style_link_recognises_the_export(tmp_path, capsys, roboflow_fixture):
    classes = read_export(roboflow_fixture).classes
    export = _folder_zip(roboflow_fixture)
    with LocalHTTPServer(files={"/signed/export.zip": export},
                         redirects={"/ds/AbC123?key=secret": "/signed/export.zip"}) as server:
        url = server.url("/ds/AbC123?key=secret")
        dest = tmp_path / "data" / "badminton"
        assert main(["download", url, "--dest", str(dest)]) == 0
        out = capsys.readouterr().out
        assert "Roboflow export" in out and f"classes ({len(classes)}): {', '.join(classes)}" in out
        assert (dest / "train" / "_annotations.coco.json").is_file()
        assert "secret" not in (dest / ".pisa-data.json").read_text()
        assert main(["download", url, "--dest", str(dest)]) == 0
        assert len(server.gets("/signed/export.zip")) == 1
    assert main(["check", str(dest)]) == 0


def test_download_of_a_zip_slip_archive_fails_and_writes_nothing_outside(tmp_path, capsys):
    evil = _zip_bytes({"train/_annotations.coco.json": b"{}", "../../evil.txt": b"pwned"})
    with LocalHTTPServer(files={"/evil.zip": evil}) as server:
        dest = tmp_path / "a" / "b" / "data"
        assert main(["download", server.url("/evil.zip"), "--dest", str(dest)]) == DATA_ERROR
    assert "refusing to extract" in capsys.readouterr().err
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (dest / "train").exists()


def test_download_of_a_zip_whose_links_chain_out_writes_nothing_outside_and_is_not_called_corrupt(tmp_path, capsys):
    evil = zip_with_a_link_chain(tmp_path / "chain.zip").read_bytes()
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    with LocalHTTPServer(files={"/chain.zip": evil}) as server:
        dest = tmp_path / "a" / "b" / "data"
        assert main(["download", server.url("/chain.zip"), "--dest", str(dest), "--no-progress"]) == DATA_ERROR
    out, err = capsys.readouterr()
    assert err == (f"pisa-data: error: refusing to extract {dest / 'chain.zip'}: 4 of its entries are not plain files "
                   f"and folders inside {dest} ('a' is a symbolic link (to '.'); 'a/b' is a symbolic link (to '..'); "
                   f"'a/b/c' is a symbolic link (to '..'); and 1 more); dataset archives need only files and folders, "
                   f"so this one was made to write elsewhere or was packed wrongly: nothing was extracted; get the "
                   f"dataset from a source you trust\n")
    # Nothing beside or above --dest: the file the chain aimed at (x, three folders up) is nowhere.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(outside_before + ["a"])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "a").rglob("*")) == [
        "a/b", "a/b/data", "a/b/data/.pisa-data.lock", "a/b/data/chain.zip"]  # the lock: one download per --dest
    assert not (tmp_path / "x").exists()  # where a/b/c/d/x would have landed through the links


def test_archive_that_is_not_a_dataset_says_what_was_expected(tmp_path, capsys):
    with LocalHTTPServer(files={"/x.zip": _zip_bytes({"readme.txt": b"hello"})}) as server:
        assert main(["download", server.url("/x.zip"), "--dest", str(tmp_path / "x")]) == DATA_ERROR
    assert "no COCO-format dataset recognised" in capsys.readouterr().err


def test_roboflow_link_names():
    assert archive_for_url("https://public.roboflow.com/ds/Xy9?key=k").file_name == "roboflow-Xy9.zip"
    assert archive_for_url("https://example.org/sets/birds.tar.gz").file_name == "birds.tar.gz"
    with pytest.raises(UsageError, match=r"\?key="):
        archive_for_url("https://public.roboflow.com/ds/Xy9")


def test_bad_source_is_a_usage_error(tmp_path, capsys):
    assert main(["download", "coco2014", "--dest", str(tmp_path)]) == USAGE_ERROR
    assert "not an http(s) link" in capsys.readouterr().err


def test_check_of_a_missing_folder(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nothing")]) == DATA_ERROR
    err = capsys.readouterr().err
    assert err.startswith("pisa-data: error: dataset folder") and "not found" in err


def test_weights_command_fetches_into_torch_home(tmp_path, monkeypatch, capsys):
    payload = os.urandom(10_000)
    name = f"fake-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with LocalHTTPServer(files={f"/p/{name}": payload}) as server:
        monkeypatch.setenv("PISA_TRAIN_WEIGHT_MIRRORS", server.base_url)  # tried before download.openmmlab.com
        assert main(["weights", "--only", f"https://download.openmmlab.com/p/{name}"]) == 0
    assert (tmp_path / "th" / "hub" / "checkpoints" / name).read_bytes() == payload
    out = capsys.readouterr().out
    assert "ready:" in out and not any(character in out for character in CONTROL_CHARACTERS)


def test_synthetic_writes_the_demo_dataset_with_masks_anywhere(tmp_path, capsys):
    demo = dict(Config.fromfile(str(DEMO_CONFIG)).synthetic_dataset)
    assert demo.pop("generator") == "shapes" and demo == DEMO_SETTINGS  # seed 0 is the demo's own dataset
    dest = tmp_path / "shapes"
    assert main(["synthetic", "--dest", str(dest), "--seed", "5"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"generated the synthetic shapes dataset in {dest} (300 train and 60 val images of 128 px with boxes and "
        f"masks, seed 5)", f"next: pisa-train pisa_mask_rcnn_r50_fpn_1x_coco --data {dest}"]
    train = json.loads((dest / "annotations" / "train.json").read_text())
    assert len(train["images"]) == 300 and len(list((dest / "val").glob("*.jpg"))) == 60
    for annotation in train["annotations"]:
        x, y, w, h = annotation["bbox"]
        [polygon] = annotation["segmentation"]
        xs, ys = polygon[0::2], polygon[1::2]
        assert min(xs) >= x - 0.02 and max(xs) <= x + w + 0.02 and min(ys) >= y - 0.02 and max(ys) <= y + h + 0.02
        shoelace = abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2
        expected = {1: 0.7854 * w * h, 2: w * h, 3: 0.5 * w * h}[annotation["category_id"]]  # circle, square, triangle
        assert shoelace == pytest.approx(expected, rel=0.02)
    assert main(["synthetic", "--dest", str(dest), "--seed", "5"]) == 0
    assert capsys.readouterr().out.startswith(f"synthetic dataset in {dest} is ready")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["synthetic", "--dest", str(tmp_path / "mine")]) == DATA_ERROR
    assert capsys.readouterr().err.strip() == (
        f"pisa-data: error: {tmp_path / 'mine'} exists and is not a pisa-train synthetic dataset; pisa-data synthetic "
        f"would generate into it. Move it away, or choose another --dest")


def test_real_process_output_has_no_control_characters(roboflow_export, run_cli):
    result = run_cli("data", ["check", roboflow_export], cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    assert read_export(roboflow_export).classes[0] in result.stdout
    assert not any(character in result.stdout + result.stderr for character in CONTROL_CHARACTERS)
