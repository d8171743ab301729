"""Patch: checkpoints named by URL, ``open-mmlab://``, ``torchvision://`` or ``mmcls://`` are fetched by
pisa-train's resolver (mirrors, SHA-256 verified) and loaded weights-only, like local files.

Upstream: mmengine 0.10.7 (mmengine/runner/checkpoint.py) registers CheckpointLoader schemes for
``http://``/``https://`` (load_from_http), ``torchvision://``/``modelzoo://``, ``open-mmlab://``/
``openmmlab://`` and ``mmcls://``. All of them download with mmengine.utils.dl_utils.load_url, that
is torch.hub.load_state_dict_from_url, whose ``weights_only`` defaults to False in torch 2.14: a
crafted pickle served as ``load_from`` or as a backbone's ``init_cfg.checkpoint`` runs its code when
loaded. They download from the one URL, unverified (``check_hash=False``), and that URL's host,
download.openmmlab.com, has failed since June 2026 (open-mmlab/mmdetection#12446, #12447).

``register_remote_checkpoint_loaders`` re-registers those prefixes with ``load_from_verified_download``
(``CheckpointLoader.register_scheme(..., force=True)``, mmengine's own extension point):
fetch/weights.py maps the name through mmengine's own tables, downloads from the mirrors in order
and verifies the file; engine/checkpoint_files.py's load_checkpoint_file then reads it weights-only (and
only a file named by ``--trust-checkpoint`` in full), as checkpoint_loading.py has mmengine read local files. A ``mmcls://`` checkpoint is then reduced to its
backbone by mmengine's own ``_process_mmcls_checkpoint``, as load_from_mmcls does. In a distributed
run rank 0 fetches first and the others wait, as load_from_http does.
Guard tests: tests/test_checkpoint_downloads.py::test_upstream_loads_an_https_checkpoint_with_torch_hub_unpickling_in_full
and tests/test_checkpoint_downloads.py::test_upstream_schemes_are_the_ones_replaced fail when mmengine
stops loading these through torch.hub or torch's default changes; the file's other tests fail without
this patch.
"""
from __future__ import annotations

from pisa_train.engine.checkpoint_files import load_checkpoint_file
from pisa_train.engine.patch_state import PATCH_STATE
from pisa_train.fetch.weights import fetch_checkpoint

REMOTE_PREFIXES = ("http://", "https://", "torchvision://", "modelzoo://", "open-mmlab://", "openmmlab://",
                   "mmcls://")


def load_from_verified_download(filename: str, map_location=None):
    """mmengine's CheckpointLoader calls this for every prefix in REMOTE_PREFIXES (its log line
    names the loader by what follows ``load_from_``: "verified_download")."""
    from mmengine.dist import barrier, get_dist_info

    rank, world_size = get_dist_info()
    if rank > 0:
        barrier()  # rank 0 downloads first; the others then find the verified file in the cache
    try:
        path = fetch_checkpoint(filename)
    finally:
        if rank == 0 and world_size > 1:
            barrier()
    checkpoint = load_checkpoint_file(str(path), map_location)
    if filename.startswith("mmcls://"):
        from mmengine.runner.checkpoint import _process_mmcls_checkpoint

        checkpoint = _process_mmcls_checkpoint(checkpoint)
    return checkpoint


def register_remote_checkpoint_loaders() -> None:
    if PATCH_STATE.was_applied("remote checkpoint loaders"):
        return
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes=REMOTE_PREFIXES, loader=load_from_verified_download, force=True)
    PATCH_STATE.record_applied("remote checkpoint loaders")
