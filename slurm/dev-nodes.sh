# dev-nodes.sh — sourced by dev-cluster.sh for `--nodes N` (2..8) and `exec`: a SLURM
# cluster of N real nodes on this one machine, each node a set of namespaces.
#
#   slurm/dev-cluster.sh start --nodes 2     # node1 (slurmctld + slurmd) and node2 (slurmd)
#   slurm/dev-cluster.sh exec node1 sbatch -N2 slurm/train.sbatch ...   # clients run on a node
#   slurm/dev-cluster.sh exec node2 cat /proc/net/dev
#   slurm/dev-cluster.sh status --nodes 2    # exit 0 when every node is usable
#   slurm/dev-cluster.sh stop --nodes 2      # cancel jobs, stop daemons, end every process of the nodes
#   slurm/dev-cluster.sh kill-node node2     # the node dies: link down, every process on it killed
#   slurm/dev-cluster.sh revive-node node2   # it boots again: link up, slurmd started
#
# A node is one `sleep` process holding its own namespaces: network (eth0 with 127.200.0.I/24,
# lo with 127.0.0.1 only), UTS (hostname nodeI), mount (a private /etc/hosts naming every node,
# /etc/slurm holding this cluster's slurm.conf, a sysfs of its own network, a tmpfs on /dev/shm)
# and IPC. The nodes' eth0 are veth links to a bridge in a "switch" namespace. Files are shared
# (like a cluster's shared home): the repository, the venv, /tmp.
#
# State in $DDP_SLURM_NODES_DIR (default /tmp/ddp-slurm-nodes): etc/slurm.conf, hosts, log/,
# spool/NODE, state/ (job ids keep counting), jobcomp.log, munge/ (a munged of its own with its
# own socket, AuthInfo=socket=...), run/ (pid files of the namespace holders and daemons). The
# daemons listen inside the nodes' network namespaces, so their ports never meet the one-node
# cluster's (dev-cluster.sh without --nodes): the two may run side by side.
#
# Findings on these machines (Debian 12, Slurm 22.05.8, kernel 6.x VM):
#  * Client commands (sbatch, squeue, scancel, sacct, `launch.py submit`) must run on a node
#    (`exec`): on the host, 127.200.0.1 is the host's own loopback and /etc/slurm is the
#    one-node cluster's.
#  * With /dev/shm and IPC shared, MPICH's UCX moves traffic between "nodes" through shared
#    memory; with them private it uses TCP over eth0, no settings needed (the tests check the
#    byte counters).
#  * `lo` keeps only 127.0.0.1/32 and route_localnet=1 everywhere, so the rest of 127/8 is
#    routed over eth0 (addresses no real network uses, and nothing outside these namespaces).
#  * A fresh sysfs has an empty /sys/fs/cgroup, and slurmd 22.05 refuses to start ("No
#    filesystem mounted on /sys/fs/cgroup"): the host's cgroup tree is bound aside before the
#    sysfs mount and moved onto it after.
#  * SlurmdPidFile, SlurmdLogFile and SlurmdSpoolDir hold %n (the node name), one slurmd per
#    node (`slurmd -N nodeI`); SlurmctldHost=node1(127.200.0.1).
#  * Each node also offers 2 fake GPUs (gres.conf File= two character devices in run/, like
#    /dev/null): --gpus-per-task / --gpus-per-node are granted and set CUDA_VISIBLE_DEVICES per
#    task as on a GPU cluster; nothing can use them.

NS_DIR="${DDP_SLURM_NODES_DIR:-/tmp/ddp-slurm-nodes}"
NET=127.200.0          # node I has $NET.I
MAX_NODES=8
FAKE_GPUS=2            # per node
STATE_DIR=$NS_DIR
CONF="$NS_DIR/etc/slurm.conf"
CTLD_PID="$NS_DIR/run/slurmctld.pid"
MUNGE_DIR="$NS_DIR/munge"
MUNGE_PID="$MUNGE_DIR/munged.pid"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"

holder_file() { echo "$NS_DIR/run/ns-$1.pid"; }
slurmd_pidfile() { echo "$NS_DIR/run/$1-slurmd.pid"; }

