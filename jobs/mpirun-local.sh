#!/usr/bin/env bash
# One `lbgm-mpi train` run on NP ranks of this machine, with mpirun (no scheduler). Sets up the
# environment if needed (jobs/setup-env.sh: the venv, and the variables Open MPI wants as root),
# and oversubscribes when NP exceeds the cores. Further arguments go to `lbgm-mpi train`.
#   bash jobs/mpirun-local.sh NP CONFIG [--out DIR] [--resume latest] [--set section.key=value ...]
#   bash jobs/mpirun-local.sh 4 configs/default.toml --out runs/local --resume latest
# SIGUSR1 to this script (its PID becomes mpirun's, which passes it on to every rank) checkpoints
# and stops the run with exit code 75; the same command with --resume latest continues it.
# (SIGTERM or Ctrl-C to mpirun kills the ranks without a checkpoint.)
set -euo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NP CONFIG [lbgm-mpi train arguments]" >&2
  exit 2
fi
np="$1" config="$2"
shift 2
# shellcheck disable=SC1091
source "$(dirname "$0")/setup-env.sh"
oversubscribe=()
[ "$np" -le "$(nproc)" ] || oversubscribe=(--oversubscribe)
exec mpirun -n "$np" "${oversubscribe[@]}" python -m lbgm_mpi train "$config" "$@"
