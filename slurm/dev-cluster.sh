#!/usr/bin/env bash
# dev-cluster.sh — a real SLURM cluster on this machine, for tests: one node on
# the host (the default), or several nodes in namespaces (slurm/dev-nodes.sh).
#
#   slurm/dev-cluster.sh start    # install if needed, start munged + slurmctld + slurmd, wait for the node
#   slurm/dev-cluster.sh stop     # cancel all jobs, stop the daemons (by pidfile)
#   slurm/dev-cluster.sh status   # which daemons run, plus sinfo; exit 0 when the cluster is usable
#   slurm/dev-cluster.sh start --nodes 2         # nodes node1 and node2 (slurm/dev-nodes.sh)
#   slurm/dev-cluster.sh stop|status --nodes 2
#   slurm/dev-cluster.sh exec node1 sbatch ...   # a command on a node of that cluster
#   slurm/dev-cluster.sh kill-node node2         # a node dies (tests of node failure)
#   slurm/dev-cluster.sh revive-node node2       # and comes back
#
# --nodes picks the cluster (1: the one on the host; 2 or more: the one in
# namespaces); the two keep their own state, munged and ports and may run side by side.
# (Over 400 lines: most of it the findings below, which the next person needs here.)
#
# Needs root: it installs Debian's slurmctld slurmd slurm-client munge (apt-get,
# only when missing) and runs the daemons as root. start exits 3 when the
# packages cannot be installed, 4 when not root and 5 when namespaces or veth
# links cannot be made (--nodes 2) (tests skip on those), 1 on other failures. start is idempotent: on a running cluster it returns at once,
# or restarts slurmctld/slurmd (jobs kept) when the rendered slurm.conf changed.
# Timing on a 2-core VM: start ~0.2-1.5 s (installed), ~7 s with the install
# (apt lists already fetched); stop ~1 s.
#
# State (slurm.conf, logs, spool, saved state, job completion log, pidfiles)
# lives in $DDP_SLURM_DIR (default /tmp/ddp-slurm); saved state survives
# stop/start, so job ids keep counting up. Deleting the dir restarts ids at 1.
#
# Findings on these machines (Debian 12, Slurm 22.05.8, munge 0.5.15, gVisor):
#  * PID 1 does not reap orphans: every daemon that forks (or exits) leaves a
#    zombie. "Is it running?" is decided from /proc/PID/stat (state not Z/X),
#    never with `kill -0`.
#  * No systemd: the packages' postinst cannot start services ("policy-rc.d
#    denied"); the daemons are started by hand here. munge's postinst creates
#    /etc/munge/munge.key; one is created only if it is missing.
#  * Clients (sbatch, srun, sinfo, sacct, scontrol, submitit's subprocesses)
#    read /etc/slurm/slurm.conf: it is a symlink to $DDP_SLURM_DIR/slurm.conf, so
#    nobody needs SLURM_CONF. A /etc/slurm/slurm.conf that is not a symlink is
#    never overwritten (start fails instead).
#  * SlurmctldHost=<hostname -s>(127.0.0.1) and NodeName=<hostname -s>
#    NodeAddr=127.0.0.1; CPUs and RealMemory come from `slurmd -C` (RealMemory
#    at 95%: more than slurmd sees would drain the node).
#  * SelectType=select/cons_tres with CR_Core: memory is not consumable, so
#    --mem/--mem-per-cpu (submitit's mem_gb) are accepted without every job
#    reserving the whole node's memory. --mem above RealMemory is rejected.
#  * GresTypes=gpu with no GPUs: --gpus-per-node=0 parses; asking for GPUs is
#    rejected ("Invalid generic resource"), as on any CPU-only node.
#  * MpiDefault=pmi2: the PyPI `mpich` wheel (mpi4py in .venv) forms an N-rank
#    world under `srun --mpi=pmi2` (20/20 runs). No pmix (its plugin load errors
#    in the logs are harmless).
#  * AccountingStorageType=accounting_storage/none + JobCompType=jobcomp/filetxt:
#    `sacct --completion -j ID` works, plain `sacct` fails ("Slurm accounting
#    storage is disabled"), and submitit, which polls plain
#    `sacct -o JobID,State,NodeList --parsable2 -j ID`, then never sees a
#    crashed job as finished. slurm/bin/sacct answers those calls from the
#    completion log + squeue: put slurm/bin first on PATH (the tests do).
#  * `scontrol requeue` delays the restart by cred_expire+1 s (default 120 s):
#    AuthInfo=cred_expire=5 plus SchedulerParameters=sched_interval=2 bring
#    requeue -> running again to ~6 s.
#  * A requeued job keeps its id; MPICH names its /dev/shm segment after
#    "<jobid>.<step>", so segments left by killed ranks (e.g. submitit's rank 0
#    requeueing while the other ranks run) made the restarted MPI_Init fail
#    ("MPIDI_UCX_comm_addr_exchange ... Invalid parameter") and the job hang.
#    The Epilog ($DDP_SLURM_DIR/epilog.sh -> slurm/mpich-shm-cleanup.sh) removes
#    exactly that job's segments; it always exits 0 (a failing Epilog drains the node).
#  * Signals (all verified): `scancel --signal=USR1 --batch` reaches only the
#    batch shell; `--full` the shell and every task; plain `--signal=USR1` only
#    the tasks; srun relays a USR1 it receives to all its tasks. `#SBATCH
#    --signal=B:USR1@60` (shell) and `--signal=USR1@60` (tasks) are accepted
#    and fire on slurmctld's periodic check: seen up to 18 s late and 12 s early
#    (Slurm documents up to 60 s early), so keep --time well above the lead.
#  * Job steps outlive slurmd, so stop cancels all jobs first (bounded wait).
#  * KillWait=2: after SIGTERM (scancel, time limit) a job has 2 s before SIGKILL.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_DIR="${DDP_SLURM_DIR:-/tmp/ddp-slurm}"
CONF="$STATE_DIR/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
MUNGE_PID=/run/munge/munged.pid
CTLD_PID="$STATE_DIR/slurmctld.pid"
SLURMD_PID="$STATE_DIR/slurmd.pid"
START_TIMEOUT_S="${DDP_SLURM_START_TIMEOUT:-60}"
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "[dev-cluster] $*" >&2; }
die() { echo "[dev-cluster] ERROR: $*" >&2; exit 1; }