# The nodes this cluster was started with (node1 node2 ...), from their holders' pid files.
node_names() {
    local f
    for f in "$NS_DIR"/run/ns-node*.pid; do
        [[ -e $f ]] || continue
        f=${f##*/ns-}
        echo "${f%.pid}"
    done | sort -V
}

# The pid holding namespace set $1 (node1, switch, ...), if it runs, is a `sleep`, and is
# really in namespaces other than ours: never enter the host's (a reused pid).
ns_pid() {
    local f pid
    f=$(holder_file "$1")
    alive "$f" || return 1
    pid=$(<"$f")
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == sleep ]] || return 1
    [[ $(readlink "/proc/$pid/ns/net" 2>/dev/null) != "$(readlink /proc/self/ns/net)" ]] || return 1
    echo "$pid"
}

# on NODE CMD...: run CMD in the node's namespaces (in the current directory).
on() {
    local node=$1 pid
    shift
    pid=$(ns_pid "$node") || die "no node '$node' is running (start one with: $0 start --nodes 2)"
    nsenter -t "$pid" -n -u -m -i --wd="$PWD" -- "$@"
}

# start_holder NAME: a `sleep` in new network, UTS, mount and IPC namespaces; 1 when the
# kernel refuses (the reason in run/ns-NAME.err).
start_holder() {
    local f err
    f=$(holder_file "$1")
    err="$NS_DIR/run/ns-$1.err"
    # setsid: out of the caller's process group; all fds closed (a caller that reads our
    # output must not wait for the holder's end)
    setsid unshare --net --uts --mount --ipc --propagation private sleep infinity </dev/null >/dev/null 2>"$err" &
    echo $! >"$f"
    local t0=$SECONDS
    until ns_pid "$1" >/dev/null; do
        alive "$f" && ((SECONDS - t0 < 5)) || return 1    # unshare refused (it exited), or hangs
        sleep 0.05
    done
}

# The kernel or the sandbox refuses namespaces, veth links or a bridge: undo, exit 5 (tests skip).
cannot() {
    echo "[dev-cluster] ERROR: cannot emulate nodes here: $*" >&2
    nodes_stop >/dev/null 2>&1 || true
    exit 5
}

# The switch: a bridge in a namespace of its own, one veth per node (eth0 on the node's side).
make_network() {
    local sw i pid
    sw=$(ns_pid switch)
    nsenter -t "$sw" -n -- ip link add br0 type bridge 2>"$NS_DIR/run/net.err" ||
        cannot "no bridge device ($(<"$NS_DIR/run/net.err"))"
    nsenter -t "$sw" -n -- ip link set br0 up
    for ((i = 1; i <= NODES; i++)); do
        pid=$(ns_pid "node$i")
        ip link add name eth0 netns "$pid" type veth peer name "port$i" netns "$sw" 2>"$NS_DIR/run/net.err" ||
            cannot "no veth link ($(<"$NS_DIR/run/net.err"))"
        nsenter -t "$sw" -n -- ip link set "port$i" master br0 up
    done
}

