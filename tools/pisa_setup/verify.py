"""The check at the end of a set-up: mmcv's ops run in the new venv (pisa-train's kernels from torchvision and
torch with mmcv-lite; compiled mmcv's own, on the GPU too where it has CUDA ops), mmdet imports, and
``pip check`` reports nothing it does not expect."""
from __future__ import annotations

import re
import subprocess

from .context import SetupContext, say
from .messages import SetupFailed

# pip messages that pip check may print and that we accept, with the reason in
# docs/getting_started.md ("Environment notes"). Anything else fails the set-up.
# With --mmcv compiled, mmcv replaces the mmcv-lite that pisa-train's package requires: the same
# Python code, plus the compiled ops.
# A venv set up before mmcv-lite became the default holds openmim without its opendatalab (installed so,
# as openxlab downgraded setuptools); pisa-train no longer installs openmim, and leaves it be.
OLD_OPENMIM = re.compile(r"^openmim [\d.]+ requires opendatalab, which is not installed\.$")
ACCEPTED_PIP_CHECK_LINES = {
    "lite": (OLD_OPENMIM,),
    "compiled": (OLD_OPENMIM, re.compile(r"^pisa-train [\d.]+ requires mmcv-lite, which is not installed\.$")),
}

# Run in the new venv, after `import pisa_train` (which provides mmcv._ext where mmcv has none): the kernels
# mmcv-lite's ops get from torchvision and torch run, forward and backward, and give the known answers.
CHECK_KERNELS_WITHOUT_COMPILED_MMCV = (
    "import json, torch, pisa_train, mmcv, mmdet, mmengine\n"
    "from mmcv.ops import batched_nms, nms, nms_match, roi_align\n"
    "from pisa_train.engine.patches.mmcv_ext_from_torchvision import mmcv_ext_is_compiled\n"
    "assert not mmcv_ext_is_compiled()\n"
    "boxes, scores = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]]), "
    "torch.tensor([0.9, 0.8, 0.7])\n"
    "assert nms(boxes, scores, 0.5)[1].tolist() == [0, 2]\n"
    "assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), dict(iou_threshold=0.5))[1].tolist() == [0, 1, 2]\n"
    "assert [g.tolist() for g in nms_match(torch.cat([boxes, scores[:, None]], 1), 0.5)] == [[0, 1], [2]]\n"
    "features = torch.ones(1, 1, 8, 8, requires_grad=True)\n"
    "out = roi_align(features, torch.tensor([[0., 0., 0., 4., 4.]]), (2, 2), 1.0, 2)\n"
    "out.sum().backward()\n"
    "assert out.shape == (1, 1, 2, 2) and torch.allclose(out, torch.ones(1)), out\n"
    "assert abs(features.grad.sum().item() - 4.0) < 1e-5, features.grad.sum()\n"
    "print(json.dumps({'torch': torch.__version__, 'mmcv': mmcv.__version__ + ' (mmcv-lite)', "
    "'mmdet': mmdet.__version__, 'mmengine': mmengine.__version__, 'mmcv_kernels': 'torchvision and torch', "
    "'mmcv_cuda_ops': False, 'gpu': torch.cuda.is_available(), 'cuda_ops_checked_on_gpu': False}))")


def verify_environment(ctx: SetupContext, mmcv: str) -> dict:
    if mmcv == "lite":
        say("checking that mmcv-lite's RoIAlign (forward, backward), NMS, batched_nms and nms_match run on "
            "torchvision's and torch's kernels, and that mmdet imports")
        report = ctx.venv_python_json(CHECK_KERNELS_WITHOUT_COMPILED_MMCV)
    else:
        report = verify_compiled_mmcv(ctx)
    check = subprocess.run([str(ctx.venv_python), "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in check.stdout.splitlines()
                if line.strip() and not line.startswith("No broken requirements")
                and not any(p.match(line) for p in ACCEPTED_PIP_CHECK_LINES[mmcv])]
    if problems:
        raise SetupFailed("pip check found inconsistencies:\n  " + "\n  ".join(problems))
    say("pip check: consistent" + (" (compiled mmcv stands in for the mmcv-lite pisa-train requires)"
                                   if mmcv == "compiled" else ""))
    return report


def verify_compiled_mmcv(ctx: SetupContext) -> dict:
    say("checking that mmcv's compiled ops run (on the GPU too, when it has CUDA ops and one is visible) "
        "and that mmdet imports")
    return ctx.venv_python_json(
        "import json, torch, mmcv, mmdet, mmengine\n"
        "from mmcv.ops import nms, roi_align\n"
        "boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])\n"
        "keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)[1].tolist()\n"
        "assert keep == [0, 2], keep\n"
        "out = roi_align(torch.ones(1, 1, 8, 8), torch.tensor([[0., 0., 0., 4., 4.]]), (2, 2), 1.0, 0)\n"
        "assert out.shape == (1, 1, 2, 2)\n"
        "from mmcv.utils import ext_loader\n"
        "ext = ext_loader.load_ext('_ext', ['get_compiler_version'])\n"
        "cuda_ops = hasattr(ext, 'get_compiling_cuda_version') and mmcv.ops.get_compiling_cuda_version() != 'not available'\n"
        "gpu = torch.cuda.is_available()\n"
        "if cuda_ops and gpu:  # the CUDA kernels run on the GPU and agree with the CPU ones\n"
        "    gpu_keep = nms(boxes.cuda(), torch.tensor([0.9, 0.8, 0.7]).cuda(), 0.5)[1].tolist()\n"
        "    assert gpu_keep == keep, gpu_keep\n"
        "    feats, rois = torch.rand(1, 2, 16, 16), torch.tensor([[0., 1., 2., 9., 12.]])\n"
        "    gpu_out = roi_align(feats.cuda(), rois.cuda(), (3, 3), 1.0, 2).cpu()\n"
        "    assert torch.allclose(gpu_out, roi_align(feats, rois, (3, 3), 1.0, 2), atol=1e-5)\n"
        "print(json.dumps({'torch': torch.__version__, 'mmcv': mmcv.__version__, 'mmdet': mmdet.__version__,\n"
        "  'mmengine': mmengine.__version__, 'mmcv_cuda_ops': bool(cuda_ops), 'gpu': gpu,\n"
        "  'cuda_ops_checked_on_gpu': bool(cuda_ops and gpu)}))")
