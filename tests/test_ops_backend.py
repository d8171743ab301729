"""--ops-backend: torchvision's RoIAlign and NMS against mmcv's on the CPU, the config rewrite,
and the two places where ops_backend depends on how mmcv 2.1.0 is written."""
from __future__ import annotations

import importlib
import inspect
import sys

import pytest
import torch
from conftest import DEMO_CONFIG, X101_PISA_CONFIG, run_command
from mmcv.ops import RoIAlign, batched_nms, nms, nms_match
from mmengine.config import Config
from tiny_training import tiny_demo
from torchvision.ops import roi_align as tv_roi_align

from pisa_train.cli import evaluate, train
from pisa_train.config import rewrites as rewrite
from pisa_train.config.build import build_test_config, build_train_config
from pisa_train.config.loading import load_config
from pisa_train.engine.device import MMCV_LITE, MmcvKernels, choose_ops_backend, mmcv_kernels
from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled
from pisa_train.engine.patches.torchvision_nms import (
    NmsKernelOnTorchvision,
    torchvision_nms_in_use,
    use_torchvision_nms,
)
from pisa_train.errors import ConfigError, EnvironmentProblem, UsageError


def kernels_for(devices) -> MmcvKernels:
    return MmcvKernels(frozenset(devices), "mmcv ops as this test describes them")


# ---- choosing the backend (pure) -------------------------------------------------------------

@pytest.mark.parametrize("requested, device, kernels, expected", [
    ("auto", "cpu", {"cpu"}, "mmcv"),
    ("auto", "cuda", {"cpu"}, "torchvision"),
    ("auto", "cuda", {"cpu", "cuda"}, "mmcv"),
    ("auto", "cpu", set(), "torchvision"),
    ("torchvision", "cpu", {"cpu", "cuda"}, "torchvision"),
    ("mmcv", "cuda", {"cpu", "cuda"}, "mmcv"),
])
def test_choose_ops_backend(requested, device, kernels, expected):
    assert choose_ops_backend(requested, device, kernels_for(kernels)) == expected


def test_mmcv_backend_without_its_kernels_is_an_environment_problem():
    with pytest.raises(EnvironmentProblem, match="--ops-backend torchvision"):
        choose_ops_backend("mmcv", "cuda", kernels_for({"cpu"}))
    with pytest.raises(UsageError):
        choose_ops_backend("tensorrt", "cpu", kernels_for({"cpu"}))


def test_mmcv_backend_with_mmcv_lite_is_refused_in_one_line():
    with pytest.raises(EnvironmentProblem) as raised:
        choose_ops_backend("mmcv", "cpu", MmcvKernels(frozenset(), MMCV_LITE))
    assert str(raised.value) == (
        "--ops-backend mmcv asked for, but this environment has mmcv-lite, without compiled ops: RoIAlign, NMS and "
        "nms_match run on torchvision's and torch's kernels; use --ops-backend auto (torchvision's kernels), or "
        "install compiled mmcv with make setup MMCV=compiled")
    assert raised.value.exit_code == 6
    assert choose_ops_backend("auto", "cuda", MmcvKernels(frozenset(), MMCV_LITE)) == "torchvision"


def test_this_environment_reports_its_kernels_as_what_imports_as_mmcv_ext():
    kernels = mmcv_kernels()
    assert (kernels.description == MMCV_LITE) == (not mmcv_ext_is_compiled())
    assert (kernels.devices == frozenset()) == getattr(sys.modules["mmcv._ext"], "provided_by_pisa_train", False)


# ---- the config rewrite (pure) ---------------------------------------------------------------

def _model_cfg():
    return Config(dict(model=dict(
        type="FasterRCNN",
        roi_head=dict(bbox_roi_extractor=dict(type="SingleRoIExtractor",
                                              roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)),
                      mask_roi_extractor=[dict(roi_layer=dict(type="RoIAlign", output_size=14))],
                      other=dict(roi_layer=dict(type="RoIPool", output_size=7))))))


