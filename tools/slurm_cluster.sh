#!/usr/bin/env bash
# A throwaway single-node Slurm cluster for the tests marked `slurm` (and for trying the study's Slurm executor).
#
#   tools/slurm_cluster.sh start  [DIR]   # start munged, slurmctld, slurmd; prints `export SLURM_CONF=...`
#   tools/slurm_cluster.sh status [DIR]   # exit 0 and show sinfo/squeue when it runs, 3 when it does not
#   tools/slurm_cluster.sh stop   [DIR]   # cancel its jobs, stop its daemons (leaves DIR; `rm -rf DIR` after)
#
# DIR (default $VFU_SLURM_DIR, else /tmp/vfu_nb-slurm) holds everything: slurm.conf, the munge key and socket,
# state, spool, logs and pid files. Start and stop are idempotent: starting a running cluster only prints its
# SLURM_CONF, stopping a stopped one does nothing. Clients (sbatch, squeue, submitit, the jobs) find it through
# SLURM_CONF. Daemon traffic stays on 127.0.0.1; the ports are the first free ones from 6817 (chosen at the first
# start and kept in slurm.conf), so it can run beside another cluster.
#
# Needs: root, Debian's slurm-wlm and munge (`apt-get install -y slurm-wlm munge`; Slurm 22.05). The settings
# follow docs/study.md ("Testing against a real Slurm"): proctrack/linuxproc and task/none (no cgroups in a
# container), no accounting, KillWait=5 and cred_expire=5 with a 2 s scheduler interval so that a requeued job
# starts again after about 7 s instead of about 170 s (slurm.conf(5)).
set -euo pipefail

cmd=${1:-}
D=$(realpath -m "${2:-${VFU_SLURM_DIR:-/tmp/vfu_nb-slurm}}")
CONF=$D/etc/slurm.conf
export SLURM_CONF=$CONF
H=$(hostname -s)

die() { echo "slurm_cluster: $*" >&2; exit 1; }

alive() {  # alive PIDFILE COMM: the process of the pid file runs and is the named daemon
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$2" ]
}

stop_pid() {  # stop_pid PIDFILE COMM: TERM, then KILL after 10 s; only the process this script started
    local pid
    alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

running() { alive "$D/run/slurmctld.pid" slurmctld && alive "$D/run/slurmd.pid" slurmd && alive "$D/munge/munged.pid" munged; }

port_free() {  # no TCP socket (v4 or v6, any state) uses port $1 locally
    local hex
    hex=$(printf '%04X' "$1")
    ! awk -v h=":$hex" 'NR > 1 && substr($2, length($2) - 4) == h { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

free_port() {  # free_port FROM [EXCEPT]: the first free port >= FROM
    local p=$1
    while ! port_free "$p" || [ "$p" = "${2:-}" ]; do p=$((p + 1)); done
    echo "$p"
}

case "$cmd" in
status)
    if running; then
        echo "running: export SLURM_CONF=$CONF"
        sinfo
        squeue -t all
        exit 0
    fi
    echo "not running ($D)"
    exit 3
    ;;
stop)
    if alive "$D/run/slurmctld.pid" slurmctld; then   # jobs outlive slurmd: cancel them and wait first
        scancel --full --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 60); do
            [ -z "$(squeue -h -t RUNNING,PENDING,COMPLETING,CONFIGURING,SUSPENDED 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop_pid "$D/run/slurmd.pid" slurmd
    stop_pid "$D/run/slurmctld.pid" slurmctld
    stop_pid "$D/munge/munged.pid" munged
    echo "stopped ($D)"
    exit 0
    ;;
start) ;;
*) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
esac

if running; then
    echo "already running"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "needs root (slurmd launches jobs as their users; munged runs as user munge)"
for exe in /usr/sbin/munged /usr/sbin/slurmctld /usr/sbin/slurmd sbatch squeue scontrol; do
    command -v "$exe" >/dev/null || die "$exe not found: apt-get install -y slurm-wlm munge"
done
id munge >/dev/null 2>&1 || die "no user munge: apt-get install -y munge"
"$0" stop "$D" >/dev/null   # a half-started cluster (one daemon died): start clean

mkdir -p "$D"/{etc,state,spool,log,run,munge}
chmod 0755 "$D" "$D/munge"   # munged needs every directory up to its socket traversable by all
chown munge:munge "$D/munge"
[ -s "$D/munge/munge.key" ] || head -c 1024 /dev/urandom > "$D/munge/munge.key"
chown munge:munge "$D/munge/munge.key"
chmod 0400 "$D/munge/munge.key"

if [ -s "$CONF" ]; then   # keep the ports of an earlier start (its state and jobs refer to them)
    ctld_port=$(sed -n 's/^SlurmctldPort=//p' "$CONF")
    d_port=$(sed -n 's/^SlurmdPort=//p' "$CONF")
    port_free "$ctld_port" && port_free "$d_port" || { ctld_port=; d_port=; }
fi
ctld_port=${ctld_port:-$(free_port 6817)}
d_port=${d_port:-$(free_port $((ctld_port + 1)) "$ctld_port")}
cpus=$(nproc)
mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')

cat > "$CONF" <<CONF
# Written by tools/slurm_cluster.sh: a one-node test cluster, everything under $D
ClusterName=vfu_nb_ci
SlurmctldHost=$H(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket,cred_expire=5
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=$H NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF

runuser -u munge -- /usr/sbin/munged --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
/usr/sbin/slurmctld -f "$CONF"   # both daemonize and write their pid files
/usr/sbin/slurmd -f "$CONF"

state=
for _ in $(seq 60); do
    state=$(sinfo -h -n "$H" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.5
done
if [ "$state" != idle ]; then
    sinfo -R >&2 || true
    tail -20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
    "$0" stop "$D" >/dev/null
    die "the node did not come up (state '$state'); logs above"
fi
# srun may exit 0 even when the task could not be launched: compare the output instead
if [ "$(timeout 60 srun -N1 -n1 -t 1 echo ok 2>&1)" != ok ]; then
    tail -20 "$D/log/slurmd.log" >&2 || true
    "$0" stop "$D" >/dev/null
    die "a test job did not run; slurmd's log above"
fi
echo "started ($D, ports $ctld_port/$d_port)"
echo "export SLURM_CONF=$CONF"
