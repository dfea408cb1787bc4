#!/usr/bin/env bash
# Installs (if needed) and starts a single-node SLURM cluster on this machine, for the tests
# marked `slurm`. Idempotent: a cluster that is already up and idle is left as it is. Needs root,
# apt-get and no systemd (the daemons are started by hand). Exits non-zero, saying why, when it
# cannot bring the cluster up; CI then runs the other tests and the SLURM tests skip.
#   bash .ci/slurm-up.sh          # stop with: bash .ci/slurm-down.sh
# Daemon state, pid files and logs live in SLURM_CI_DIR (default /tmp/slurm).
set -euo pipefail
state="${SLURM_CI_DIR:-/tmp/slurm}"
conf=/etc/slurm/slurm.conf
host="$(hostname -s)"
started=$SECONDS

die() { echo "slurm-up: $*" >&2; exit 1; }

cluster_idle() { [ "$(timeout 5 sinfo -h -o %T 2>/dev/null | tr -d '*~#')" = idle ]; }

install_packages() {
  local need=()
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sbatch >/dev/null || need+=(slurm-client)
  command -v munged >/dev/null || need+=(munge)
  compgen -G "/usr/lib/*/libpmix.so.2" >/dev/null || need+=(libpmix2)
  [ ${#need[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  echo "slurm-up: installing ${need[*]}" >&2
  # The packages' own start scripts are refused without systemd; the daemons start below.
  export DEBIAN_FRONTEND=noninteractive
  local log="$state/apt.log" apt=(apt-get -o DPkg::Lock::Timeout=120)  # another install may run
  mkdir -p "$state"
  timeout 300 "${apt[@]}" update -qq >"$log" 2>&1 \
    || die "apt-get update failed: $(tail -n 3 "$log")"
  timeout 300 "${apt[@]}" install -y -qq --no-install-recommends "${need[@]}" >>"$log" 2>&1 \
    || die "apt-get install ${need[*]} failed: $(tail -n 3 "$log")"
}

# Open MPI's PMIx client looks for libpmix.so, which only the -dev package links; srun --mpi=pmix
# needs it before slurmd starts.
link_pmix() {
  local lib
  lib="$(compgen -G "/usr/lib/*/pmix2/lib/libpmix.so.2" | head -n1 || true)"
  [ -n "$lib" ] || die "libpmix2 is installed but pmix2/lib/libpmix.so.2 is not where expected"
  [ -e "$(dirname "$lib")/libpmix.so" ] || ln -sf libpmix.so.2 "$(dirname "$lib")/libpmix.so"
}

start_munge() {
  if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then return; fi
  install -d -o munge -g munge -m 755 /run/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --force
  runuser -u munge -- /usr/sbin/munged || die "munged did not start"
  timeout 5 munge -n | timeout 5 unmunge >/dev/null || die "munge round trip failed"
}

write_conf() {
  local new
  new="$(cat <<EOF
# Written by .ci/slurm-up.sh: one node, root daemons, no accounting, no cgroups.
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Start jobs within a second of becoming eligible, and let a requeued job start again after 5 s
# rather than 120 (the credential lifetime is also that hold-back time; Slurm refuses under 5).
SchedulerParameters=sched_interval=1,bf_interval=1
AuthInfo=cred_expire=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)"
  mkdir -p /etc/slurm "$state/state" "$state/spool"
  if [ "$(cat "$conf" 2>/dev/null)" != "$new" ]; then
    printf '%s\n' "$new" > "$conf"
    bash "$(dirname "$0")/slurm-down.sh" >/dev/null || true  # the daemons must reread it
  fi
}

# A pid file left by a machine's earlier life may name some other process by now.
running() { [ "$(cat "/proc/$(cat "$state/$1.pid" 2>/dev/null)/comm" 2>/dev/null)" = "$1" ]; }

start_daemons() {
  # -c: a fresh controller forgets the jobs and node states of earlier runs
  running slurmctld || slurmctld -c || die "slurmctld did not start (see $state/slurmctld.log)"
  running slurmd || slurmd || die "slurmd did not start (see $state/slurmd.log)"
}

wait_idle() {
  local deadline=$((SECONDS + ${SLURM_UP_TIMEOUT_S:-30})) node_state
  until cluster_idle; do
    node_state="$(timeout 5 sinfo -h -o %T 2>/dev/null || true)"
    # A node left down or drained by an earlier run comes back once its daemons are up.
    case "$node_state" in down*|drain*) scontrol update nodename="$host" state=resume || true;; esac
    [ $SECONDS -lt "$deadline" ] || die "node not idle after ${SLURM_UP_TIMEOUT_S:-30}s" \
      "(sinfo: '${node_state:-no answer}'; logs in $state)"
    sleep 0.5
  done
}

ours() { [ ! -e "$conf" ] || grep -q "slurm-up.sh" "$conf"; }

main() {
  # A cluster configured by someone else is used as it is, never reconfigured.
  if ! ours || [ "$(id -u)" != 0 ]; then
    if command -v sinfo >/dev/null && cluster_idle; then
      echo "slurm-up: using the running cluster"; return
    fi
    ours || die "$conf was not written by this script and its cluster is not idle: not touching it"
    die "needs root (installs packages, starts munged, slurmctld, slurmd)"
  fi
  install_packages
  link_pmix
  start_munge
  write_conf
  start_daemons
  wait_idle
  echo "slurm-up: node $host ($(nproc) CPUs) idle after $((SECONDS - started))s"
}

main "$@"