def test_torchvision_backend_sets_use_torchvision_on_every_roi_align():
    cfg = _model_cfg()
    out = rewrite.apply_ops_backend(cfg, "torchvision")
    assert out.ops_backend == "torchvision"
    assert out.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is True
    assert out.model.roi_head.mask_roi_extractor[0].roi_layer.use_torchvision is True
    assert "use_torchvision" not in out.model.roi_head.other.roi_layer  # not a RoIAlign
    assert "use_torchvision" not in cfg.model.roi_head.bbox_roi_extractor.roi_layer  # argument untouched
    assert "ops_backend" not in cfg

    back = rewrite.apply_ops_backend(out, "mmcv")
    assert back.ops_backend == "mmcv"
    assert back.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is False


def test_torchvision_backend_refuses_max_pooling_roi_align():
    cfg = _model_cfg()
    cfg.model.roi_head.bbox_roi_extractor.roi_layer.pool_mode = "max"
    with pytest.raises(ConfigError, match="pool_mode='max'"):
        rewrite.apply_ops_backend(cfg, "torchvision")
    assert rewrite.apply_ops_backend(cfg, "mmcv").ops_backend == "mmcv"


def test_the_real_configs_roi_layers_get_the_switch():
    cfg = rewrite.apply_ops_backend(load_config(str(X101_PISA_CONFIG), {}, {}), "torchvision")
    assert cfg.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is True


# ---- RoIAlign: mmcv's kernel against torchvision's -------------------------------------------

def _random_rois(generator, count, batch, size):
    xy = torch.rand(count, 2, generator=generator) * size * 0.8
    wh = torch.rand(count, 2, generator=generator) * size * 0.5
    index = torch.randint(0, batch, (count, 1), generator=generator).float()
    return torch.cat([index, xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_forward_and_gradients_match(aligned, sampling_ratio):
    generator = torch.Generator().manual_seed(7 + sampling_ratio + aligned)
    features = torch.randn(2, 3, 24, 20, generator=generator, dtype=torch.float64).float()
    rois = _random_rois(generator, 30, batch=2, size=80)
    # Edge cases: a zero-area box, a box partly outside the image, a box entirely outside.
    rois = torch.cat([rois, torch.tensor([[0, 10.0, 10.0, 10.0, 10.0], [1, -8.0, -4.0, 30.0, 20.0],
                                          [0, 200.0, 200.0, 240.0, 260.0]])])
    grad_out = torch.randn(rois.shape[0], 3, 7, 7, generator=generator)
    results = {}
    for use_torchvision in (False, True):
        layer = RoIAlign(7, spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned,
                         use_torchvision=use_torchvision)
        x = features.clone().requires_grad_(True)
        out = layer(x, rois)
        (out * grad_out).sum().backward()
        results[use_torchvision] = (out.detach(), x.grad)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-5, atol=1e-5)
    assert results[False][0].abs().sum() > 0  # the comparison compares something


def test_roi_align_without_rois():
    features = torch.randn(1, 2, 8, 8)
    for use_torchvision in (False, True):
        out = RoIAlign(7, 1.0, 0, use_torchvision=use_torchvision)(features, torch.zeros(0, 5))
        assert out.shape == (0, 2, 7, 7)


def test_mmcv_finds_torchvision_roi_align_aligned_argument():
    """mmcv 2.1.0's RoIAlign(use_torchvision=True) passes ``aligned`` only if it finds the
    name in torchvision.ops.roi_align.__code__.co_varnames; otherwise it silently drops it
    (aligned=False results). If this fails, ops_backend must wrap torchvision's roi_align."""
    mmcv_roi_align = importlib.import_module("mmcv.ops.roi_align")  # mmcv.ops.roi_align is also a function

    assert "tv_roi_align.__code__.co_varnames" in inspect.getsource(mmcv_roi_align.RoIAlign.forward)
    assert "aligned" in tv_roi_align.__code__.co_varnames


# ---- NMS: mmcv's kernel against torchvision's ------------------------------------------------

@pytest.fixture
def torchvision_nms():
    """Run the test body with a switch between mmcv's and torchvision's NMS kernels; restore after."""
    yield use_torchvision_nms
    use_torchvision_nms(False)
    assert not torchvision_nms_in_use()


def _both_nms(switch, fn):
    switch(False)
    from_mmcv = fn()
    switch(True)
    assert torchvision_nms_in_use()
    from_torchvision = fn()
    switch(False)
    return from_mmcv, from_torchvision


def _random_boxes(generator, count, size=100.0):
    xy = torch.rand(count, 2, generator=generator) * size
    wh = torch.rand(count, 2, generator=generator) * size / 3
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.7])
@pytest.mark.parametrize("offset", [0, 1])
def test_nms_keeps_the_same_boxes(torchvision_nms, seed, iou_threshold, offset):
    generator = torch.Generator().manual_seed(seed)
    boxes = _random_boxes(generator, 300)
    scores = torch.rand(300, generator=generator)
    (dets_mmcv, keep_mmcv), (dets_tv, keep_tv) = _both_nms(
        torchvision_nms, lambda: nms(boxes, scores, iou_threshold, offset=offset))
    assert 1 < len(keep_mmcv) < 300
    assert keep_tv.tolist() == keep_mmcv.tolist()
    torch.testing.assert_close(dets_tv, dets_mmcv)


