#!/usr/bin/env bash
# Stops the daemons that .ci/slurm-up.sh started (slurmd, slurmctld, by their pid files), waiting
# up to 10 s each. munged, the packages and /etc/slurm/slurm.conf are left in place.
#   bash .ci/slurm-down.sh
set -uo pipefail
state="${SLURM_CI_DIR:-/tmp/slurm}"

stop() {
  local pidfile="$state/$1.pid" pid
  [ -s "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { echo "slurm-down: $1 ($pid) ignored SIGTERM; killing" >&2
                                    kill -9 "$pid"; }
  fi
  rm -f "$pidfile"
  echo "slurm-down: stopped $1"
}

stop slurmd
stop slurmctld
