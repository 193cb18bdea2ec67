#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to try `benchmark/run.py --slurm` without a real cluster.
#
#   sudo benchmark/slurm_cluster.sh start [STATE_DIR]    # install (apt) if missing, configure, start
#   eval "$(benchmark/slurm_cluster.sh env [STATE_DIR])" # point sbatch, squeue, scontrol at it
#   sudo benchmark/slurm_cluster.sh status [STATE_DIR]
#   sudo benchmark/slurm_cluster.sh stop [STATE_DIR]
#
# STATE_DIR (default /tmp/fmer-slurm) holds everything: the munge key and socket, slurm.conf, the
# daemons' state, logs and pid files; nothing under /etc is changed, so the cluster does not clash
# with a system Slurm or munge. The node is this host (`hostname -s`) with all its CPUs (nproc) and
# its memory less a margin (RealMemory); the partition `debug` is the default. The daemons are
# started directly (no systemd; works in a container) as root, with proctrack/linuxproc and
# task/none, which need no cgroups. Root is needed: slurmd starts jobs as the submitting user.
#
# Environment: FMER_SLURM_PORT (default 6817; slurmd uses the next port), FMER_SLURM_MEM_MARGIN_MB
# (memory kept from Slurm, default 1024), FMER_SLURM_NO_INSTALL=1 (fail instead of apt-get install).
# Exit status of start: 0 when the node is idle; 3 when Slurm cannot be had here (not root, or slurm-wlm
# and munge are missing and apt-get cannot install them); 1 on another failure (the log lines that say
# why are shown).
set -euo pipefail

action=${1:-}
state=${2:-/tmp/fmer-slurm}
port=${FMER_SLURM_PORT:-6817}
margin=${FMER_SLURM_MEM_MARGIN_MB:-1024}

usage() { echo "usage: $0 start|stop|status|env [STATE_DIR]" >&2; exit 2; }
die() { echo "slurm_cluster: $*" >&2; exit 1; }
unavailable() { echo "slurm_cluster: $*" >&2; exit 3; }
[[ $action =~ ^(start|stop|status|env)$ ]] || usage
if [[ $action == start && $(id -u) != 0 ]]; then
    unavailable "start needs root (slurmd runs jobs as their user; the daemons run as root here)"
fi
mkdir -p "$state" 2>/dev/null || true
state=$(cd "$state" && pwd)  # absolute: the paths go into slurm.conf and the munged flags
conf=$state/slurm.conf

if [[ $action == env ]]; then  # for eval in the user's shell
    echo "export SLURM_CONF=$conf"
    exit 0
fi

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # pidfile name
    local pidfile=$1 name=$2 pid
    if pid_alive "$pidfile"; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

kill_tree() {  # pid: the process and all its descendants, children first
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do kill_tree "$child"; done
    kill -9 "$1" 2>/dev/null || true
}

