"""engine/patches/checkpoint_downloads.py: checkpoints named by URL or by open-mmlab://, torchvision://,
mmcls:// are fetched by the verified resolver and loaded weights-only. Real processes, a real HTTP
server on 127.0.0.1; the proxy variables send every other host to a port where nothing listens, so
that "no source reachable" does not depend on this machine's network."""
from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.hub
from conftest import DEMO_CONFIG, REPO_ROOT
from local_http_server import LocalHTTPServer
from mmengine.runner import checkpoint
from mmengine.runner.checkpoint import CheckpointLoader
from tiny_training import tiny_demo

from pisa_train import exit_codes
from pisa_train.engine.patches.checkpoint_downloads import REMOTE_PREFIXES

EVIL_PICKLE = textwrap.dedent("""
    import os, sys, torch
    class Payload:
        def __reduce__(self):
            return (os.system, ('touch ' + sys.argv[2],))
    torch.save({'state_dict': {}, 'meta': Payload()}, sys.argv[1])
""")


def dead_url() -> str:
    with LocalHTTPServer() as server:
        url = server.base_url
    return url


def offline_env(tmp_path: Path, **extra) -> dict:
    """This machine as if it had no network: every host but 127.0.0.1 goes through a dead proxy."""
    proxy = dead_url()
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TORCH_HOME": str(tmp_path / "torch"),
            "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **extra}


def crafted_checkpoint(tmp_path: Path, marker: Path) -> tuple[str, bytes]:
    """(file name carrying its SHA-256 prefix, bytes) of a .pth whose pickle runs `touch marker`."""
    path = tmp_path / "evil.pth"
    subprocess.run([sys.executable, "-c", EVIL_PICKLE, str(path), str(marker)], check=True)
    payload = path.read_bytes()
    path.unlink()
    return f"evil-{hashlib.sha256(payload).hexdigest()[:8]}.pth", payload


def run_python(code: str, tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)


def test_upstream_loads_an_https_checkpoint_with_torch_hub_unpickling_in_full(tmp_path):
    """Fails when mmengine (0.10.7) stops loading URL checkpoints through torch.hub's
    load_state_dict_from_url, or torch stops unpickling them in full: then checkpoint_downloads
    may go. This is the hole the patch closes: the crafted file runs its code."""

    assert "load_url(" in inspect.getsource(checkpoint.load_from_http)
    assert inspect.signature(torch.hub.load_state_dict_from_url).parameters["weights_only"].default is False
    marker = tmp_path / "upstream-ran-it"
    name, payload = crafted_checkpoint(tmp_path, marker)
    with LocalHTTPServer(files={f"/{name}": payload}) as server:
        result = run_python(f"from mmengine.runner.checkpoint import _load_checkpoint\n"
                            f"_load_checkpoint({server.url('/' + name)!r}, map_location='cpu')\nprint('LOADED')",
                            tmp_path, offline_env(tmp_path))
    assert "LOADED" in result.stdout, result.stderr[-2000:]
    assert marker.exists()


def test_upstream_schemes_are_the_ones_replaced():
    """Fails when mmengine registers other download schemes, which would bypass the patch."""

    remote = {prefix for prefix in CheckpointLoader._schemes if "://" in prefix and "s3" not in prefix
              and "petrel" not in prefix and prefix != "pavi://"}
    assert remote <= set(REMOTE_PREFIXES)


