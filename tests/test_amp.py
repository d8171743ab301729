"""--amp: mixed precision training (bfloat16 autocast on the CPU, float16 or bfloat16 on a GPU) and
inference (pisa-eval, pisa-infer), and the three patches it needs, each with a guard test that
fails when upstream changes: engine/patches/amp_on_cpu.py (mmengine's AmpOptimWrapper refuses the
CPU), mmcv_ops_in_float32.py (mmcv's kernels take no bfloat16) and batched_nms_dtypes.py (mmcv's
batched_nms clash on mixed dtypes, open-mmlab/mmdetection#9727, mmcv PR #3332)."""
from __future__ import annotations

import importlib
import inspect
import json
import re
import textwrap

import mmcv.ops
import mmdet.models.dense_heads.base_dense_head
import mmdet.models.dense_heads.rpn_head
import mmdet.models.layers.bbox_nms
import numpy as np
import pytest
import torch
from conftest import DEMO_CONFIG, X101_PISA_CONFIG, run_command
from mmdet.registry import MODELS
from mmengine.optim import AmpOptimWrapper
from mmengine.registry import init_default_scope
from test_end_to_end import x101_on_shapes
from tiny_training import DATA_OPTIONS, MODEL_OPTIONS, TEST_OPTIONS, tiny_demo, tiny_eval

from pisa_train import exit_codes
from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import infer as infer_cli
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_infer_config, build_test_config, build_train_config
from pisa_train.config.loading import load_config
from pisa_train.engine import torch_kernels
from pisa_train.engine.device import choose_amp_dtype
from pisa_train.engine.patches.amp_on_cpu import allow_amp_optim_wrapper_on_cpu
from pisa_train.engine.patches.batched_nms_dtypes import fix_batched_nms_dtype_clash
from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled
from pisa_train.engine.patches.mmcv_ops_in_float32 import run_mmcv_ops_in_float32_under_autocast
from pisa_train.engine.patches.rebinding import upstream_of
from pisa_train.engine.runner import describe_precision, describe_run

# mmcv's kernels here: compiled mmcv's, or with mmcv-lite (the default set-up) pisa-train's
# (engine/torch_kernels.py), which has no soft-NMS and runs NMS on torchvision's CPU kernel.
COMPILED_MMCV = mmcv_ext_is_compiled()

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="upstream's refusal is of machines without a GPU")


def train_config(*argv, device="cpu"):
    return build_train_config(train_cli.parse_request([str(a) for a in argv]), device).cfg


# ---- the dtype, the configs, the description (no model runs) ----------------------------------

@pytest.mark.parametrize("requested, device, expected", [
    (None, "cpu", "bfloat16"), (None, "cuda", "float16"), ("bfloat16", "cuda", "bfloat16"),
    ("float16", "cuda", "float16"), ("bfloat16", "cpu", "bfloat16")])
def test_amp_dtype_is_float16_on_a_gpu_and_bfloat16_on_the_cpu_unless_asked(requested, device, expected):
    assert choose_amp_dtype(requested, device) == expected


def test_amp_trains_with_mmengines_amp_optim_wrapper_scaling_float16_only():
    cpu = train_config(X101_PISA_CONFIG, "--amp", device="cpu").optim_wrapper
    assert (cpu.type, cpu.dtype, cpu.loss_scale) == ("AmpOptimWrapper", "bfloat16", dict(enabled=False))
    gpu = train_config(X101_PISA_CONFIG, "--amp", device="cuda").optim_wrapper
    assert (gpu.type, gpu.dtype, gpu.loss_scale) == ("AmpOptimWrapper", "float16", "dynamic")  # mmdet's --amp
    gpu_bf16 = train_config(X101_PISA_CONFIG, "--amp", "--amp-dtype", "bfloat16", device="cuda").optim_wrapper
    assert (gpu_bf16.dtype, gpu_bf16.loss_scale) == ("bfloat16", dict(enabled=False))
    assert gpu.optimizer == train_config(X101_PISA_CONFIG).optim_wrapper.optimizer  # the optimizer stays
    assert train_config(X101_PISA_CONFIG).optim_wrapper.type == "OptimWrapper"


