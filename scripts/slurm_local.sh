#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for tests (tests/cluster/).
#
#   scripts/slurm_local.sh start DIR   # write DIR/slurm.conf, start munged, slurmctld, slurmd; wait for the node
#   scripts/slurm_local.sh stop DIR    # stop the three daemons by their pid files in DIR
#   export SLURM_CONF=DIR/slurm.conf   # what sbatch/squeue/scontrol need to find this cluster
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root (slurmd starts jobs
# as the submitting user). Everything lives in DIR: config, munge key and socket, state, spool,
# logs, pid files; nothing under /etc is used, so it coexists with a system SLURM. One node with
# this machine's CPUs and memory, no cgroups (proctrack/linuxproc, task/none), no accounting
# (accounting_storage/none), a free TCP port pair picked at start. docs/reproducing.md says what
# this cluster tests and what it does not.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)

free_port_pair() {  # two consecutive free TCP ports (slurmctld, slurmd)
    python3 - <<'EOF'
import random, socket
for _ in range(200):
    port = random.randrange(20000, 60000)
    try:
        for p in (port, port + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(port)
    break
EOF
}

stop_pid_file() {  # TERM the process named by a pid file, wait up to 10 s, then KILL
    local file=$1 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

start() {
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || { echo "slurm_local: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
    done
    [ "$(id -u)" = 0 ] || { echo "slurm_local: must run as root (slurmd starts jobs as their user)" >&2; exit 1; }
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    chmod 700 "$dir/munge"
    local host port cpus mem_mb
    host=$(hostname -s)
    port=$(free_port_pair)
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

    # munge: a fresh key and a private socket
    [ -f "$dir/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"; }
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"

    cat > "$dir/slurm.conf" <<EOF
# written by scripts/slurm_local.sh: a throw-away one-node cluster
ClusterName=adarank-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
# quick turnaround for tests: short kill wait, finished jobs forgotten soon
KillWait=5
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF" -N "$host"
    # ready when the node accepts jobs
    for _ in $(seq 150); do
        state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
        case "$state" in idle*|mix*|alloc*) echo "slurm_local: cluster up (SLURM_CONF=$SLURM_CONF, node $host, $cpus CPUs)"; return 0;; esac
        sleep 0.2
    done
    echo "slurm_local: the node did not come up (state '${state:-none}'); logs in $dir" >&2
    stop
    exit 1
}

stop() {
    stop_pid_file "$dir/slurmd.pid"
    stop_pid_file "$dir/slurmctld.pid"
    stop_pid_file "$dir/munge/munged.pid"
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
