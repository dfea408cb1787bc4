#!/bin/sh
# PRRTE's "ssh" for namespace hosts (benchmarks/links/netns.py sets PRTE_MCA_plm_ssh_agent to
# this file). PRRTE calls it as  AGENT [-option ...] HOST COMMAND...  and it runs COMMAND in the
# network namespace HOST, under its own host name so that PRRTE can tell the nodes apart.
while [ $# -gt 0 ]; do
    case "$1" in -*) shift ;; *) break ;; esac
done
host=$1
shift
PATH=$PATH:/usr/sbin:/sbin
exec ip netns exec "$host" unshare --uts sh -c "hostname $host; $*"