def test_nms_edge_cases(torchvision_nms):
    cases = {
        "empty": (torch.zeros(0, 4), torch.zeros(0)),
        "zero-area boxes": (torch.tensor([[5.0, 5, 5, 5], [5.0, 5, 5, 5], [0.0, 0, 10, 0], [1.0, 1, 4, 4]]),
                            torch.tensor([0.9, 0.8, 0.7, 0.6])),
        "tied scores": (torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [50.0, 50, 60, 60], [0.0, 0, 10, 10],
                                      [51.0, 50, 61, 60]]), torch.full((5,), 0.5)),
        "identical boxes": (torch.tensor([[0.0, 0, 10, 10]] * 4), torch.tensor([0.1, 0.4, 0.3, 0.2])),
    }
    for name, (boxes, scores) in cases.items():
        (_, keep_mmcv), (_, keep_tv) = _both_nms(torchvision_nms, lambda: nms(boxes, scores, 0.5))
        assert keep_tv.tolist() == keep_mmcv.tolist(), name
        assert keep_tv.dtype == keep_mmcv.dtype, name
    # Identical boxes keep exactly the best one; tied scores keep one box per cluster.
    assert _both_nms(torchvision_nms, lambda: nms(*cases["identical boxes"], 0.5))[1][1].tolist() == [1]
    assert len(_both_nms(torchvision_nms, lambda: nms(*cases["tied scores"], 0.5))[1][1]) == 2

    generator = torch.Generator().manual_seed(5)
    boxes = _random_boxes(generator, 200)
    scores = torch.rand(200, generator=generator)
    labels = torch.randint(0, 4, (200,), generator=generator)
    for cfg in (dict(type="nms", iou_threshold=0.5), dict(type="nms", iou_threshold=0.5, split_thr=10),
                dict(type="nms", iou_threshold=0.6, score_threshold=0.3, max_num=20)):
        (dets_mmcv, keep_mmcv), (dets_tv, keep_tv) = _both_nms(
            torchvision_nms, lambda: batched_nms(boxes, scores, labels, dict(cfg)))
        assert keep_tv.tolist() == keep_mmcv.tolist(), cfg
        torch.testing.assert_close(dets_tv, dets_mmcv)