def test_amp_on_eval_and_infer_runs_the_model_under_autocast(tmp_path):
    checkpoint = tmp_path / "iter_1.pth"
    checkpoint.write_bytes(b"not read here")

    def hooks(cli, build, *argv, device="cpu"):
        cfg = build(cli.parse_request([str(DEMO_CONFIG), str(checkpoint), *argv]), device).cfg
        return [hook for hook in cfg.get("custom_hooks") or [] if hook["type"] == "AutocastTestHook"]

    assert hooks(eval_cli, build_test_config, "--amp") == [dict(type="AutocastTestHook", dtype="bfloat16")]
    assert hooks(eval_cli, build_test_config, "--amp", device="cuda") == [
        dict(type="AutocastTestHook", dtype="float16")]
    assert hooks(infer_cli, build_infer_config, "images/", "--out", "o", "--amp", "--amp-dtype", "bfloat16",
                 device="cuda") == [dict(type="AutocastTestHook", dtype="bfloat16")]
    assert hooks(eval_cli, build_test_config) == []
    assert hooks(infer_cli, build_infer_config, "images/", "--out", "o") == []


@pytest.mark.parametrize("main, argv, line", [
    (train_cli.main, [str(X101_PISA_CONFIG), "--amp", "--amp-dtype", "float16"],
     "pisa-train: error: --amp-dtype float16 is for GPUs: on the CPU, mmengine 0.10.7 autocasts to bfloat16 only "
     "and torch's float16 convolutions there are many times slower; use --amp alone (bfloat16 on the CPU), or "
     "--device cuda"),
    (train_cli.main, [str(X101_PISA_CONFIG), "--amp-dtype", "bfloat16"],
     "pisa-train: error: --amp-dtype bfloat16 is the precision of --amp; add --amp"),
    (eval_cli.main, [str(DEMO_CONFIG), "CHECKPOINT", "--amp", "--amp-dtype", "float16"],
     "pisa-eval: error: --amp-dtype float16 is for GPUs: on the CPU, mmengine 0.10.7 autocasts to bfloat16 only "
     "and torch's float16 convolutions there are many times slower; use --amp alone (bfloat16 on the CPU), or "
     "--device cuda"),
    (infer_cli.main, [str(DEMO_CONFIG), "CHECKPOINT", "images/", "--out", "o", "--amp-dtype", "float16"],
     "pisa-infer: error: --amp-dtype float16 is the precision of --amp; add --amp"),
])
def test_a_precision_the_machine_cannot_run_well_is_one_line_and_exit_2(main, argv, line, tmp_path, capsys):
    checkpoint = tmp_path / "c.pth"
    checkpoint.write_bytes(b"not read here")
    argv = [str(checkpoint) if arg == "CHECKPOINT" else arg for arg in argv]
    assert main([*argv, "--device", "cpu"]) == exit_codes.USAGE_ERROR
    assert capsys.readouterr().err.splitlines() == [line]


def test_the_run_description_says_which_precision():
    assert "precision: mixed, bfloat16 autocast (AmpOptimWrapper, no loss scaling); mmcv's RoIAlign and NMS " \
           "kernels in float32" in describe_run(train_config(X101_PISA_CONFIG, "--amp"), "cpu")
    assert describe_precision(train_config(X101_PISA_CONFIG, "--amp", device="cuda")) == (
        "precision: mixed, float16 autocast (AmpOptimWrapper, dynamic loss scale); mmcv's RoIAlign and NMS "
        "kernels in float32")
    assert "precision: float32" in describe_run(train_config(X101_PISA_CONFIG), "cpu")


# ---- mmengine's AmpOptimWrapper on the CPU (engine/patches/amp_on_cpu.py) --------------------

def _upstream_amp_init():
    init = AmpOptimWrapper.__init__
    return init.__wrapped__ if getattr(init, "_pisa_train_replacement", False) else init


@no_gpu
def test_upstream_amp_optim_wrapper_refuses_the_cpu():
    """mmengine 0.10.7 asserts an accelerator; when this fails, amp_on_cpu.py can go."""

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(AssertionError, match="is only available training on gpu, npu, mlu or musa"):
        _upstream_amp_init()(AmpOptimWrapper.__new__(AmpOptimWrapper), optimizer=optimizer, dtype="bfloat16")


