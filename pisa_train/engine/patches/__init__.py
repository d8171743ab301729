"""Every change pisa-train makes to the behaviour of mmengine, mmdet, mmcv or torch, one module each.

Each module says at its top which upstream version and code it changes, why
(with the upstream issue where there is one), and which test fails if upstream
changes that behaviour (the ``test_upstream_*`` / ``test_mmcv_*`` guard tests):

* checkpoint_loading.py: mmengine's loader of local checkpoints replaced by pisa-train's reader,
  engine/checkpoint_files.py (weights-only, with an allowlist of what mmengine's training checkpoints
  hold; mmengine 0.10.7, open-mmlab/mmengine#1655).
* checkpoint_downloads.py: checkpoints named by URL, open-mmlab://, torchvision:// or mmcls://
  fetched through pisa-train's verified, mirrored resolver and read by engine/checkpoint_files.py (mmengine 0.10.7
  loads them with torch.hub, which unpickles in full; download.openmmlab.com is gone).
* mmcv_ext_from_torchvision.py: ``mmcv._ext``, mmcv's compiled kernels, answered by torchvision's and
  torch's (engine/torch_kernels.py) when mmcv has none (mmcv-lite, the default set-up).
* torchvision_nms.py: mmcv's NMS kernel answered by torchvision's (``--ops-backend``).
* distributed_on_cpu.py: ``--launcher pytorch|slurm|mpi`` on CPUs with gloo.
* skip_nonfinite_updates.py: ``nonfinite_loss='skip'`` drops the optimizer step.
* amp_on_cpu.py: mmengine's AmpOptimWrapper on a machine without a GPU (``--amp`` on the CPU).
* mmcv_ops_in_float32.py: mmcv's RoIAlign and NMS kernels in float32 under autocast.
* batched_nms_dtypes.py: mmcv's batched_nms on mixed float32/float16 boxes and scores
  (open-mmlab/mmdetection#9727, the port of mmcv PR #3332).
* dataloader_worker_signals.py: dataloader workers that ignore SIGTERM and SIGINT, which a scheduler
  or a terminal sends to the whole process group, so that training can stop cleanly and save.
* mmdet_core_export.py: the ``mmdet.core.export`` module mmdet 3.3's box coders import while a model is
  exported to ONNX (it went with mmdet 2.x), for pisa-export (engine/onnx_export.py).
* multiclass_nms_for_onnxruntime.py: mmdet's ``multiclass_nms`` keeps its score threshold while exporting
  (upstream drops it for TensorRT), swapped in only while pisa-export traces a model.
* rebinding.py: not a patch, the way batched_nms_dtypes.py, mmcv_ops_in_float32.py and
  dataloader_worker_signals.py replace a function where mmdet looks it up.

Not here: hooks/atomic_checkpoint.py overrides a private method of mmengine's
CheckpointHook, but in a subclass that only configs naming it use (its guard test
is tests/test_checkpoint_saving.py::test_upstream_deletes_the_oldest_checkpoint_first_and_writes_in_place).

engine/runner.py's ``install_into_mmengine`` applies them, side by side, before it builds
a Runner, and nothing else does; nothing here is applied by importing it. They do not
import each other (an import-linter contract in pyproject.toml): what two of them share
sits below them, engine/checkpoint_files.py and engine/patch_state.py (what they remember
of this process, with the ``reset()`` tests call). The one exception is mmcv_ext_from_torchvision.py, which
``pisa_train/__init__.py`` installs: mmdet imports ``mmcv.ops`` as it is imported,
long before a runner exists.
"""
