#!/usr/bin/env bash
# mpich-shm-cleanup.sh [JOBID] — remove the shared-memory segments that MPICH
# ranks of Slurm job JOBID (default $SLURM_JOB_ID) left in /dev/shm.
#
# Why: MPICH (also the PyPI `mpich` wheel) names its node-local segment
# /dev/shm/mpich_shm_<H>_<node> (and mpich_vci_<H>_<node>), where H is the
# 32-bit FNV-1a hash, printed as %x, of the PMI job id — "<jobid>.<stepid>"
# under `srun --mpi=pmi2`. Ranks that are killed (scancel, a requeue while they
# run, preemption, a time limit) never unlink it. A requeued job keeps its job
# id and numbers its steps from 0 again, so its ranks open the stale segment
# and MPI_Init fails ("MPIDI_UCX_comm_addr_exchange ... Invalid parameter") or
# hangs. Segments of other jobs are never touched: the names are computed.
#
# Used as the dev cluster's Epilog (slurm/dev-cluster.sh), and by the sbatch
# templates at the start of a requeued run (one task per node).
set -euo pipefail
shopt -s nullglob

job=${1:-${SLURM_JOB_ID:-}}
[[ $job =~ ^[0-9]+$ ]] || { echo "usage: $0 JOBID (or run inside a Slurm job)" >&2; exit 2; }
max_step=${MPICH_SHM_CLEANUP_MAX_STEP:-255} # steps 0..max_step of the job are covered

# FNV-1a, 32 bit, of the string $1, as lowercase hex without leading zeros.
fnv1a32() {
    local s=$1 h=2166136261 i c
    for ((i = 0; i < ${#s}; i++)); do
        printf -v c '%d' "'${s:i:1}"
        h=$((((h ^ c) * 16777619) & 0xFFFFFFFF))
    done
    printf '%x' "$h"
}

for ((step = 0; step <= max_step; step++)); do
    h=$(fnv1a32 "$job.$step")
    for f in /dev/shm/mpich_shm_"$h"_* /dev/shm/mpich_vci_"$h"_*; do
        # Only our own files, unless root (the epilog runs as root).
        [[ $EUID -eq 0 || -O $f ]] || continue
        rm -f -- "$f" && echo "mpich-shm-cleanup: removed stale $f (job $job step $step)" >&2
    done
done
exit 0
