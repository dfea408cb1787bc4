#!/usr/bin/env bash
# The default job: set up the environment if needed, then LBGM vs FedAvg on digits (non-IID) with
# 4 MPI ranks, one client per rank. Prints the comparison table; outputs in a new folder
# runs/quickstart-<time>/ (never an existing one: runs/default, which configs/default.toml names,
# stays yours). Ctrl-C stops it after the current round with a checkpoint (jobs/mpirun-local.sh).
#   bash jobs/quickstart.sh [extra lbgm-mpi compare arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ranks="${LBGM_MPI_RANKS:-4}"
bash jobs/mpirun-local.sh "$ranks" compare configs/default.toml --methods fedavg,lbgm \
  --out "runs/quickstart-$(date +%Y%m%d-%H%M%S)" "$@"