# setup_node I: hostname, addresses and private mounts of node I.
setup_node() {
    local name=node$1
    mkdir -p /etc/slurm "$NS_DIR/run/cg-$name"
    on "$name" bash -euc '
        hostname "$1"
        ip link set lo up
        ip addr del 127.0.0.1/8 dev lo 2>/dev/null || true
        ip addr replace 127.0.0.1/32 dev lo
        for f in /proc/sys/net/ipv4/conf/*/route_localnet; do echo 1 >"$f"; done
        ip addr add "$2/24" dev eth0
        ip link set eth0 up
        # a sysfs of this network namespace, with the host cgroup tree moved onto it
        cg=0
        if mountpoint -q /sys/fs/cgroup; then mount --rbind /sys/fs/cgroup "$3" && cg=1; fi
        mount -t sysfs sysfs /sys
        if ((cg)); then mount --move "$3" /sys/fs/cgroup; fi
        mount -t tmpfs -o mode=1777 tmpfs /dev/shm
        mount --bind "$4/hosts" /etc/hosts
        mount --bind "$4/etc" /etc/slurm
    ' _ "$name" "$NET.$1" "$NS_DIR/run/cg-$name" "$NS_DIR"
}

start_node_munge() {
    ensure_munge_key
    alive "$MUNGE_PID" && return 0
    install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
    rm -f "$MUNGE_PID" "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    runuser -u munge -- munged --force --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_PID" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
    wait_for 10 bash -c "munge -S '$MUNGE_SOCKET' -n </dev/null | unmunge -S '$MUNGE_SOCKET' >/dev/null 2>&1"
}

render_nodes_conf() {
    local i
    read_hw
    mkdir -p "$NS_DIR"/{etc,state,log} "$NS_DIR/run/dev"
    for ((i = 1; i <= NODES; i++)); do mkdir -p "$NS_DIR/spool/node$i"; done
    for ((i = 0; i < FAKE_GPUS; i++)); do
        [[ -e $NS_DIR/run/dev/gpu$i ]] || mknod "$NS_DIR/run/dev/gpu$i" c 1 3
    done
    {
        echo "127.0.0.1 localhost"
        for ((i = 1; i <= NODES; i++)); do echo "$NET.$i node$i"; done
    } >"$NS_DIR/hosts"
    {
        cat <<EOF
# Generated by slurm/dev-cluster.sh --nodes $NODES (slurm/dev-nodes.sh). Do not edit: it is
# rewritten on every start. State dir: $NS_DIR. Seen as /etc/slurm/slurm.conf on the nodes.
ClusterName=ddpnodes
SlurmctldHost=node1($NET.1)
EOF
        conf_common "socket=$MUNGE_SOCKET,cred_expire=5" "$(slurmd_pidfile %n)" "$NS_DIR/log/slurmd-%n.log" \
            "$NS_DIR/spool/%n"
        echo
        for ((i = 1; i <= NODES; i++)); do
            echo "NodeName=node$i NodeAddr=$NET.$i CPUs=$CPUS RealMemory=$((MEM / NODES)) Gres=gpu:$FAKE_GPUS State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
    } >"$CONF"
    echo "Name=gpu File=$NS_DIR/run/dev/gpu[0-$((FAKE_GPUS - 1))]" >"$NS_DIR/etc/gres.conf"
    write_epilog
}

# Every node's slurmd (re)registered at or after epoch $1.
registered_since() {
    local since=$1 i t
    for ((i = 1; i <= NODES; i++)); do
        t=$(on node1 scontrol show node "node$i" 2>/dev/null | sed -nE 's/.*SlurmdStartTime=([0-9T:-]+).*/\1/p')
        [[ -n $t ]] && (($(date -d "$t" +%s) >= since - 1)) || return 1
    done
}

nodes_states() { on node1 sinfo -h -N -o '%T' 2>/dev/null; }

all_ready() {
    local st n=0
    while read -r st; do
        [[ $st == idle || $st == mixed || $st == allocated || $st == completing ]] || return 1
        n=$((n + 1))
    done < <(nodes_states)
    ((n == NODES))
}

