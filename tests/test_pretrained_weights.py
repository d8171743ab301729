"""Where mmengine looks for pretrained weights, fetching them, and the message when they are missing."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from local_http_server import LocalHTTPServer
from pisa_train.fetch import weights as pretrained_weights
from pisa_train.errors import DataError, UsageError
from pisa_train.fetch.weights import (KNOWN_WEIGHTS, KnownWeights, fetch_weights, missing_weights_message,
                                           torch_checkpoints_dir)


@pytest.mark.parametrize("env", [{"TORCH_HOME": "{tmp}/th"}, {"XDG_CACHE_HOME": "{tmp}/xdg"}, {}])
def test_checkpoints_dir_matches_torch_hub(tmp_path, monkeypatch, env):
    """Fails if torch.hub changes where load_state_dict_from_url caches files."""
    torch_hub = pytest.importorskip("torch.hub")
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert torch_checkpoints_dir() == Path(torch_hub.get_dir()) / "checkpoints"


def test_backbone_url_is_the_one_mmengine_resolves():
    """Fails if mmengine's open-mmlab:// table points the backbone elsewhere."""
    import mmengine

    table = json.loads((Path(mmengine.__file__).parent / "hub" / "openmmlab.json").read_text())
    backbone = KNOWN_WEIGHTS["resnext101_32x4d"]
    assert table[backbone.config_reference.removeprefix("open-mmlab://")] == backbone.url


def test_project_config_names_the_backbone_we_fetch():
    config = Path(__file__).resolve().parents[1] / "configs" / "faster_rcnn_x101_32x4d_fpn_1x_coco.py"
    if not config.exists():
        pytest.skip("configs/faster_rcnn_x101_32x4d_fpn_1x_coco.py not written yet")
    assert KNOWN_WEIGHTS["resnext101_32x4d"].config_reference in config.read_text()


def test_file_names_carry_their_sha256_prefix():
    for weights in KNOWN_WEIGHTS.values():
        assert weights.file_name.endswith(f"-{weights.sha256_prefix}.pth")


def test_missing_weights_message_names_file_url_place_and_scratch_option(tmp_path):
    message = missing_weights_message("open-mmlab://resnext101_32x4d", {"TORCH_HOME": str(tmp_path)})
    assert "resnext101_32x4d-a5af3160.pth" in message
    assert "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnext101_32x4d-a5af3160.pth") in message
    assert "--cfg-options model.backbone.init_cfg=None" in message
    assert "pisa-data weights" in message
    assert "\n" not in message


def test_missing_checkpoint_message_has_no_scratch_option():
    message = missing_weights_message("pisa_faster_rcnn_x101_32x4d_fpn_1x_coco-e4accec4.pth")
    assert "e4accec4" in message and "init_cfg" not in message


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(UsageError, match="resnext101_32x4d"):
        missing_weights_message("resnet50")


def test_fetch_places_files_under_torch_home_and_skips_them_next_time(tmp_path, monkeypatch):
    payload = os.urandom(50_000)
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    fake = KnownWeights("fake", "open-mmlab://fake", f"https://download.openmmlab.com/pretrain/fake-{prefix}.pth",
                        prefix, "a test backbone")
    monkeypatch.setattr(pretrained_weights, "KNOWN_WEIGHTS", {"fake": fake})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with LocalHTTPServer(files={f"/pretrain/fake-{prefix}.pth": payload}) as server:
        monkeypatch.setenv("PISA_DATA_MIRROR", server.base_url)
        [path] = fetch_weights(output=io.StringIO())
        fetch_weights(["fake"], output=io.StringIO())
        assert len(server.gets(f"/pretrain/fake-{prefix}.pth")) == 1
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / f"fake-{prefix}.pth"
    assert path.read_bytes() == payload


def test_weights_with_the_wrong_hash_are_rejected(tmp_path, monkeypatch):
    backbone = KNOWN_WEIGHTS["resnext101_32x4d"]
    path = "/" + backbone.url.split("/", 3)[3]
    with LocalHTTPServer(files={path: b"an html error page, not weights"}) as server:
        monkeypatch.setenv("PISA_DATA_MIRROR", server.base_url)
        with pytest.raises(DataError, match="corrupt: sha256"):
            fetch_weights(["resnext101_32x4d"], tmp_path, output=io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_lookup_by_config_reference_and_cached_path(tmp_path):
    from pisa_train.fetch.weights import cached_weights_path, find_known_weights
    assert find_known_weights("open-mmlab://resnext101_32x4d").name == "resnext101_32x4d"
    assert find_known_weights("torchvision://resnet50") is None
    assert cached_weights_path("resnext101_32x4d", {"TORCH_HOME": str(tmp_path)}) == \
        tmp_path / "hub" / "checkpoints" / "resnext101_32x4d-a5af3160.pth"
