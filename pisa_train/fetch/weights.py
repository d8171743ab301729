"""The pretrained weights the PISA configs use, and where mmengine looks for them.

mmengine resolves ``open-mmlab://resnext101_32x4d`` through its
``mmengine/hub/openmmlab.json`` to an https URL and loads every http(s)
checkpoint with ``torch.hub.load_state_dict_from_url``, which keeps the file
in ``<torch hub dir>/checkpoints`` under the URL's file name and downloads only
what is not there. So a file placed in that folder under that name is used
offline. The folder is ``$TORCH_HOME/hub/checkpoints``, where ``TORCH_HOME``
defaults to ``$XDG_CACHE_HOME/torch`` and that to ``~/.cache/torch``
(torch.hub.get_dir; mmengine 0.10.7 runner/checkpoint.py load_from_openmmlab
and load_from_http). tests/test_pretrained_weights.py fails if either
upstream lookup changes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pisa_train.fetch.http import download_file, mirrored_url
from pisa_train.errors import EnvironmentProblem, PisaError, UsageError


@dataclass(frozen=True)
class KnownWeights:
    name: str  # what the user types: `pisa-data weights --only NAME`
    config_reference: str  # how a config names it
    url: str
    sha256_prefix: str  # the 8 hex digits in the file name: the start of its SHA-256
    description: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# URLs: the backbone's from mmengine 0.10.7 mmengine/hub/openmmlab.json
# ("resnext101_32x4d"); the PISA model's from mmdetection configs/pisa/README.md
# and metafile.yml (box AP 41.9). File sizes are not published, so only the
# SHA-256 prefix is checked.
KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    weights.name: weights for weights in (
        KnownWeights(
            name="resnext101_32x4d",
            config_reference="open-mmlab://resnext101_32x4d",
            url="https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth",
            sha256_prefix="a5af3160",
            description="ImageNet-pretrained ResNeXt-101 32x4d backbone (model.backbone.init_cfg)",
        ),
        KnownWeights(
            name="pisa_faster_rcnn_x101_32x4d_fpn_1x_coco",
            config_reference="https://download.openmmlab.com/mmdetection/v2.0/pisa/"
                             "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco/"
                             "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco-e4accec4.pth",
            url="https://download.openmmlab.com/mmdetection/v2.0/pisa/pisa_faster_rcnn_x101_32x4d_fpn_1x_coco/"
                "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco-e4accec4.pth",
            sha256_prefix="e4accec4",
            description="released PISA Faster R-CNN X101-32x4d FPN 1x COCO model (box AP 41.9)",
        ),
    )
}


def torch_checkpoints_dir(environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """Where mmengine (through torch.hub) caches and looks for http(s) checkpoints."""
    torch_home = environ.get("TORCH_HOME") or os.path.join(environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def find_known_weights(reference: str) -> KnownWeights | None:
    """The entry for a short name, config reference (``open-mmlab://...``), URL or file name; None if unknown."""
    for weights in KNOWN_WEIGHTS.values():
        if reference in (weights.name, weights.config_reference, weights.file_name, weights.url):
            return weights
    return None


def known_weights(name: str) -> KnownWeights:
    weights = find_known_weights(name)
    if weights is None:
        raise UsageError(f"unknown weights {name!r}; known: {', '.join(KNOWN_WEIGHTS)}")
    return weights


def cached_weights_path(name: str, environ: dict[str, str] | os._Environ = os.environ) -> Path:
    """Where mmengine will look for these weights (the file may not be there yet)."""
    return torch_checkpoints_dir(environ) / known_weights(name).file_name


def fetch_weights(names: list[str] | None = None, dest: str | Path | None = None, *, progress: bool = True,
                  output: TextIO | None = None) -> list[Path]:
    """Download (or verify, if present) the named weights into ``dest`` (default: the torch hub folder)."""
    folder = Path(dest).expanduser() if dest is not None else torch_checkpoints_dir()
    selected = [known_weights(name) for name in names] if names else list(KNOWN_WEIGHTS.values())
    return [download_file(mirrored_url(weights.url), folder / weights.file_name,
                          sha256=weights.sha256_prefix, progress=progress, output=output)
            for weights in selected]


def missing_weights_message(name: str, environ: dict[str, str] | os._Environ = os.environ) -> str:
    """One line for when training needs these weights and cannot download them."""
    weights = known_weights(name)
    place = cached_weights_path(name, environ)
    message = (f"cannot get the {weights.description}: {weights.file_name} is not in {place.parent} and could not "
               f"be downloaded from {weights.url}; run `pisa-data weights --only {weights.name}` where there "
               f"is network, or download that URL and put the file at {place}")
    if weights.config_reference.startswith("open-mmlab://"):
        message += (", or train the backbone from scratch with "
                    "`--cfg-options model.backbone.init_cfg=None` (much lower accuracy)")
    return message


def weights_download_failure(cfg, error: BaseException) -> PisaError | None:
    """The error to report when ``error`` is MMEngine failing to download the
    pretrained weights the config's backbone starts from; None for any other error."""
    import urllib.error

    if not isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError)):
        return None
    init_cfg = ((cfg.get("model") or {}).get("backbone") or {}).get("init_cfg") or {}
    reference = init_cfg.get("checkpoint") if isinstance(init_cfg, dict) else None
    if not reference:
        return None
    if find_known_weights(reference) is not None:
        return EnvironmentProblem(missing_weights_message(reference) + f" ({error})")
    return EnvironmentProblem(f"cannot download the pretrained weights {reference} that "
                              f"model.backbone.init_cfg names ({error}); put the file where mmengine looks "
                              f"({torch_checkpoints_dir()}), or train from scratch with "
                              f"`--cfg-options model.backbone.init_cfg=None`")
