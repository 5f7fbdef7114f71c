#!/bin/sh
# slurm-down.sh DIR - stop the cluster slurm-up.sh DIR started: cancel its jobs, then stop
# the slurmd daemons, slurmctld and munged by the pids in their pid files under DIR.
# Never kills anything by name. DIR itself is left in place (logs).
[ $# -eq 1 ] || { echo "usage: slurm-down.sh DIR" >&2; exit 2; }
[ -d "$1" ] || exit 0
DIR=$(cd "$1" && pwd)
PATH=$PATH:/usr/sbin:/sbin; export PATH

# Jobs first, while slurmctld and slurmd still run, so no slurmstepd outlives its slurmd.
if [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
  SLURM_CONF=$DIR/slurm.conf; export SLURM_CONF
  jobs=$(squeue -h -o %i 2>/dev/null)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    n=0
    while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $n -lt 40 ]; do sleep 0.5; n=$((n + 1)); done
  fi
fi

stop() {  # stop PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
  [ -f "$1" ] || return 0
  pid=$(cat "$1" 2>/dev/null)
  case $pid in ''|*[!0-9]*) return 0 ;; esac
  kill "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
  n=0
  while kill -0 "$pid" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.2; n=$((n + 1)); done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  rm -f "$1"
}
for f in "$DIR"/run/slurmd-*.pid; do stop "$f"; done
stop "$DIR/run/slurmctld.pid"
stop "$DIR/munge/munged.pid"
exit 0