@no_gpu
def test_amp_optim_wrapper_trains_in_bfloat16_on_the_cpu_without_loss_scaling():
    allow_amp_optim_wrapper_on_cpu()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    wrapper = AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.5), dtype="bfloat16",
                              loss_scale=dict(enabled=False))
    with wrapper.optim_context(model):
        output = model(torch.randn(8, 4))
    assert output.dtype == torch.bfloat16  # mmengine's autocast on the CPU
    loss = output.float().pow(2).mean()
    assert wrapper.loss_scaler.scale(loss) is loss  # nothing scaled
    before = model.weight.detach().clone()
    wrapper.backward(loss)
    gradient = model.weight.grad.clone()
    wrapper.step()
    torch.testing.assert_close(model.weight.detach(), before - 0.5 * gradient)  # a plain SGD step
    assert wrapper.state_dict()["loss_scaler"] == {}


# ---- mmcv's kernels in float32 under autocast (engine/patches/mmcv_ops_in_float32.py) ---------

def _boxes(count, size=100.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=generator) * size
    wh = torch.rand(count, 2, generator=generator) * size / 4 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(count, generator=generator)


def _bfloat16_values(*tensors):
    """The tensors rounded to bfloat16, in float32 (the same numbers a float32 run then sees)."""
    return [tensor.bfloat16().float() for tensor in tensors]


def _roi_align_inputs():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 8, 20, 24, generator=generator)
    boxes, _ = _boxes(40, size=80.0, seed=4)
    batch = torch.randint(0, 2, (40, 1), generator=generator).float()
    return _bfloat16_values(features, torch.cat([batch, boxes], dim=1))


def _mmcv_ops():
    return {name: vars(importlib.import_module(module))[name]
            for module, name in (("mmcv.ops.roi_align", "roi_align"), ("mmcv.ops.nms", "nms"),
                                 ("mmcv.ops.nms", "soft_nms"), ("mmcv.ops.nms", "nms_match"))}


def _run_ops(ops, dtype):
    """Each op on the same numbers, given to it in ``dtype`` (as autocast hands them over)."""
    features, rois = _roi_align_inputs()
    boxes, scores = _bfloat16_values(*_boxes(300))
    features = features.to(dtype).requires_grad_(True)
    pooled = ops["roi_align"](features, rois.to(dtype), (7, 7), 0.25, 0, "avg", True)
    pooled.float().pow(2).sum().backward()
    dets, keep = ops["nms"](boxes.to(dtype), scores.to(dtype), 0.5)
    soft_dets, soft_keep = (ops["soft_nms"](boxes.to(dtype), scores.to(dtype), 0.3, min_score=0.05)
                            if COMPILED_MMCV else (None, None))
    groups = ops["nms_match"](torch.cat([boxes, scores[:, None]], dim=1).to(dtype), 0.5)
    return dict(pooled=pooled, grad=features.grad, dets=dets, keep=keep, soft_dets=soft_dets, soft_keep=soft_keep,
                groups=groups)


@pytest.mark.compiled_mmcv
def test_upstream_mmcv_kernels_refuse_bfloat16():
    """mmcv 2.1.0's CPU kernels take no bfloat16; when this fails, mmcv_ops_in_float32.py may go (for
    compiled mmcv; with mmcv-lite see the next test)."""
    features, rois = _roi_align_inputs()
    boxes, scores = _boxes(30)
    calls = {
        "roi_align": lambda: upstream_of("mmcv.ops.roi_align", "roi_align")(
            features.bfloat16(), rois.bfloat16(), (7, 7), 0.25, 0, "avg", True),
        "nms": lambda: upstream_of("mmcv.ops.nms", "nms")(boxes.bfloat16(), scores.bfloat16(), 0.5),
        "soft_nms": lambda: upstream_of("mmcv.ops.nms", "soft_nms")(boxes.bfloat16(), scores.bfloat16(), 0.3),
        "nms_match": lambda: upstream_of("mmcv.ops.nms", "nms_match")(
            torch.cat([boxes, scores[:, None]], dim=1).bfloat16(), 0.5)}
    refused = {}
    for name, call in calls.items():
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError) as error:
            call()
        refused[name] = str(error.value)
    assert "not implemented for 'BFloat16'" in refused["roi_align"]
    assert all("expected scalar type Float but found BFloat16" in refused[name]
               for name in ("nms", "soft_nms", "nms_match")), refused