if [[ $action == stop ]]; then
    # the jobs first: their processes outlive slurmd otherwise
    if pid_alive "$state/slurmctld.pid"; then
        jobs=$(SLURM_CONF=$conf squeue --noheader --format=%A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            SLURM_CONF=$conf scancel $jobs 2>/dev/null || true
            for _ in $(seq 40); do  # KillWait (30 s) at most
                [[ -z $(SLURM_CONF=$conf squeue --noheader --format=%A 2>/dev/null) ]] && break
                sleep 1
            done
        fi
    fi
    stop_daemon "$state/slurmd.pid" slurmd
    stop_daemon "$state/slurmctld.pid" slurmctld
    # what is left of this cluster's jobs: step daemons (their cwd is our log dir), and every process of
    # a job (its environment has SLURM_JOB_ID and our SLURM_CONF), e.g. a run that ignored SIGTERM
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" ]] && continue
        if [[ $(readlink "$dir/cwd" 2>/dev/null) == "$state"/* && $(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null) == slurmstepd* ]] \
                || { grep -qzx "SLURM_CONF=$conf" "$dir/environ" 2>/dev/null \
                     && grep -qz "^SLURM_JOB_ID=" "$dir/environ" 2>/dev/null; }; then
            kill_tree "$pid"
        fi
    done
    stop_daemon "$state/munge/munged.pid" munged
    exit 0
fi

if [[ $action == status ]]; then
    for daemon in munge/munged slurmctld slurmd; do
        if pid_alive "$state/$daemon.pid"; then echo "${daemon#munge/}: running (pid $(cat "$state/$daemon.pid"))"
        else echo "${daemon#munge/}: not running"; fi
    done
    if pid_alive "$state/slurmctld.pid"; then
        SLURM_CONF=$conf sinfo --Node --long || true
        SLURM_CONF=$conf squeue || true
    fi
    exit 0
fi

# ---- start ----
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
    [[ ${FMER_SLURM_NO_INSTALL:-0} == 1 ]] && unavailable "slurmctld, slurmd, sbatch or munged missing (FMER_SLURM_NO_INSTALL=1)"
    command -v apt-get >/dev/null || unavailable "slurm-wlm and munge are not installed and there is no apt-get to install them"
    echo "installing slurm-wlm and munge with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    # DPkg::Lock::Timeout: wait for another apt instead of failing at once
    apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends slurm-wlm munge >"$state/apt.log" 2>&1 \
        || { apt-get update -q >>"$state/apt.log" 2>&1 \
             && apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends slurm-wlm munge \
                >>"$state/apt.log" 2>&1; } \
        || { tail -5 "$state/apt.log" >&2; unavailable "apt-get install slurm-wlm munge failed (log: $state/apt.log)"; }
fi
if pid_alive "$state/slurmctld.pid" || pid_alive "$state/slurmd.pid"; then
    die "a cluster already runs from $state; stop it first: $0 stop $state"
fi
for p in "$port" $((port + 1)); do  # a port in use (another cluster, a system slurm) would fail later, less clearly
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p is in use; pick others with FMER_SLURM_PORT=<port> (slurmd takes port+1)"
    fi
done

node=$(hostname -s)
cpus=$(nproc --all)
total_mb=$(free -m | awk '/^Mem:/ {print $2}')
memory=$((total_mb - margin))
((memory >= 256)) || memory=$((total_mb / 2))
user=$(id -un)
mkdir -p "$state"/{munge,ctld,spool,log}
chmod 755 "$state" "$state/munge"  # other users reach the socket (the key stays root-only)

# munge: its own key, socket and pid under STATE_DIR. --force: munged refuses to run as root, or
# with a key or dirs it finds insecure (e.g. a STATE_DIR under a world-writable /tmp) without it.
if [[ ! -s $state/munge/munge.key ]]; then
    dd if=/dev/urandom of="$state/munge/munge.key" bs=1 count=1024 status=none
fi
chmod 400 "$state/munge/munge.key"
socket=$state/munge/munge.socket
((${#socket} < 100)) || die "STATE_DIR is too deep for a unix socket path ($socket); pick a shorter one"
munged --force --key-file="$state/munge/munge.key" --socket="$socket" --pid-file="$state/munge/munged.pid" \
    --log-file="$state/munge/munged.log" --seed-file="$state/munge/munged.seed" \
    || { tail -5 "$state/munge/munged.log" >&2 2>/dev/null; die "munged did not start"; }
for _ in $(seq 50); do [[ -S $socket ]] && break; sleep 0.1; done
[[ -S $socket ]] || die "munged did not create its socket $socket"

# slurm.conf. RealMemory: without it the node has 1 MB and any job with --mem stays pending forever
# (Reason=Resources, or "Requested node configuration is not available" at sbatch).
cat >"$conf" <<EOF
# written by benchmark/slurm_cluster.sh: a one-node cluster on $node
ClusterName=fmer
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (default 120 s) before it may start again
AuthInfo=socket=$socket,cred_expire=10
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (a container usually cannot use them): processes are tracked by parent pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# a requeued job may start again at once
JobRequeue=1
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$conf

show_logs() { for f in "$state"/log/*.log; do echo "--- $f" >&2; tail -8 "$f" >&2; done; }
# -c: clear the state of a previous start (its jobs are not recovered)
slurmctld -c -f "$conf" || { show_logs; die "slurmctld did not start"; }
slurmd -f "$conf" -N "$node" || { show_logs; die "slurmd did not start"; }

echo -n "waiting for node $node to be idle "
for _ in $(seq 60); do
    node_state=$(sinfo --noheader --Node --nodes="$node" --format=%T 2>/dev/null || true)
    if [[ $node_state == idle ]]; then
        echo "... idle"
        echo "one-node cluster up: $cpus CPUs, RealMemory=${memory}M, partition debug; state in $state"
        echo "use it with: export SLURM_CONF=$conf"
        exit 0
    fi
    if [[ $node_state =~ ^(down|drain|drained|fail)  ]]; then
        scontrol update nodename="$node" state=resume 2>/dev/null || true
    fi
    echo -n "."
    sleep 1
done
echo
show_logs
sinfo --Node --long >&2 || true
die "node $node is not idle after 60 s (state: ${node_state:-none})"