def test_mmcv_nms_still_goes_through_ext_module_nms(torchvision_nms, monkeypatch):
    """ops_backend swaps mmcv.ops.nms.ext_module (mmcv 2.1.0's NMSop.forward calls
    ext_module.nms). If mmcv calls its kernel another way, this fails: the swap would do nothing."""
    mmcv_nms = importlib.import_module("mmcv.ops.nms")

    calls = []
    real = NmsKernelOnTorchvision.nms
    monkeypatch.setattr(NmsKernelOnTorchvision, "nms",
                        staticmethod(lambda *a, **k: calls.append(1) or real(*a, **k)))
    torchvision_nms(True)
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10]])
    nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    assert calls == [1]
    assert "ext_module.nms(" in inspect.getsource(mmcv_nms.NMSop.forward)
    # The other kernels stay mmcv's: PISA's nms_match works through the stand-in.

    groups = nms_match(torch.tensor([[0.0, 0, 10, 10, 0.9], [1.0, 1, 10, 10, 0.8], [50.0, 50, 60, 60, 0.7]]), 0.5)
    assert [g.tolist() for g in groups] == [[0, 1], [2]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torchvision_kernels_run_on_cuda_tensors(torchvision_nms):
    torchvision_nms(True)
    boxes = _random_boxes(torch.Generator().manual_seed(0), 100).cuda()
    scores = torch.rand(100, device="cuda")
    _, keep = nms(boxes, scores, 0.5)
    assert keep.is_cuda
    out = RoIAlign(7, 0.25, 0, use_torchvision=True)(torch.randn(1, 4, 32, 32, device="cuda"),
                                                    torch.tensor([[0, 1.0, 1, 60, 60]], device="cuda"))
    assert out.shape == (1, 4, 7, 7)


@pytest.mark.slow
def test_training_with_torchvision_kernels_on_cpu(tmp_path):
    work_dir = tmp_path / "work"
    result = run_command("train", tiny_demo(work_dir, 2, "--ops-backend", "torchvision"), cwd=tmp_path, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "RoIAlign and NMS kernels: torchvision" in log
    assert "Iter(train) [2/2]" in log and (work_dir / "iter_2.pth").is_file()
    saved = (work_dir / DEMO_CONFIG.name).read_text()  # the config MMEngine ran, as it saved it
    assert "use_torchvision=True" in saved and "ops_backend = 'torchvision'" in saved


def test_pisa_train_and_pisa_eval_hand_the_backend_to_the_config(tmp_path):
    compiled_cpu = kernels_for({"cpu"})
    lite = MmcvKernels(frozenset(), MMCV_LITE)
    checkpoint = tmp_path / "w.pth"
    checkpoint.write_bytes(b"")
    for module, build, argv in ((train, build_train_config, [str(DEMO_CONFIG)]),
                                (evaluate, build_test_config, [str(DEMO_CONFIG), str(checkpoint)])):
        args = module.parse_request([*argv, "--ops-backend", "torchvision"])
        for kernels in (compiled_cpu, lite):
            cfg, _ = build(args, "cpu", kernels)
            assert cfg.ops_backend == "torchvision", module.__name__
            assert cfg.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is True
        # auto on the CPU with compiled mmcv, which has CPU kernels in every build: the config's own choice
        # stands (the demo config asks for torchvision's RoIAlign; the X101 config for mmcv's).
        default, _ = build(module.parse_request(argv), "cpu", compiled_cpu)
        assert "ops_backend" not in default
        assert default.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is True
        forced, _ = build(module.parse_request([*argv, "--ops-backend", "mmcv"]), "cpu", compiled_cpu)
        assert forced.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision is False
        # With mmcv-lite, auto is torchvision's kernels everywhere, and mmcv's cannot be asked for.
        default, _ = build(module.parse_request(argv), "cpu", lite)
        assert default.ops_backend == "torchvision"
        with pytest.raises(EnvironmentProblem, match="this environment has mmcv-lite"):
            build(module.parse_request([*argv, "--ops-backend", "mmcv"]), "cpu", lite)


@pytest.mark.parametrize("requested, device, kernels, expected", [
    ("auto", "cpu", {"cpu"}, None),
    ("auto", "cuda", {"cpu"}, "torchvision"),
    ("auto", "cuda", {"cpu", "cuda"}, None),
    ("mmcv", "cpu", {"cpu"}, "mmcv"),
    ("torchvision", "cpu", {"cpu"}, "torchvision"),
])
def test_auto_leaves_the_configs_own_choice_where_mmcv_has_kernels(requested, device, kernels, expected):
    assert rewrite.backend_to_apply(requested, device, kernels_for(kernels)) == expected
