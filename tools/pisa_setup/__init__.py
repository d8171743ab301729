"""Create or update ``.venv/`` with everything pisa-train needs, on a fresh machine.

``tools/setup_env.py`` runs it (``make setup``); ``python3 -m pisa_setup`` from tools/ does the same.
What it does, in order (each step is skipped when already done):

1. creates ``.venv/`` in the repository root with the Python running it (``venv.py``);
2. installs torch and torchvision (the pair named in pyproject.toml's ``[tool.pisa-train.setup]``,
   or ``TORCH_VERSION`` / ``TORCHVISION_VERSION``; ``pins.py`` reads them);
3. installs mmdet, mmengine, mmcv-lite, pycocotools, every optional extra of pyproject.toml
   (``[project.optional-dependencies]``) but those its ``extras-left-out`` names, the test
   dependencies and pisa-train itself, with the
   versions pinned in pyproject.toml, without downgrading anything. Nothing is compiled: mmcv-lite is
   mmcv's Python code, and pisa-train answers the kernels its models call with torchvision's and
   torch's (pisa_train/engine/patches/mmcv_ext_from_torchvision.py);
4. checks the result (``verify.py``): mmcv's RoIAlign, NMS and nms_match run, and ``pip check``
   reports nothing.

``--mmcv compiled`` (``make setup MMCV=compiled``) installs mmcv with its compiled ops instead of
mmcv-lite, for upstream's exact kernels (``compiled_mmcv.py``): from a cached wheel, built from mmcv's
sdist first when no wheel matches this mmcv, torch, CPU/CUDA and Python (5 to 25 minutes on 2 cores,
with a C++ compiler, and nvcc for CUDA kernels; the wheel is cached outside the repository, so the
next set-up on this machine takes minutes).

Offline install (docs/getting_started.md, "Offline install"; ``wheelhouse.py``):

    setup_env.py --wheelhouse DIR [--target-has FREEZE] [--target-python X.Y]
        writes every file the install needs except torch/torchvision into DIR, leaving out what the
        target's `pip freeze` lists;
    setup_env.py --offline DIR [--use-system-torch] [--venv DIR] [--mmcv compiled]
        installs from DIR alone (pip --no-index); --use-system-torch makes the venv see the packages
        of the Python running it, torch among them, instead of installing torch
        (--system-site-packages, or, when that Python is itself a venv, a .pth file naming its
        site-packages).

It is not a general installer: it builds the one environment this project is tested with. What one
run works on (the repository, the venv, the pins, the wheelhouse it installs from) travels as one
``SetupContext`` (``context.py``). It uses only the standard library because it runs before the
environment it builds exists.

Environment variables: TORCH_VERSION, TORCHVISION_VERSION (another torch pair),
PISA_TRAIN_CACHE (wheel and sdist cache; default ~/.cache/pisa-train), MAX_JOBS
(parallel compile jobs; default: the cores this process may use),
PISA_MMCV_CUDA=0|1 (force the CPU-only or the CUDA build of mmcv),
PISA_TRAIN_UNTESTED_PYTHON=1 (try a Python newer than 3.13).
"""
