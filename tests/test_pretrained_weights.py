"""The weights resolver (fetch/weights.py): names resolved as mmengine resolves them, the sources in
order, downloads verified by the SHA-256 prefix in their name and published into the torch hub cache,
and one line when no source has the file. Every download is from a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import mmengine
import pytest
import torch.hub as torch_hub
from conftest import CONFIGS
from local_http_server import LocalHTTPServer
from mmengine.config import Config

from pisa_train.errors import CheckpointError, EnvironmentProblem, UsageError
from pisa_train.fetch import weights
from pisa_train.fetch.model_zoo import MODEL_ZOO
from pisa_train.fetch.weights import (
    checkpoint_url,
    download_sources,
    fetch_checkpoint,
    fetch_weights,
    sha256_prefix,
    torch_checkpoints_dir,
)

MIRRORS = "PISA_TRAIN_WEIGHT_MIRRORS"


def released_file(payload: bytes, stem: str = "backbone") -> str:
    """A file name carrying its payload's SHA-256 prefix, as released checkpoints do."""
    return f"{stem}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"


def dead_url() -> str:
    """An http://127.0.0.1 base URL where nothing listens: connections are refused at once."""
    with LocalHTTPServer() as server:
        url = server.base_url
    return url


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(MIRRORS, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def openmmlab_host(monkeypatch):
    """Point the names download.openmmlab.com and mmassets.onedl.ai at local servers: the 'original'
    (a server with the files the test gives it) and a fallback where nothing listens, so that no test
    depends on the internet."""
    def serve(files: dict[str, bytes]) -> LocalHTTPServer:
        server = LocalHTTPServer(files=files).__enter__()
        monkeypatch.setattr(weights, "OPENMMLAB_DOWNLOADS", server.base_url)
        monkeypatch.setattr(weights, "ONEDL_ASSETS", dead_url())
        opened.append(server)
        return server

    opened: list[LocalHTTPServer] = []
    yield serve
    for server in opened:
        server.__exit__(None, None, None)


@pytest.mark.parametrize("env", [{"TORCH_HOME": "{tmp}/th"}, {"XDG_CACHE_HOME": "{tmp}/xdg"}, {}])
def test_checkpoints_dir_matches_torch_hub(tmp_path, monkeypatch, env):
    """Fails if torch.hub changes where load_state_dict_from_url caches files (mmengine looks there)."""
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert torch_checkpoints_dir() == Path(torch_hub.get_dir()) / "checkpoints"


def test_names_resolve_through_mmengines_own_tables():
    """Fails if mmengine's open-mmlab:// table points the backbones elsewhere, or stops mapping names."""

    hub_tables = Path(mmengine.__file__).parent / "hub"
    openmmlab = json.loads((hub_tables / "openmmlab.json").read_text())
    assert checkpoint_url("open-mmlab://resnext101_32x4d") == openmmlab["resnext101_32x4d"] == \
        "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth"
    assert checkpoint_url("open-mmlab://vgg16_caffe") == openmmlab["vgg16_caffe"]
    deprecated = json.loads((hub_tables / "deprecated.json").read_text())
    old_name, new_name = next(iter(deprecated.items()))
    assert checkpoint_url(f"open-mmlab://{old_name}") == openmmlab[new_name]
    assert checkpoint_url("torchvision://resnet50") == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    mmcls = json.loads((hub_tables / "mmcls.json").read_text())
    assert checkpoint_url("mmcls://vgg11") == mmcls["vgg11"]
    assert checkpoint_url("https://example.org/a-12345678.pth") == "https://example.org/a-12345678.pth"
    with pytest.raises(CheckpointError, match=r"^checkpoint open-mmlab://resnext101_32x8 is not a name mmengine "
                                              r"knows; did you mean open-mmlab://resnext101_32x4d"):
        checkpoint_url("open-mmlab://resnext101_32x8")


def test_every_checkpoint_the_configs_name_resolves_and_can_be_verified():
    """Each config's pretrained backbone (and each released checkpoint) is a file whose name carries its
    SHA-256 prefix, so that a copy from any mirror can be checked."""

    references = set()
    for path in sorted(CONFIGS.glob("*.py")):
        references |= {reference for _, reference in weights.config_checkpoints(Config.fromfile(str(path)))}
    assert {"open-mmlab://resnext101_32x4d", "open-mmlab://vgg16_caffe", "torchvision://resnet50"} <= references
    references |= {model.weights_url for model in MODEL_ZOO.values() if model.weights_url}
    for reference in references:
        assert sha256_prefix(checkpoint_url(reference).rsplit("/", 1)[-1]), reference


def test_sources_are_the_mirrors_then_the_url_then_onedl():
    env = {MIRRORS: " http://mirror-a/  https://mirror-b:8443\n"}
    path = "/pretrain/third_party/resnext101_32x4d-a5af3160.pth"
    assert download_sources("https://download.openmmlab.com" + path, env) == [
        "http://mirror-a" + path, "https://mirror-b:8443" + path, "https://download.openmmlab.com" + path,
        "https://mmassets.onedl.ai" + path]
    # torchvision's files keep their own host, after the user's mirrors; other URLs are fetched as given.
    assert download_sources("https://download.pytorch.org/models/resnet50-0676ba61.pth", env) == [
        "http://mirror-a/models/resnet50-0676ba61.pth", "https://mirror-b:8443/models/resnet50-0676ba61.pth",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth"]
    assert download_sources("https://example.org/w-12345678.pth", env) == ["https://example.org/w-12345678.pth"]
    assert download_sources("https://download.openmmlab.com" + path, {})[-1] == "https://mmassets.onedl.ai" + path


def test_a_mirror_serves_the_checkpoint_after_a_dead_one_and_it_lands_verified_in_the_hub_cache(
        hub, monkeypatch, openmmlab_host):
    payload = os.urandom(200_000)
    name = released_file(payload)
    path = f"/pretrain/third_party/{name}"
    original = openmmlab_host({})  # download.openmmlab.com: gone
    with LocalHTTPServer(files={path: payload}) as mirror:
        monkeypatch.setenv(MIRRORS, f"{dead_url()} {mirror.base_url}")
        output = io.StringIO()
        fetched = fetch_checkpoint(original.base_url + path, progress=False, output=output)
        assert fetched == hub / name and fetched.read_bytes() == payload
        assert len(mirror.gets(path)) == 1
        assert original.gets(path) == []  # the mirror came first and served it
        # Verified in this process: used again without a download.
        assert fetch_checkpoint(original.base_url + path, output=output) == fetched
        assert len(mirror.gets(path)) == 1
    log = output.getvalue()
    assert "failed (cannot connect: [Errno 111] Connection refused)" in log
    assert (f"{name}: downloaded from {mirror.base_url}{path} into {hub}; checked against the SHA-256 prefix in "
            f"its name ({name[-12:-4]}: catches corruption, not a forged file; pin it with PISA_TRAIN_WEIGHTS_SHA256); "
            f"its full SHA-256 is now recorded in {hub / '.pisa-train-sha256sums'}") in log
    # No .part, no temporary file left; the full SHA-256 recorded for the next download of the name.
    assert sorted(p.name for p in hub.iterdir()) == [".pisa-train-download.lock", ".pisa-train-sha256sums", name]
    assert (hub / ".pisa-train-sha256sums").read_text() == f"{hashlib.sha256(fetched.read_bytes()).hexdigest()}  {name}\n"


def test_a_file_whose_sha256_does_not_match_its_name_is_refused_not_cached_and_the_next_source_tried(
        hub, monkeypatch, openmmlab_host):
    payload = os.urandom(50_000)
    name = released_file(payload)
    path = f"/mmdetection/v2.0/x/{name}"
    with LocalHTTPServer(files={path: b"<html>an error page with status 200</html>"}) as liar:
        monkeypatch.setenv(MIRRORS, liar.base_url)
        original = openmmlab_host({path: payload})
        output = io.StringIO()
        assert fetch_checkpoint(original.base_url + path, progress=False, output=output).read_bytes() == payload
        assert len(liar.gets(path)) == 1 and len(original.gets(path)) == 1
    assert f"{liar.base_url}{path} failed (refused and deleted: sha256 " in output.getvalue()

    # When no source has the right bytes, nothing is cached, and the line says what each source did.
    bad_name = released_file(b"the real weights", "other")
    with LocalHTTPServer(files={f"/p/{bad_name}": b"not the real weights"}) as liar:
        monkeypatch.setenv(MIRRORS, liar.base_url)
        openmmlab_host({})
        with pytest.raises(CheckpointError) as refused:
            fetch_checkpoint(f"{weights.OPENMMLAB_DOWNLOADS}/p/{bad_name}", progress=False, output=io.StringIO())
    assert not (hub / bad_name).exists() and not (hub / f"{bad_name}.part").exists()
    actual = hashlib.sha256(b"not the real weights").hexdigest()
    expected = bad_name[-12:-4]
    assert str(refused.value) == (
        f"cannot get checkpoint {bad_name}, tried: {liar.base_url}/p/{bad_name} (refused and deleted: sha256 "
        f"{actual} does not match the expected {expected}); {weights.OPENMMLAB_DOWNLOADS}/p/{bad_name} (HTTP 404 "
        f"Not Found); {weights.ONEDL_ASSETS}/p/{bad_name} (cannot connect: [Errno 111] Connection refused); "
        f"download it where there is network (`pisa-data weights --only {weights.OPENMMLAB_DOWNLOADS}/p/{bad_name}`"
        f", or set PISA_TRAIN_WEIGHT_MIRRORS to a mirror that has it) and put it at {hub / bad_name}; a file whose "
        f"SHA-256 does not start with {expected} is refused from any source: to use a copy you trust anyway, give its "
        f"path instead of {weights.OPENMMLAB_DOWNLOADS}/p/{bad_name} (a local file is loaded weights-only, without "
        f"the check of its name)")


def test_a_cached_file_is_verified_before_first_use_and_replaced_when_wrong(hub, monkeypatch, openmmlab_host):
    payload = os.urandom(20_000)
    name = released_file(payload)
    hub.mkdir(parents=True)
    (hub / name).write_bytes(payload[:1000])  # a copy cut short, under the final name
    original = openmmlab_host({f"/w/{name}": payload})
    output = io.StringIO()
    assert fetch_checkpoint(f"{original.base_url}/w/{name}", progress=False, output=output).read_bytes() == payload
    assert f"{name}: the copy in {hub} was not the right file (its SHA-256" in output.getvalue()
    assert len(original.gets(f"/w/{name}")) == 1


def test_no_source_reachable_is_a_network_problem_naming_each_url(hub, monkeypatch, openmmlab_host):
    dead = dead_url()
    monkeypatch.setenv(MIRRORS, dead)
    openmmlab_host({})
    monkeypatch.setattr(weights, "OPENMMLAB_DOWNLOADS", dead_url())
    url = f"{weights.OPENMMLAB_DOWNLOADS}/pretrain/third_party/resnext101_32x4d-a5af3160.pth"
    with pytest.raises(EnvironmentProblem) as unreachable:
        fetch_checkpoint(url, setting="model.backbone.init_cfg.checkpoint", progress=False, output=io.StringIO())
    refused = "(cannot connect: [Errno 111] Connection refused)"
    place = hub / "resnext101_32x4d-a5af3160.pth"
    assert str(unreachable.value) == (
        f"cannot get checkpoint resnext101_32x4d-a5af3160.pth, tried: "
        f"{dead}/pretrain/third_party/resnext101_32x4d-a5af3160.pth {refused}; {url} {refused}; "
        f"{weights.ONEDL_ASSETS}/pretrain/third_party/resnext101_32x4d-a5af3160.pth {refused}; download it where "
        f"there is network (`pisa-data weights --only {url}`, or set PISA_TRAIN_WEIGHT_MIRRORS to a mirror that "
        f"has it) and put it at {place}, or train without it: --cfg-options model.backbone.init_cfg=None (the "
        f"backbone starts from random weights: far lower accuracy)")


def test_pisa_data_weights_names(hub, monkeypatch, openmmlab_host):
    payload = os.urandom(10_000)
    name = released_file(payload)
    original = openmmlab_host({f"/x/{name}": payload})
    [path] = fetch_weights([f"{original.base_url}/x/{name}"], output=io.StringIO())
    assert path == hub / name
    assert weights.weights_reference("resnext101_32x4d") == "open-mmlab://resnext101_32x4d"
    assert weights.weights_reference("pisa_ssd512_coco") == MODEL_ZOO["pisa_ssd512_coco"].weights_url
    with pytest.raises(UsageError, match=r"^unknown weights 'resnet5O'; give a released model's name"):
        fetch_weights(["resnet5O"], output=io.StringIO())
    with pytest.raises(CheckpointError, match="^pisa_mask_rcnn_x101_32x4d_fpn_1x_coco has a config but no released"):
        fetch_weights(["pisa_mask_rcnn_x101_32x4d_fpn_1x_coco"], output=io.StringIO())