def test_upstream_torchvision_cpu_nms_refuses_half_precision():
    """With mmcv-lite, mmcv's NMS kernels are torchvision's (engine/torch_kernels.py), whose CPU kernel takes no
    bfloat16 or float16 either: mmcv_ops_in_float32.py stays needed. When this fails, torchvision takes them."""

    boxes, scores = _boxes(30)
    for dtype, name in ((torch.bfloat16, "BFloat16"), (torch.float16, "Half")):
        with pytest.raises(RuntimeError, match=f"not implemented for '{name}'"):
            torch_kernels.nms(boxes.to(dtype), scores.to(dtype), 0.5)


def test_mmcv_ops_under_autocast_match_float32():
    run_mmcv_ops_in_float32_under_autocast()
    reference = _run_ops(_mmcv_ops(), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = _run_ops(_mmcv_ops(), torch.bfloat16)
    assert mixed["pooled"].dtype == mixed["grad"].dtype == torch.bfloat16  # as the inputs, for mmdet's buffers
    torch.testing.assert_close(mixed["pooled"].float(), reference["pooled"], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(mixed["grad"].float(), reference["grad"], rtol=1e-2, atol=1e-2)
    assert reference["pooled"].abs().sum() > 0 and reference["grad"].abs().sum() > 0
    assert torch.equal(mixed["keep"], reference["keep"]) and 0 < len(reference["keep"]) < 300
    torch.testing.assert_close(mixed["dets"].float(), reference["dets"])  # the same numbers, kept
    if COMPILED_MMCV:  # mmcv-lite has no soft-NMS kernel
        assert torch.equal(mixed["soft_keep"], reference["soft_keep"])
        torch.testing.assert_close(mixed["soft_dets"].float(), reference["soft_dets"], rtol=1e-2, atol=1e-2)
    assert [group.tolist() for group in mixed["groups"]] == [group.tolist() for group in reference["groups"]]
    # Without autocast they are the kernels' own: float32 in, float32 out, bfloat16 still refused.
    with pytest.raises(RuntimeError, match="BFloat16"):
        _run_ops(_mmcv_ops(), torch.bfloat16)


def test_pisa_x101_forward_under_autocast_matches_float32():
    """The X101 PISA model's features and RoI head (mmcv's RoIAlign) under bfloat16 autocast, against float32."""

    run_mmcv_ops_in_float32_under_autocast()
    cfg = load_config(str(X101_PISA_CONFIG), {"model.backbone.init_cfg": None}, {})
    init_default_scope("mmdet")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 96, 128, generator=generator)
    boxes, _ = _boxes(64, size=90.0, seed=5)
    rois = torch.cat([torch.zeros(64, 1), boxes], dim=1)
    outputs = {}
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            features = model.extract_feat(image)
            head = model.roi_head._bbox_forward(features, rois)
        outputs[autocast] = [*features, head["cls_score"], head["bbox_pred"]]
    assert outputs[True][-1].dtype == torch.bfloat16  # it did run under autocast
    for mixed, full in zip(outputs[True], outputs[False]):
        # bfloat16 keeps 8 bits of mantissa: about 1% of the largest value after 100 layers.
        assert (mixed.float() - full).abs().max() <= 0.05 * full.abs().max()


# ---- batched_nms on mixed dtypes (engine/patches/batched_nms_dtypes.py) -----------------------

SPLIT = 12_000  # more boxes than batched_nms's split_thr (10,000): the class-by-class path of the clash
NMS_CFG = dict(type="nms", iou_threshold=0.7)


def _classes(count, seed=1):
    return torch.randint(0, 5, (count,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("boxes_dtype, scores_dtype, clash", [
    # open-mmlab/mmdetection#9727 itself: float32 boxes decoded from anchors, half-precision scores.
    (torch.float32, torch.float16, "Index put requires the source and destination dtypes match, got Half for the "
                                   "destination and Float for the source"),
    (torch.float32, torch.bfloat16, "Index put requires the source and destination dtypes match, got BFloat16 for "
                                    "the destination and Float for the source"),
    # The other way round, it fails earlier, in the CPU kernel (the port passes both in float32): compiled
    # mmcv's, or with mmcv-lite torchvision's.
    (torch.float16, torch.float32, "expected scalar type Float but found Half" if COMPILED_MMCV
     else "\"nms_kernel\" not implemented for 'Half'"),
    (torch.bfloat16, torch.float32, "expected scalar type Float but found BFloat16" if COMPILED_MMCV
     else "\"nms_kernel\" not implemented for 'BFloat16'"),
])
def test_upstream_batched_nms_still_clashes_on_mixed_dtypes(boxes_dtype, scores_dtype, clash):
    """The clash reproduced on the CPU; when this fails, mmcv has PR #3332 and the patch can go."""
    boxes, scores = _boxes(SPLIT)
    with pytest.raises(RuntimeError, match=re.escape(clash)):
        upstream_of("mmcv.ops.nms", "batched_nms")(boxes.to(boxes_dtype), scores.to(scores_dtype), _classes(SPLIT),
                                                  NMS_CFG)


@pytest.mark.parametrize("boxes_dtype, scores_dtype", [
    (torch.float32, torch.float16), (torch.float32, torch.bfloat16), (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("count", [SPLIT, 500])
def test_batched_nms_on_mixed_dtypes_keeps_what_float32_keeps(boxes_dtype, scores_dtype, count):
    batched_nms = fix_batched_nms_dtype_clash()
    boxes, scores = _boxes(count)
    boxes, scores = boxes.to(boxes_dtype), scores.to(scores_dtype)
    dets, keep = batched_nms(boxes, scores, _classes(count), NMS_CFG)
    reference, reference_keep = upstream_of("mmcv.ops.nms", "batched_nms")(
        boxes.float(), scores.float(), _classes(count), NMS_CFG)
    assert dets.dtype == torch.float32  # what the two promote to
    assert torch.equal(keep, reference_keep) and 0 < len(keep) < count
    torch.testing.assert_close(dets, reference)


def _batched_nms_of_mmcv_pr_3332():
    """mmcv 2.1.0's batched_nms with PR #3332's one-line fix applied to its source."""
    mmcv_nms = importlib.import_module("mmcv.ops.nms")
    source = textwrap.dedent(inspect.getsource(upstream_of("mmcv.ops.nms", "batched_nms")))
    clashing = "scores_after_nms[mask[keep]] = dets[:, -1]\n"
    assert source.count(clashing) == 1, "mmcv's batched_nms changed: see engine/patches/batched_nms_dtypes.py"
    namespace = dict(vars(mmcv_nms))
    exec(source.replace(clashing, "scores_after_nms[mask[keep]] = dets[:, -1].to(scores_after_nms.dtype)\n"),
         namespace)
    return namespace["batched_nms"]


@pytest.mark.parametrize("scores_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("count", [SPLIT, 500])
def test_batched_nms_on_mixed_dtypes_gives_what_mmcv_pr_3332_gives(scores_dtype, count):
    boxes, scores = _boxes(count)
    ported = fix_batched_nms_dtype_clash()(boxes, scores.to(scores_dtype), _classes(count), NMS_CFG)
    fixed_upstream = _batched_nms_of_mmcv_pr_3332()(boxes, scores.to(scores_dtype), _classes(count), NMS_CFG)
    assert ported[0].dtype == fixed_upstream[0].dtype
    assert torch.equal(ported[0], fixed_upstream[0]) and torch.equal(ported[1], fixed_upstream[1])


def test_the_batched_nms_fix_is_where_mmdet_looks_it_up():
    fixed = fix_batched_nms_dtype_clash()
    assert fixed is fix_batched_nms_dtype_clash()  # installed once
    for module in (mmcv.ops, importlib.import_module("mmcv.ops.nms"), mmdet.models.dense_heads.rpn_head,
                   mmdet.models.dense_heads.base_dense_head, mmdet.models.layers.bbox_nms):
        assert vars(module)["batched_nms"] is fixed, module.__name__


# ---- real runs (slow) ---------------------------------------------------------------------------

def _is_bfloat16(values) -> np.ndarray:
    """Whether each float32 value is a bfloat16 number (its low 16 bits are zero)."""
    return (np.asarray(values, dtype=np.float32).view(np.uint32) & 0xFFFF) == 0


@pytest.mark.slow
def test_x101_pisa_trains_two_iterations_with_amp_on_the_cpu(tmp_path, shapes_dataset):
    work_dir = tmp_path / "work"
    result = run_command("train", [*x101_on_shapes(shapes_dataset), "default_hooks.logger.interval=1",
                                   "--work-dir", work_dir, "--max-iters", "2", "--amp"], cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert ("[pisa-train] precision: mixed, bfloat16 autocast (AmpOptimWrapper, no loss scaling); mmcv's RoIAlign "
            "and NMS kernels in float32") in log
    assert "dtype='bfloat16'" in (work_dir / X101_PISA_CONFIG.name).read_text()
    logged = [json.loads(line) for line in next(work_dir.glob("*/vis_data/scalars.json")).read_text().splitlines()]
    losses = [{key: value for key, value in entry.items() if key.startswith("loss")} for entry in logged]
    assert [entry["step"] for entry in logged] == [1, 2]
    assert all(len(terms) == 6 and all(np.isfinite(list(terms.values()))) for terms in losses), losses
    assert (work_dir / "iter_2.pth").is_file()


@pytest.mark.slow
def test_eval_and_infer_with_amp_run_the_model_in_bfloat16(tmp_path):
    trained = run_command("train", tiny_demo(tmp_path / "work", 1, "--amp"), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = tmp_path / "work" / "iter_1.pth"

    def evaluate(*flags) -> np.ndarray:
        work_dir = tmp_path / f"eval{'_amp' if flags else ''}"
        # --ops-backend mmcv: the demo config asks for torchvision's RoIAlign on the CPU; this runs compiled
        # mmcv's. With mmcv-lite, RoIAlign is torchvision's and NMS goes through mmcv's op to torchvision's.
        backend = ["--ops-backend", "mmcv"] if COMPILED_MMCV else []
        result = run_command("evaluate", tiny_eval(checkpoint, work_dir, *backend, *flags), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"precision: {'bfloat16 autocast (--amp)' if flags else 'float32'}" in result.stdout
        return np.array([entry["score"] for entry in json.loads(
            (work_dir / "test_detections.bbox.json").read_text())])

    float32_scores, amp_scores = evaluate(), evaluate("--amp")
    # The scores come out of a bfloat16 model: all of them bfloat16 numbers, few of a float32 run's.
    assert len(amp_scores) > 10 and _is_bfloat16(amp_scores).all()
    assert _is_bfloat16(float32_scores).mean() < 0.2
    assert "dict(dtype='bfloat16', type='AutocastTestHook')" in next(
        (tmp_path / "eval_amp").glob("*/vis_data/config.py")).read_text()

    images = tmp_path / "data" / "demo_shapes" / "val"
    result = run_command("infer", [DEMO_CONFIG, checkpoint, images, "--out", tmp_path / "drawn", "--score-thr", "0",
                                   "--device", "cpu", "--amp", "--cfg-options", *DATA_OPTIONS, *MODEL_OPTIONS,
                                   *TEST_OPTIONS, "--cfg-add", "model.backbone.base_channels=16"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision: bfloat16 autocast (--amp)" in result.stdout
    detections = json.loads((tmp_path / "drawn" / "detections.json").read_text())
    scores = [entry["score"] for image in detections["images"] for entry in image["detections"]]
    # detections.json rounds scores to 4 decimals: each is a bfloat16 number, so rounded.
    assert len(scores) > 10 and all(round(float(torch.tensor(s).bfloat16()), 4) == s for s in scores)