# True when the pid in pidfile $1 is a live (not zombie) process.
alive() {
    local pidfile=$1 pid state
    [[ -r $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/stat ]] || return 1
    # /proc/PID/stat: "pid (comm) STATE ..." — comm may contain spaces.
    state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]) .*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z && $state != X ]]
}


install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update -qq || ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        log "ERROR: could not install ${missing[*]} with apt-get"
        return 1
    fi
}

ensure_munge_key() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
}

start_munge() {
    ensure_munge_key
    alive "$MUNGE_PID" && return 0
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    rm -f "$MUNGE_PID" /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    log "starting munged"
    runuser -u munge -- munged --force
    wait_for 10 bash -c 'munge -n </dev/null | unmunge >/dev/null 2>&1'
}

# CPUS and MEM (MiB, at 95%) of this machine as slurmd sees them.
read_hw() {
    # slurmd -C prints e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
    local hw; hw=$(slurmd -C | head -1)
    CPUS=$(sed -nE 's/.*CPUs=([0-9]+).*/\1/p' <<<"$hw")
    MEM=$(sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' <<<"$hw")
    [[ -n $CPUS && -n $MEM ]] || die "could not read CPUs/RealMemory from 'slurmd -C': $hw"
    MEM=$((MEM * 95 / 100)) # leave slack: a RealMemory above what slurmd sees drains the node
}

render_conf() {
    local host cpus mem
    host=$(hostname -s)
    read_hw
    cpus=$CPUS mem=$MEM

    mkdir -p "$STATE_DIR"/{spool,state,log}
    {
        cat <<EOF
# Generated by slurm/dev-cluster.sh — single-node dev/test cluster. Do not edit:
# it is rewritten on every start. State dir: $STATE_DIR
ClusterName=ddpdev
SlurmctldHost=$host(127.0.0.1)
EOF
        conf_common "cred_expire=5" "$SLURMD_PID" "$STATE_DIR/log/slurmd.log" "$STATE_DIR/spool"
        cat <<EOF

NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    } >"$CONF.new"
    write_epilog
}

# The settings both dev clusters share, after ClusterName and SlurmctldHost:
# conf_common AUTHINFO SLURMD_PIDFILE SLURMD_LOG SLURMD_SPOOL (the paths may hold %n).
conf_common() {
    cat <<EOF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start
# again (cred_expire+1 s; default 120 -> requeue takes >2 min).
AuthInfo=$1

SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$2
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$3
SlurmctldDebug=info
SlurmdDebug=info
SlurmdSpoolDir=$4
StateSaveLocation=$STATE_DIR/state

# No cgroups here: plain /proc process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=pmi2
SwitchType=switch/none

SchedulerType=sched/backfill
# Run the main scheduling loop every 2 s (default 60) so requeued jobs restart fast.
SchedulerParameters=sched_interval=2,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu

# No slurmdbd: finished jobs go to a text completion log (sacct --completion).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.log

# Short timeouts: a test cluster should notice and clean up within seconds.
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=5
InactiveLimit=0
KillWait=2
MinJobAge=60
ReturnToService=2
JobRequeue=1
# No mail on this box; default /bin/mail is missing and logs an error.
MailProg=/bin/true
# After each job (also before a requeued job restarts): remove the job's stale
# MPICH /dev/shm segments, which make a requeued job's MPI_Init fail or hang.
Epilog=$STATE_DIR/epilog.sh
# Seconds after which a step/job that does not finish after SIGKILL marks the node bad.
UnkillableStepTimeout=30
EOF
}

# A failing Epilog drains the node: this wrapper always succeeds.
write_epilog() {
    cat >"$STATE_DIR/epilog.sh" <<EOF
#!/bin/sh
# Generated by slurm/dev-cluster.sh. Runs as root after every job on this node.
bash "$SCRIPT_DIR/mpich-shm-cleanup.sh" >/dev/null 2>&1 || true
exit 0
EOF
    chmod 0755 "$STATE_DIR/epilog.sh"
}

# Put the rendered conf in place and point /etc/slurm/slurm.conf at it.
install_conf() {
    mv "$CONF.new" "$CONF"
    mkdir -p /etc/slurm
    if [[ -L $ETC_CONF ]]; then
        ln -sfn "$CONF" "$ETC_CONF"
    elif [[ -e $ETC_CONF ]]; then
        die "$ETC_CONF exists and is not our symlink; move it away (it would shadow $CONF)"
    else
        ln -s "$CONF" "$ETC_CONF"
    fi
}

daemons_alive() { alive "$CTLD_PID" && alive "$SLURMD_PID"; }

# wait_for SECONDS CMD... : poll CMD every 0.2 s until it succeeds.
wait_for() {
    local secs=$1; shift
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    return 0
}

# The node accepts work: idle, or busy with jobs (mixed/allocated/completing).
# Not drained/down/unknown/not responding (those carry a suffix like "idle*").
node_ready() {
    local st
    st=$(sinfo -h -N -o '%T' 2>/dev/null | head -1)
    [[ $st == idle || $st == mixed || $st == allocated || $st == completing ]]
}

start() {
    [[ $(id -u) -eq 0 ]] || { echo "[dev-cluster] ERROR: must run as root" >&2; exit 4; }
    install_packages || exit 3
    start_munge || die "munged did not come up (see /var/log/munge/munged.log)"
    render_conf
    if daemons_alive; then
        if cmp -s "$CONF.new" "$CONF"; then
            rm -f "$CONF.new"
            node_ready || resume_node
            if wait_for 10 node_ready; then
                log "already running"
                status_brief
                return 0
            fi
            log "daemons run but the node is not usable; restarting them"
        else
            log "slurm.conf changed; restarting slurmctld and slurmd (jobs are kept)"
        fi
        stop_daemons
    fi
    install_conf
    log "starting slurmctld and slurmd"
    rm -f "$CTLD_PID" "$SLURMD_PID"
    # -i: ignore unreadable saved state instead of refusing to start. Saved
    # state is kept on purpose: job ids keep counting up across restarts
    # (with -c they restart at 1, and submitit folders named after %j would
    # then hold stale result pickles of older jobs).
    local since; since=$(date +%s)
    slurmctld -f "$CONF" -i
    slurmd -f "$CONF"
    local t0=$SECONDS resumed=0
    # The saved node state can read "idle" before this slurmd has registered.
    until node_ready && slurmd_registered_since "$since"; do
        # Give up at the timeout, or early when a daemon died (bad conf...).
        if ((SECONDS - t0 > START_TIMEOUT_S)) || { ((SECONDS - t0 > 5)) && ! daemons_alive; }; then
            status_brief >&2
            sinfo -N -l >&2 || true
            tail -n 20 "$STATE_DIR"/log/slurmctld.log "$STATE_DIR"/log/slurmd.log >&2 || true
            die "cluster did not become ready (logs in $STATE_DIR/log)"
        fi
        # A node drained/down in the saved state stays so across restarts.
        if ((resumed == 0)) && sinfo -h -N -o '%T' 2>/dev/null | grep -qE 'drain|down'; then
            resume_node
            resumed=1
        fi
        sleep 0.2
    done
    status_brief
}

# slurmd (re)registered with slurmctld at or after epoch $1.
slurmd_registered_since() {
    local t
    t=$(scontrol show node "$(hostname -s)" 2>/dev/null | sed -nE 's/.*SlurmdStartTime=([0-9T:-]+).*/\1/p')
    [[ -n $t ]] && (($(date -d "$t" +%s) >= $1 - 1))
}

resume_node() {
    log "resuming node $(hostname -s)"
    scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true
}

stop_one() {
    local name=$1 pidfile=$2 pid
    if ! alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(<"$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 15 bash -c "! [[ -r /proc/$pid/stat ]] || grep -qE '^[0-9]+ \(.*\) [ZX] ' /proc/$pid/stat"; then
        log "$name did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop_daemons() {
    stop_one slurmd "$SLURMD_PID"
    stop_one slurmctld "$CTLD_PID"
}

# Job steps (slurmstepd and the user's processes) outlive slurmd, so a stop
# cancels every job first and waits (bounded) for them to go away.
cancel_all_jobs() {
    local ids
    ids=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
    [[ -n ${ids// /} ]] || return 0
    log "cancelling jobs: $ids"
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null || true
    # shellcheck disable=SC2016  # expanded by the inner bash
    wait_for 20 bash -c '[[ -z $(squeue -h 2>/dev/null) ]]' || log "some jobs did not end in 20 s"
}

stop() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    alive "$CTLD_PID" && cancel_all_jobs
    stop_daemons
    stop_one munged "$MUNGE_PID"
}

status_brief() {
    local n
    for n in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
        if alive "${n#*:}"; then echo "${n%%:*}: running (pid $(<"${n#*:}"))"; else echo "${n%%:*}: stopped"; fi
    done
}

status() {
    status_brief
    echo "state dir: $STATE_DIR"
    if alive "$CTLD_PID"; then
        sinfo -N -l || true
    fi
    daemons_alive && node_ready
}

# Bad arguments: one line, exit 2.
usage() {
    echo "[dev-cluster] ERROR: ${1:-expected a command}; usage: $0 start|stop|status [--nodes N]" \
        "| exec NODE COMMAND [ARGS...] | kill-node|revive-node NODE" >&2
    exit 2
}

cmd=${1:-}
shift || true
if [[ $cmd == exec || $cmd == kill-node || $cmd == revive-node ]]; then
    # shellcheck source=slurm/dev-nodes.sh
    source "$SCRIPT_DIR/dev-nodes.sh"
    case $cmd in
    exec) nodes_exec "$@" ;;
    kill-node) nodes_kill "$@" ;;
    revive-node) nodes_revive "$@" ;;
    esac
    exit
fi
NODES=1
while (($#)); do
    case $1 in
    --nodes) NODES=${2:-}; shift $(($# < 2 ? 1 : 2)) ;;
    --nodes=*) NODES=${1#*=}; shift ;;
    *) usage "unknown argument '$1'" ;;
    esac
done
[[ $NODES =~ ^[1-9][0-9]*$ ]] || usage "--nodes: expected a number of nodes >= 1, got '$NODES'"
if ((NODES > 1)); then
    # shellcheck source=slurm/dev-nodes.sh
    source "$SCRIPT_DIR/dev-nodes.sh"
    case $cmd in
    start) nodes_start "$NODES" ;;
    stop) nodes_stop ;;
    status) nodes_status ;;
    *) usage "unknown command '$cmd'" ;;
    esac
    exit
fi
case $cmd in
start) start ;;
stop) stop ;;
status) status ;;
*) usage "unknown command '$cmd'" ;;
esac
