#!/usr/bin/env bash
# MMDetection habit: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [pisa-train options]
# Starts one pisa-train process per GPU through srun (--launcher slurm: pisa-train and mmengine
# read SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the node list). GPUS (default 8, the number
# of processes), GPUS_PER_NODE (8), CPUS_PER_TASK (5) and SRUN_ARGS as in MMDetection's script.
# CPU nodes: GPUS_PER_NODE=0 asks for no GPU, and TASKS_PER_NODE (default GPUS_PER_NODE) sets the
# processes per node; they train on the CPU with gloo.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
TASKS_PER_NODE=${TASKS_PER_NODE:-$GPUS_PER_NODE}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}
GRES_ARGS=()
if [ "$GPUS_PER_NODE" -gt 0 ]; then
    GRES_ARGS=(--gres=gpu:"$GPUS_PER_NODE")
fi

# shellcheck disable=SC2086  # SRUN_ARGS is a list of srun options on purpose
PYTHONPATH="$REPO:${PYTHONPATH:-}" exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    ${GRES_ARGS[@]+"${GRES_ARGS[@]}"} \
    --ntasks="$GPUS" \
    --ntasks-per-node="$TASKS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u -m pisa_train.cli.train "$CONFIG" --work-dir="$WORK_DIR" --launcher slurm "${@:5}"
