#!/usr/bin/env bash
# MMDetection habit: tools/dist_train.sh CONFIG GPUS [pisa-train options]
# Starts GPUS training processes on this machine with torchrun (torch's elastic launcher);
# each runs pisa-train with --launcher pytorch. Several machines: set NNODES, NODE_RANK,
# MASTER_ADDR (and PORT) on each, as for MMDetection's script.
# (pisa-train CONFIG --nproc GPUS [--nnodes ... --node-rank ... --master-addr ... --master-port ...]
# does the same without this script.)
set -euo pipefail
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}

PYTHONPATH="$REPO:${PYTHONPATH:-}" exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node-rank="$NODE_RANK" --master-addr="$MASTER_ADDR" \
    --nproc-per-node="$GPUS" --master-port="$PORT" \
    --module pisa_train.cli.train "$CONFIG" --launcher pytorch "${@:3}"
