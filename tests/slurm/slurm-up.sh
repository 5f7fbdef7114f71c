#!/bin/sh
# slurm-up.sh DIR - start a throw-away Slurm cluster on this host: munged, slurmctld and one
# slurmd per emulated node (n1, n2, ...), every file of it under DIR. As root, without systemd.
#
# Follows ../shared/notes/slurm-local-cluster.md (Debian 12, Slurm 22.05), with one change:
# nothing goes to /etc, /run or /var: the config, munge key and socket, logs, spool, state,
# per-node TmpFS and pid files all live in DIR, so the machine's own Slurm and munge (if any)
# are left alone. Partitions:
#   debug  default, PriorityTier 1
#   low    PriorityTier 1, PreemptMode=REQUEUE, GraceTime=10: training runs here
#   high   PriorityTier 10, PreemptMode=OFF: a job here preempts (requeues) jobs in low
# It writes DIR/env.sh: source it to talk to this cluster (SLURM_CONF) and to run OpenMPI
# programs on emulated nodes (OMPI_MCA_btl=self,tcp; run as root). Jobs get the same
# OpenMPI variables from a TaskProlog, whatever --export they use.
# Stop it with slurm-down.sh DIR.
#
# Environment: SLURM_CI_NODES (default 2), SLURM_CI_CPUS per node (default 4; may exceed
# the real cores), SLURM_CI_PORT (slurmctld port, default 16817; slurmd ports follow it).
set -eu
[ $# -eq 1 ] || { echo "usage: slurm-up.sh DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "slurm-up.sh: must run as root" >&2; exit 1; }
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
NODES=${SLURM_CI_NODES:-2}
CPUS=${SLURM_CI_CPUS:-4}
PORT=${SLURM_CI_PORT:-16817}
for p in munged slurmctld slurmd sbatch; do
  command -v $p >/dev/null 2>&1 || [ -x /usr/sbin/$p ] || { echo "slurm-up.sh: $p not installed" >&2; exit 1; }
done
PATH=$PATH:/usr/sbin:/sbin; export PATH

# port_in_use P: true when a TCP socket on this host has local port P (any state). A port
# taken by another program makes slurmctld or slurmd exit at start; better to say so now.
port_in_use() {
  hex=$(printf ':%04X ' "$1")
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk '{ print $2 " " }' | grep -q "$hex"
}
p=$PORT
while [ "$p" -le $((PORT + NODES)) ]; do
  if port_in_use "$p"; then
    echo "slurm-up.sh: TCP port $p is in use on this host (slurmctld takes $PORT, slurmd $((PORT + 1))-$((PORT + NODES))); choose another with SLURM_CI_PORT" >&2
    exit 3
  fi
  p=$((p + 1))
done

# munged runs as user munge and must reach DIR (mktemp -d makes it 0700).
chmod 755 "$DIR"
runuser -u munge -- test -x "$DIR" || {
  echo "slurm-up.sh: user munge cannot reach $DIR (make its parent directories searchable: chmod a+x)" >&2; exit 1; }
mkdir -p "$DIR/munge" "$DIR/log" "$DIR/run" "$DIR/state" "$DIR/spool"
chmod 755 "$DIR/munge"   # munged wants it searchable by all

# --- munge: a key of our own, socket and pid file in DIR/munge
[ -s "$DIR/munge/munge.key" ] || {
  if command -v mungekey >/dev/null 2>&1; then mungekey --create --keyfile="$DIR/munge/munge.key" --force
  else dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 2>/dev/null; fi
}
chmod 600 "$DIR/munge/munge.key"
chown -R munge:munge "$DIR/munge"; chmod 755 "$DIR/munge"
SOCK=$DIR/munge/munge.socket
runuser -u munge -- munged --socket="$SOCK" --key-file="$DIR/munge/munge.key" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
  --seed-file="$DIR/munge/munged.seed"
munge --socket="$SOCK" -n | unmunge --socket="$SOCK" >/dev/null

# --- TaskProlog: what every task of every job needs on emulated nodes
cat > "$DIR/task-prolog.sh" <<'EOF'
#!/bin/sh
# Several slurmd share one real host name: OpenMPI's shared-memory BTL would collide.
echo "export OMPI_MCA_btl=self,tcp"
echo "export OMPI_ALLOW_RUN_AS_ROOT=1"
echo "export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
EOF
chmod 755 "$DIR/task-prolog.sh"

# --- slurm.conf
first=$((PORT + 1)); last=$((PORT + NODES))
i=1; while [ $i -le "$NODES" ]; do mkdir -p "$DIR/tmp/n$i" "$DIR/spool/n$i"; i=$((i + 1)); done
cat > "$DIR/slurm.conf" <<EOF
# Written by tests/slurm/slurm-up.sh for a throw-away test cluster.
ClusterName=ci
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=10
MpiDefault=pmix
ProctrackType=proctrack/pgid
TaskPlugin=task/none
TaskProlog=$DIR/task-prolog.sh
JobAcctGatherType=jobacct_gather/linux
ReturnToService=2
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
StateSaveLocation=$DIR/state
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmdSpoolDir=$DIR/spool/%n
SlurmdLogFile=$DIR/log/slurmd-%n.log
TmpFS=$DIR/tmp/%n
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=5
MinJobAge=300
MailProg=/bin/true
NodeName=n[1-$NODES] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$first-$last] CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=low   Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=10
PartitionName=high  Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
: > "$DIR/log/jobcomp.log"

cat > "$DIR/env.sh" <<EOF
# Source this to use the cluster in $DIR.
SLURM_CONF=$DIR/slurm.conf; export SLURM_CONF
PATH=\$PATH:/usr/sbin:/sbin; export PATH
OMPI_MCA_btl=self,tcp; export OMPI_MCA_btl
OMPI_ALLOW_RUN_AS_ROOT=1; export OMPI_ALLOW_RUN_AS_ROOT
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM
EOF
SLURM_CONF=$DIR/slurm.conf; export SLURM_CONF

# --- daemons (-c: empty job and node state)
slurmctld -f "$DIR/slurm.conf" -c
i=1
while [ $i -le "$NODES" ]; do
  slurmd -f "$DIR/slurm.conf" -N n$i
  i=$((i + 1))
done

# --- wait until every node is idle (at most 60 s). sinfo is bounded by timeout(1): when
# slurmctld is gone a client retries for many seconds, and 120 such tries took 19 minutes.
# A daemon writes its pid file a moment after it forks; no file yet counts as alive.
alive() { [ ! -s "$1" ] || kill -0 "$(cat "$1")" 2>/dev/null; }
died() {
  echo "slurm-up.sh: $1 exited while the cluster came up; the end of its log $2:" >&2
  tail -n 15 "$2" >&2 2>/dev/null
  exit 1
}
end=$(( $(date +%s) + 60 ))
until [ "$(timeout 5 sinfo -h -p debug -t idle -o %D 2>/dev/null)" = "$NODES" ]; do
  sleep 0.5
  alive "$DIR/run/slurmctld.pid" || died slurmctld "$DIR/log/slurmctld.log"
  i=1
  while [ $i -le "$NODES" ]; do
    alive "$DIR/run/slurmd-n$i.pid" || died "slurmd n$i" "$DIR/log/slurmd-n$i.log"
    i=$((i + 1))
  done
  [ "$(date +%s)" -lt $end ] || {
    echo "slurm-up.sh: the cluster did not come up in 60 s; logs in $DIR/log" >&2
    timeout 5 sinfo >&2 || true; exit 1; }
done
sinfo
