#!/usr/bin/env bash
# The default job: set up the environment if needed, then LBGM vs FedAvg on digits (non-IID) with
# 4 MPI ranks, one client per rank. Prints the comparison table; outputs in runs/default/.
#   bash jobs/quickstart.sh [extra lbgm-mpi compare arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source jobs/setup-env.sh
ranks="${LBGM_MPI_RANKS:-4}"
rm -rf runs/default  # the quickstart's own folder: a new run never writes over an old one
mpirun -n "$ranks" --oversubscribe lbgm-mpi compare configs/default.toml \
  --methods fedavg,lbgm --out runs/default "$@"
