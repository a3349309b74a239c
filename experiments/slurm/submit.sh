#!/bin/bash
# Submit one ablation to SLURM: a job array with one task per unfinished (variant, seed) cell
# (array.sbatch), then one job that builds the table once the array has ended (collect.sbatch).
# Stage-wise variants (init_from, experiments/stages.py: e.g. FCN-16s starts from FCN-32s) get
# one array per dependency level, each submitted with --dependency=afterok on the previous one.
#
#   experiments/slurm/submit.sh [--dry-run] SCRIPT [RUNNER ARGS...]
#   GPUS_PER_NODE=4 NODES=1 experiments/slurm/submit.sh experiments/aspp_ablation.py \
#       --data voc --data-root /data --precision bf16-mixed
#
# --dry-run prints the sbatch commands instead of running them. Settings (environment):
#   GPUS_PER_NODE (1)  NODES (1)  CPUS_PER_TASK (8)  TIME (24:00:00)  PARTITION  ACCOUNT
#   MAX_PARALLEL (array tasks running at once; unlimited)  JOB_NAME (seg-<script name>)
#   VARIANTS / SEEDS (space-separated subsets; default: all variants, the preset's seeds)
#   PYTHON (python)  LOG_DIR (slurm-logs)
# RUNNER ARGS are passed to every cell and to collect; they must not contain spaces inside
# one argument. Each task trains on GPUS_PER_NODE x NODES GPUs with DDP (one srun task per GPU).
set -euo pipefail

DRY_RUN=""
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi
if [[ $# -lt 1 ]]; then
    sed -n '2,17p' "$0" >&2
    exit 2
fi
SCRIPT="$1"
shift
RUNNER_ARGS="$*"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="${REPO:-$(cd "$HERE/../.." && pwd)}"
PYTHON="${PYTHON:-python}"
GPUS_PER_NODE="${GPUS_PER_NODE:-1}"
NODES="${NODES:-1}"
CPUS_PER_TASK="${CPUS_PER_TASK:-8}"
TIME="${TIME:-24:00:00}"
LOG_DIR="${LOG_DIR:-slurm-logs}"
NAME="$(basename "$SCRIPT" .py)"
JOB_NAME="${JOB_NAME:-seg-$NAME}"
case "$JOB_NAME" in
    bash|interactive)
        echo "JOB_NAME '$JOB_NAME': Lightning skips SLURM detection for this name (no requeue); choose another" >&2
        exit 2 ;;
esac

mkdir -p "$LOG_DIR"
STEM="$(cd "$LOG_DIR" && pwd)/$NAME-$(date +%Y%m%d-%H%M%S)"
SELECT=()
if [[ -n "${VARIANTS:-}" ]]; then SELECT+=(--variants $VARIANTS); fi
if [[ -n "${SEEDS:-}" ]]; then SELECT+=(--seeds $SEEDS); fi
# "LEVEL<tab>VARIANT<tab>SEED" lines, parents first; level k waits for its parent at level k-1
(cd "$REPO" && "$PYTHON" "$SCRIPT" cells --levels $RUNNER_ARGS ${SELECT[@]+"${SELECT[@]}"}) > "$STEM-levels.txt"
N="$(grep -c . "$STEM-levels.txt" || true)"
LEVELS="$(cut -f1 "$STEM-levels.txt" | sort -n -u)"
echo "# $N unfinished cell(s) of $SCRIPT listed in $STEM-levels.txt"

export SCRIPT RUNNER_ARGS PYTHON REPO SEEDS="${SEEDS:-}"
COMMON=()
if [[ -n "${PARTITION:-}" ]]; then COMMON+=(--partition="$PARTITION"); fi
if [[ -n "${ACCOUNT:-}" ]]; then COMMON+=(--account="$ACCOUNT"); fi

submit() {  # prints the command; runs it unless --dry-run; echoes the job id
    echo "sbatch $*" >&2
    if [[ -n "$DRY_RUN" ]]; then
        echo "DRYRUN_JOB_ID${LEVEL:-}"
    else
        sbatch --parsable "$@" | cut -d';' -f1
    fi
}

# One array per level: level 0 (no unfinished parent) in $STEM-cells.txt, level k in
# $STEM-cells-level<k>.txt ("VARIANT<tab>SEED" lines, what array.sbatch reads); level k starts
# when every task of level k-1 succeeded (afterok; --kill-on-invalid-dep cancels it otherwise).
PREVIOUS=""
ALL_ARRAYS=""
for LEVEL in $LEVELS; do
    CELLS_FILE="$STEM-cells.txt"
    if [[ "$LEVEL" -gt 0 ]]; then CELLS_FILE="$STEM-cells-level$LEVEL.txt"; fi
    awk -F'\t' -v level="$LEVEL" '$1 == level { print $2 "\t" $3 }' "$STEM-levels.txt" > "$CELLS_FILE"
    export CELLS_FILE
    COUNT="$(grep -c . "$CELLS_FILE")"
    AFTER=()
    if [[ -n "$PREVIOUS" ]]; then AFTER=(--dependency="afterok:$PREVIOUS" --kill-on-invalid-dep=yes); fi
    echo "# level $LEVEL: $COUNT cell(s) in $CELLS_FILE${PREVIOUS:+ (after job $PREVIOUS)}"
    ARRAY="0-$((COUNT - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}"
    PREVIOUS="$(submit --job-name="$JOB_NAME" ${COMMON[@]+"${COMMON[@]}"} --array="$ARRAY" --nodes="$NODES" \
        --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-node="$GPUS_PER_NODE" \
        --cpus-per-task="$CPUS_PER_TASK" --time="$TIME" ${AFTER[@]+"${AFTER[@]}"} \
        --export="ALL,CELLS_FILE=$CELLS_FILE" --output="$LOG_DIR/%x-%A_%a.out" "$HERE/array.sbatch")"
    ALL_ARRAYS="$ALL_ARRAYS:$PREVIOUS"
done
unset LEVEL

DEPENDENCY=()
if [[ -n "$ALL_ARRAYS" ]]; then DEPENDENCY=(--dependency="afterany$ALL_ARRAYS"); fi
submit --job-name="$JOB_NAME-collect" ${COMMON[@]+"${COMMON[@]}"} ${DEPENDENCY[@]+"${DEPENDENCY[@]}"} \
    --output="$LOG_DIR/%x-%j.out" "$HERE/collect.sbatch" > /dev/null
