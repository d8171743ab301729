#!/usr/bin/env bash
# Every GPU check and benchmark in one command, with the set-up's .venv (README, "GPU check");
# tools/gpu_check.py says what it runs. --plan shows the steps without running them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "gpu_check: error: .venv/ is not set up; run make setup (or tools/setup_env.py --offline DIR --use-system-torch) first" >&2
    exit 2
fi
exec .venv/bin/python tools/gpu_check.py "$@"
