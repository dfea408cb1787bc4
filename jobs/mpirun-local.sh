#!/usr/bin/env bash
# `lbgm-mpi train` (or compare) on NP ranks of this machine with mpirun (no scheduler), stoppable:
# Ctrl-C, SIGTERM (`timeout`, `kill`), SIGHUP (a closed terminal) or SIGUSR1 to this script ends the
# run after the current round with a checkpoint and exit code 75, and lbgm-mpi prints this script's
# command that continues it (--resume latest). A second Ctrl-C quits at once, without a checkpoint
# of the current round, with exit code 130. Sets up the environment where python cannot import
# lbgm_mpi or no mpirun is on the PATH (jobs/setup-env.sh builds and activates the venv), and
# oversubscribes when NP exceeds the cores.
#   bash jobs/mpirun-local.sh NP [train|compare] CONFIG [--out DIR] [--resume latest] [--set ...]
#   bash jobs/mpirun-local.sh 4 configs/default.toml --out runs/local --resume latest
#   bash jobs/mpirun-local.sh 4 compare configs/default.toml --methods fedavg,lbgm --out runs/cmp
# (report, plot, inspect, analyze and data need no MPI: run them as lbgm-mpi COMMAND.)
#
# Why a script and not mpirun alone: mpirun answers SIGINT, SIGTERM and SIGHUP by killing the ranks
# 0.5 s later (Open MPI 5's PRRTE sends SIGCONT, then SIGTERM after 0.25 s, then SIGKILL after
# another 0.25 s; no setting changes that), too soon to finish a round. So mpirun runs here in a
# session of its own, where a terminal's Ctrl-C and `timeout`'s process-group signal cannot reach
# it, and this script turns each of those signals into SIGUSR1, which mpirun passes on to every
# rank and otherwise ignores; a second SIGINT goes to mpirun itself. mpirun's stderr passes through
# a filter that drops its banner "prterun detected that one or more processes exited with non-zero
# status" after exit 75 (a stop, already explained) and exit 2 (an error already said in one line):
# Open MPI 5 has no option that silences it and keeps the exit status.
set -euo pipefail
usage="usage: $0 NP [train|compare] CONFIG [lbgm-mpi arguments]"
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "$usage" >&2
  exit 2
fi
np="$1"
shift
command=train
case "$1" in
  train | compare) command="$1"; shift ;;
  report | plot | inspect | analyze | data)
    echo "mpirun-local.sh: '$1' needs no MPI ranks: run it as lbgm-mpi $*" >&2
    exit 2 ;;
  -*) ;;  # an option: lbgm-mpi train names what is wrong with it
  *)
    if [ ! -e "$1" ] && [[ "$1" != *.toml ]]; then
      echo "mpirun-local.sh: '$1' is neither a command (train or compare) nor a config file;" \
           "$usage" >&2
      exit 2
    fi ;;
esac
if ! command -v mpirun >/dev/null || ! python -c "import lbgm_mpi" 2>/dev/null; then
  # shellcheck disable=SC1091
  source "$(dirname "$0")/setup-env.sh"
fi
# Open MPI refuses to start as root unless told so.
[ "$(id -u)" != 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# One machine, so shared memory carries every message: leave out Open MPI's libfabric BTL, whose
# start-up sleeps one second in every rank's MPI_Init where there is no fabric. A user's setting wins.
export OMPI_MCA_btl="${OMPI_MCA_btl:-^ofi}"
oversubscribe=()
[ "$np" -le "$(nproc)" ] || oversubscribe=(--oversubscribe)
# lbgm-mpi prints this command (then train|compare and the arguments) as the one that continues
# a stopped run
printf -v LBGM_MPI_LAUNCHER '%q ' bash "$0" "$np"
export LBGM_MPI_LAUNCHER="${LBGM_MPI_LAUNCHER% }"

caught=0 interrupted=0 aborted=0 launcher=""
# shellcheck disable=SC2317  # run by the traps below
stop() {
  if [ "$1" = INT ] && [ "$interrupted" = 1 ]; then
    echo "mpirun-local.sh: SIGINT again: quitting now, without a checkpoint of this round" \
         "(the run keeps its last one)" >&2
    aborted=1 caught=1
    [ -z "$launcher" ] || kill -INT "$launcher" 2>/dev/null || true  # mpirun ends the ranks
    return
  fi
  local again=""
  if [ "$1" = INT ]; then
    interrupted=1 again=" (Ctrl-C again quits at once, without one)"
  fi
  echo "mpirun-local.sh: SIG$1: the ranks stop after this round, with a checkpoint$again" >&2
  caught=1
  [ -z "$launcher" ] || kill -USR1 "$launcher" 2>/dev/null || true
}
for sig in INT TERM HUP USR1; do
  # shellcheck disable=SC2064  # the signal's name is meant to be expanded now
  trap "stop $sig" "$sig"
done
if [ "$caught" = 1 ]; then  # stopped during the set-up: nothing has started, nothing is lost
  [ "$aborted" = 0 ] || exit 130
  exit 75
fi

# The banner filter reads mpirun's stderr from a FIFO; it ignores the signals this script traps
# (a terminal's Ctrl-C reaches it too) and ends when mpirun closes its end.
filter_code='
import re, sys
RULE = re.compile(r"^-{20,}\s*$")
QUIET = {"2", "75"}  # exit codes lbgm-mpi has explained in full
held = []
def put(lines):
    sys.stderr.write("".join(lines))
    sys.stderr.flush()
for line in iter(sys.stdin.readline, ""):
    if not held:
        if RULE.match(line):
            held = [line]
        else:
            put([line])
        continue
    if len(held) == 1 and "exited with non-zero status" not in line:
        put(held)
        held = [line] if RULE.match(line) else []
        if not held:
            put([line])
        continue
    held.append(line)
    if RULE.match(line):
        codes = [l.split(":", 1)[1].strip() for l in held if l.strip().startswith("Exit code:")]
        if not (codes and codes[0] in QUIET):
            put(held)
        held = []
put(held)
'
fifo_dir="$(mktemp -d)"
trap 'rm -rf "$fifo_dir"' EXIT
mkfifo "$fifo_dir/stderr"
(trap '' INT TERM HUP USR1; exec python -c "$filter_code" <"$fifo_dir/stderr") &
filter=$!
# stdin from /dev/null: mpirun would forward it to rank 0, and a process outside the terminal's
# foreground group that reads the terminal is stopped (SIGTTIN)
setsid mpirun -n "$np" "${oversubscribe[@]}" python -m lbgm_mpi "$command" "$@" </dev/null \
  2>"$fifo_dir/stderr" &
launcher=$!
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
wait "$filter" || true
[ "$aborted" = 0 ] || exit 130
exit "$status"
