#!/usr/bin/env bash
# LBGM threshold sweep: FedAvg once, then LBGM at each threshold, all on the same data and seed;
# then the plots (accuracy vs uplink bytes and vs round, and the sweep: accuracy drop vs uplink
# savings) and the comparison table (also as JSON) in the sweep folder. The same thresholds and
# folder names as jobs/slurm/sweep.sbatch: SWEEP/fedavg and SWEEP/threshold-T.
#   bash jobs/sweep.sh [CONFIG] [extra lbgm-mpi train arguments, e.g. --set run.rounds=50]
# Environment: LBGM_MPI_RANKS (default 4), THRESHOLDS (default "0.01 0.05 0.1 0.2 0.4 0.9", the
# paper's range), OUT (default runs/sweep-<config name>-<time>).
# Ctrl-C (or SIGTERM) stops the run in progress after its round, with a checkpoint (exit 75);
# the same command with OUT set to the sweep folder continues: finished runs are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
source jobs/setup-env.sh
set -euo pipefail  # setup-env.sh relaxes these for interactive shells
config="${1:-configs/digits-noniid.toml}"
shift $(( $# > 0 ? 1 : 0 ))
ranks="${LBGM_MPI_RANKS:-4}"
thresholds="${THRESHOLDS:-0.01 0.05 0.1 0.2 0.4 0.9}"
out="${OUT:-runs/sweep-$(basename "$config" .toml)-$(date +%Y%m%d-%H%M%S)}"

train() {  # train FOLDER [overrides...]
  local folder="$1"
  shift
  echo "== $folder (continue with OUT=$out)" >&2
  bash jobs/mpirun-local.sh "$ranks" train "$config" "$@" --out "$folder" --resume latest --quiet
}

runs=("$out/fedavg")
train "$out/fedavg" --set algo.name=fedavg "${@}"
for t in $thresholds; do
  runs+=("$out/threshold-$t")
  train "$out/threshold-$t" --set algo.name=lbgm --set "algo.threshold=$t" "${@}"
done
lbgm-mpi plot "${runs[@]}" --sweep --out "$out/plot"
lbgm-mpi report "${runs[@]}" --json "$out/table.json" | tee "$out/table.txt"
