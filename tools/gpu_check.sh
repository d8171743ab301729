#!/usr/bin/env bash
# Every GPU check and benchmark in one command, with the set-up's .venv (docs/getting_started.md, "GPU check"): about
# 6 minutes of one H100-class GPU, nothing compiled. tools/gpu_check.py says what it runs and how to
# carry the set-up to a GPU machine without network; --plan shows the steps without running them,
# --with-compiled-mmcv WHEEL adds the check of compiled mmcv's CUDA kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "gpu_check: error: .venv/ is not set up; run make setup (or tools/setup_env.py --offline DIR --use-system-torch) first" >&2
    exit 2
fi
exec .venv/bin/python tools/gpu_check.py "$@"