nodes_start() {
    NODES=$1
    [[ $(id -u) -eq 0 ]] || { echo "[dev-cluster] ERROR: must run as root" >&2; exit 4; }
    ((NODES <= MAX_NODES)) || usage "--nodes: expected at most $MAX_NODES nodes, got $NODES"
    PACKAGES+=(iproute2)
    install_packages || exit 3
    if (($(node_names | wc -l) == NODES)) && nodes_daemons_alive && all_ready; then
        log "already running ($NODES nodes)"
        nodes_status_brief
        return 0
    fi
    [[ -z $(node_names) ]] || nodes_stop
    mkdir -p "$NS_DIR/run"
    local i name
    for name in switch $(seq -f 'node%g' 1 "$NODES"); do
        start_holder "$name" || cannot "no network/UTS/mount/IPC namespaces for $name" \
            "($(tr '\n' ' ' <"$NS_DIR/run/ns-$name.err" | sed 's/ *$//'))"
    done
    make_network
    render_nodes_conf
    for ((i = 1; i <= NODES; i++)); do setup_node "$i" || { nodes_stop; die "could not set up node$i"; }; done
    start_node_munge || { nodes_stop; die "munged did not come up (see $MUNGE_DIR/munged.log)"; }
    log "starting slurmctld on node1 and slurmd on node1..node$NODES"
    local since; since=$(date +%s)
    on node1 slurmctld -i
    for ((i = 1; i <= NODES; i++)); do on "node$i" slurmd -N "node$i"; done
    local t0=$SECONDS resumed=0
    until all_ready && registered_since "$since"; do
        if ((SECONDS - t0 > START_TIMEOUT_S)) || { ((SECONDS - t0 > 5)) && ! nodes_daemons_alive; }; then
            nodes_status_brief >&2
            on node1 sinfo -N -l >&2 || true
            tail -n 20 "$NS_DIR"/log/*.log >&2 || true
            die "cluster did not become ready (logs in $NS_DIR/log)"
        fi
        # nodes down or drained in the saved state (e.g. after a node was killed) stay so
        if ((resumed == 0)) && nodes_states | grep -qE 'drain|down'; then
            on node1 scontrol update NodeName="node[1-$NODES]" State=RESUME 2>/dev/null || true
            resumed=1
        fi
        sleep 0.2
    done
    nodes_status_brief
}

nodes_daemons_alive() {
    local n
    alive "$CTLD_PID" || return 1
    for n in $(node_names); do alive "$(slurmd_pidfile "$n")" || return 1; done
}

# pids of every process in namespace set $1 (its holder included), by its network namespace.
ns_members() {
    local pid net p
    pid=$(ns_pid "$1") || return 0
    net=$(readlink "/proc/$pid/ns/net")
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/ns/net" 2>/dev/null) == "$net" ]] && echo "${p#/proc/}"
    done
    return 0
}

no_jobs() { [[ -z $(on node1 squeue -h 2>/dev/null) ]]; }

nodes_stop() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    local n ids pids
    if alive "$CTLD_PID" && ns_pid node1 >/dev/null; then
        ids=$(on node1 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ') || true
        if [[ -n ${ids// /} ]]; then
            log "cancelling jobs: $ids"
            # shellcheck disable=SC2086
            on node1 scancel $ids 2>/dev/null || true
            wait_for 20 no_jobs || log "some jobs did not end in 20 s"
        fi
    fi
    for n in $(node_names); do stop_one "slurmd on $n" "$(slurmd_pidfile "$n")"; done
    stop_one slurmctld "$CTLD_PID"
    # whatever still runs on a node (job steps of a node whose slurmd died) ends with it
    for n in $(node_names) switch; do
        pids=$(ns_members "$n" | tr '\n' ' ')
        if [[ -n ${pids// /} ]]; then
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
        rm -f "$(holder_file "$n")"
    done
    stop_one munged "$MUNGE_PID"
}

nodes_status_brief() {
    local n f
    if alive "$MUNGE_PID"; then echo "munged: running (pid $(<"$MUNGE_PID"))"; else echo "munged: stopped"; fi
    if alive "$CTLD_PID"; then echo "slurmctld on node1: running (pid $(<"$CTLD_PID"))"; else echo "slurmctld: stopped"; fi
    for n in $(node_names); do
        f=$(slurmd_pidfile "$n")
        if alive "$f"; then echo "slurmd on $n: running (pid $(<"$f"))"; else echo "slurmd on $n: stopped"; fi
    done
}

nodes_status() {
    NODES=$(node_names | wc -l)
    if ((NODES == 0)); then
        echo "no multi-node cluster runs (state dir: $NS_DIR)"
        return 1
    fi
    nodes_status_brief
    echo "state dir: $NS_DIR"
    ns_pid node1 >/dev/null && alive "$CTLD_PID" && { on node1 sinfo -N -l || true; }
    nodes_daemons_alive && all_ready
}

# kill-node NODE: as a power cut: the node's link goes down first (its peers get no FIN or
# RST, they just stop hearing from it), then every process on it is killed, slurmd included.
nodes_kill() {
    [[ $# -eq 1 && $1 =~ ^node([0-9]+)$ ]] || usage "kill-node: expected one node name like node2, got '$*'"
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    local node=$1 i=${BASH_REMATCH[1]} holder pids
    holder=$(ns_pid "$node") || die "no node '$node' is running"
    log "$node dies: its link goes down, then every process on it is killed"
    on switch ip link set "port$i" down
    pids=$(ns_members "$node" | grep -vx "$holder" | tr '\n' ' ') || true
    # shellcheck disable=SC2086
    [[ -z ${pids// /} ]] || kill -KILL $pids 2>/dev/null || true
}

# revive-node NODE: the node boots again after kill-node: link up, its slurmd started (slurmctld
# returns it to service, ReturnToService=2; a job requeued after the failure can run again).
nodes_revive() {
    [[ $# -eq 1 && $1 =~ ^node([0-9]+)$ ]] || usage "revive-node: expected one node name like node2, got '$*'"
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    local node=$1 i=${BASH_REMATCH[1]}
    ns_pid "$node" >/dev/null || die "no node '$node' is running"
    alive "$(slurmd_pidfile "$node")" && die "$node is up (its slurmd runs)"
    log "$node boots: link up, slurmd started"
    on switch ip link set "port$i" up
    on "$node" slurmd -N "$node"
}

nodes_exec() {
    [[ $# -ge 2 ]] || usage "exec: expected a node and a command, got '$*'"
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    local node=$1
    shift
    on "$node" "$@"
}
