#!/usr/bin/env bash
# `lbgm-mpi train` (or compare) on NP ranks of this machine with mpirun (no scheduler), stoppable:
# Ctrl-C, SIGTERM (`timeout`, `kill`), SIGHUP (a closed terminal) or SIGUSR1 to this script ends the
# run after the current round with a checkpoint and exit code 75; the same command with
# --resume latest continues it. Sets up the environment where python cannot import lbgm_mpi or no
# mpirun is on the PATH (jobs/setup-env.sh builds and activates the venv), and oversubscribes when
# NP exceeds the cores.
#   bash jobs/mpirun-local.sh NP [train|compare] CONFIG [--out DIR] [--resume latest] [--set ...]
#   bash jobs/mpirun-local.sh 4 configs/default.toml --out runs/local --resume latest
#   bash jobs/mpirun-local.sh 4 compare configs/default.toml --methods fedavg,lbgm --out runs/cmp
#
# Why a script and not mpirun alone: mpirun answers SIGINT, SIGTERM and SIGHUP by killing the ranks
# 0.5 s later (Open MPI 5's PRRTE sends SIGCONT, then SIGTERM after 0.25 s, then SIGKILL after
# another 0.25 s; no setting changes that), too soon to finish a round. So mpirun runs here in a
# session of its own, where a terminal's Ctrl-C and `timeout`'s process-group signal cannot reach
# it, and this script turns each of those signals into SIGUSR1, which mpirun passes on to every
# rank and otherwise ignores.
set -euo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NP [train|compare] CONFIG [lbgm-mpi arguments]" >&2
  exit 2
fi
np="$1"
shift
command=train
case "$1" in train | compare) command="$1"; shift ;; esac
if ! command -v mpirun >/dev/null || ! python -c "import lbgm_mpi" 2>/dev/null; then
  # shellcheck disable=SC1091
  source "$(dirname "$0")/setup-env.sh"
fi
# Open MPI refuses to start as root unless told so.
[ "$(id -u)" != 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
oversubscribe=()
[ "$np" -le "$(nproc)" ] || oversubscribe=(--oversubscribe)

# stdin from /dev/null: mpirun would forward it to rank 0, and a process outside the terminal's
# foreground group that reads the terminal is stopped (SIGTTIN)
setsid mpirun -n "$np" "${oversubscribe[@]}" python -m lbgm_mpi "$command" "$@" </dev/null &
launcher=$!
caught=0
# shellcheck disable=SC2317  # run by the traps below
stop() {
  echo "mpirun-local.sh: SIG$1: the ranks stop after this round, with a checkpoint" >&2
  caught=1
  kill -USR1 "$launcher" 2>/dev/null || true
}
for sig in INT TERM HUP USR1; do
  # shellcheck disable=SC2064  # the signal's name is meant to be expanded now
  trap "stop $sig" "$sig"
done
# A trapped signal ends `wait` early (status > 128): wait again for mpirun's own exit status
# (127 means that status had already been collected).
status=0
wait "$launcher" || status=$?
while [ "$caught" = 1 ]; do
  caught=0
  again=0
  wait "$launcher" || again=$?
  [ "$again" = 127 ] || status=$again
done
exit "$status"