def test_mmcls_checkpoints_keep_only_their_backbone(tmp_path):
    """mmcls:// goes through the resolver too, then mmengine's own reduction to the backbone."""

    local = tmp_path / "cls.pth"
    torch.save({"state_dict": {"backbone.conv.weight": torch.ones(1), "head.fc.weight": torch.ones(2)}}, local)
    payload = local.read_bytes()
    name = f"vgg11_batch256_imagenet_20210208-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    code = textwrap.dedent(f"""
        from mmengine.runner import checkpoint
        checkpoint.get_mmcls_models = lambda: {{'tiny': 'https://download.openmmlab.com/cls/{name}'}}
        from pisa_train.engine.patches.checkpoint_downloads import register_remote_checkpoint_loaders
        register_remote_checkpoint_loaders()
        print('KEYS', sorted(checkpoint._load_checkpoint('mmcls://tiny', map_location='cpu')['state_dict']))
    """)
    with LocalHTTPServer(files={f"/cls/{name}": payload}) as mirror:
        result = run_python(code, tmp_path, offline_env(tmp_path, PISA_TRAIN_WEIGHT_MIRRORS=mirror.base_url,
                                                        PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "KEYS ['conv.weight']" in result.stdout
    assert (tmp_path / "torch" / "hub" / "checkpoints" / name).read_bytes() == payload


@pytest.mark.slow
@pytest.mark.parametrize("where", ["load_from", "init_cfg"])
def test_a_crafted_pickle_served_over_http_is_refused_and_runs_nothing(tmp_path, where):
    marker = tmp_path / "pwned"
    name, payload = crafted_checkpoint(tmp_path, marker)
    with LocalHTTPServer(files={f"/{name}": payload}) as server:
        url = server.url(f"/{name}")
        config = tmp_path / "demo_from_url.py"
        if where == "load_from":
            config.write_text(f"_base_ = {str(DEMO_CONFIG)!r}\nload_from = {url!r}\n")
        else:
            config.write_text(f"_base_ = {str(DEMO_CONFIG)!r}\nmodel = dict(backbone=dict(init_cfg=dict("
                              f"_delete_=True, type='Pretrained', checkpoint={url!r})))\n")
        args = tiny_demo(tmp_path / "work", 1)
        args[0] = str(config)
        result = subprocess.run([sys.executable, "-m", "pisa_train.cli.train", *args], cwd=tmp_path,
                                env=offline_env(tmp_path), capture_output=True, text=True, timeout=600)
        assert len(server.gets(f"/{name}")) == 1  # fetched once, through the resolver
    cached = tmp_path / "torch" / "hub" / "checkpoints" / name
    assert result.returncode == exit_codes.CHECKPOINT_ERROR, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"pisa-train: error: checkpoint {cached} was refused: it pickles posix.system, which is not among the "
        f"weights and mmengine training state that pisa-train loads, and unpickling it could run arbitrary code; "
        f"if you trust where this file came from, load it anyway with --trust-checkpoint {cached}"]
    assert not marker.exists()
    assert not list((tmp_path / "work").glob("*.pth"))  # nothing trained


def test_no_source_reachable_for_a_released_model_is_one_line_naming_the_file_and_every_url(
        tmp_path, roboflow_export):
    dead_mirror = dead_url()
    env = offline_env(tmp_path, PISA_TRAIN_WEIGHT_MIRRORS=dead_mirror)
    result = subprocess.run(
        [sys.executable, "-m", "pisa_train.cli.train", "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco", "--device", "cpu",
         "--data", str(roboflow_export), "--work-dir", str(tmp_path / "work"),
         "--load-from", "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    path = ("/mmdetection/v2.0/pisa/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco/"
            "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco-e4accec4.pth")
    refused = "(cannot connect: [Errno 111] Connection refused)"
    place = tmp_path / "torch" / "hub" / "checkpoints" / "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco-e4accec4.pth"
    assert result.returncode == exit_codes.ENVIRONMENT_ERROR, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"pisa-train: error: cannot get checkpoint pisa_faster_rcnn_x101_32x4d_fpn_1x_coco-e4accec4.pth "
        f"(pisa_faster_rcnn_x101_32x4d_fpn_1x_coco), tried: {dead_mirror}{path} {refused}; "
        f"https://download.openmmlab.com{path} {refused}; https://mmassets.onedl.ai{path} {refused}; download it "
        f"where there is network (`pisa-data weights --only pisa_faster_rcnn_x101_32x4d_fpn_1x_coco`, or set "
        f"PISA_TRAIN_WEIGHT_MIRRORS to a mirror that has it) and put it at {place}"]
    assert not place.exists()
    # Failed before anything started: the work dir holds only the run's lock (one run per work dir) and --data's
    # copy of the annotation file (Roboflow numbers annotations from 0; the copy from 1), written when the config
    # was built.
    work = tmp_path / "work"
    assert sorted(path.relative_to(work).as_posix() for path in work.rglob("*") if path.is_file()) == [
        ".pisa-train.lock", "annotations/train.json"]
