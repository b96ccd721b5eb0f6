"""Two real SLURM nodes on this machine (`slurm/dev-cluster.sh start --nodes 2`: node1 and node2,
each in network, UTS, mount and IPC namespaces of its own, linked by veth): what only several
nodes bring. Per-node local ranks and GPU binding, PMI across hosts, the gradients crossing a
network link (eth0's byte counters: a private /dev/shm and IPC leave MPI no shared-memory path),
a requeue that resumes on two nodes, and a node that dies mid-run.

The cluster has its own lifecycle (`slurm_nodes`, module scope) apart from the one-node
cluster's; Slurm commands run on node1. The trainer runs the real launch.py throughout.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import LAUNCH, ROOT, run_launch

from ddp_scratch import backend as B
from ddp_scratch.run import checkpoint as ckpt

TRAIN = "slurm/train.sbatch"
CFG = "experiments/mlp_digits.yaml"
# ~110 steps: long enough to stop or kill mid-run after the first periodic checkpoint (step 20)
LONG = ["--quiet", "--set", "train.epochs=6", "--set", "train.checkpoint_every=20"]


@pytest.fixture
def nodes(slurm_nodes):
    yield slurm_nodes
    slurm_nodes.cancel_leftovers()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """LONG uninterrupted, 2 ranks under mpiexec here: what a 2-node run (1 rank per node) must end at.
    A sum of two ranks' gradients does not depend on the order, so the bits must match."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    r = run_launch("train", CFG, "--out", ref, *LONG, ranks=2, timeout=120)
    assert r.returncode == 0, r.stderr
    return np.load(ref / "checkpoint.npz", allow_pickle=False)["params"]


def _export(cluster):
    return f"--export=ALL,PYTHON={cluster.python}"


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _placement(s):
    return [(p["rank"], p["host"], p["local_rank"], p["local_size"]) for p in s["placement"]]


def _wait_for_checkpoint(nodes, job, out, timeout=60, after_step=0):
    """Until OUT/checkpoint.npz holds a step past `after_step`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ckpt.read_meta(str(out / "checkpoint.npz"))["step"] > after_step:
                return
        except Exception:       # not there yet (written atomically: never half)
            pass
        assert time.monotonic() < deadline, f"no checkpoint past step {after_step} after {timeout}s: {nodes.states(job)}"
        time.sleep(0.1)


def _gpus_of(placement, node):
    """The GPU each rank on `node` drives: CUDA_VISIBLE_DEVICES as SLURM set it for the task, indexed
    as ddp_scratch picks its device (backend.device_index of the local rank)."""
    gpus = []
    for p in placement:
        if p["host"] == node:
            visible = p["cuda_visible_devices"].split(",")
            gpus.append(visible[B.device_index(p["local_rank"], len(visible))])
    return gpus


def test_dev_cluster_refuses_bad_arguments_in_one_line():
    """Before anything starts or stops (no cluster needed): one line, exit status 2."""
    for args, expected in [([], "unknown command ''"), (["begin"], "unknown command 'begin'"),
                           (["start", "--nodes", "0"], "--nodes: expected a number of nodes >= 1, got '0'"),
                           (["start", "--nodes"], "--nodes: expected a number of nodes >= 1, got ''"),
                           (["start", "--nodes", "two"], "--nodes: expected a number of nodes >= 1, got 'two'"),
                           (["stop", "--node=2"], "unknown argument '--node=2'"),
                           (["start", "--nodes", "9"], "--nodes: expected at most 8 nodes, got 9"),
                           (["exec", "node1"], "exec: expected a node and a command, got 'node1'"),
                           (["kill-node", "node"], "kill-node: expected one node name like node2, got 'node'"),
                           (["revive-node"], "revive-node: expected one node name like node2, got ''")]:
        r = subprocess.run(["bash", os.path.join(ROOT, "slurm", "dev-cluster.sh"), *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, (args, r.stderr)
        assert r.stderr.startswith(f"[dev-cluster] ERROR: {expected}; usage: "), (args, r.stderr)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fake, reason", [
    ("unshare", "no network/UTS/mount/IPC namespaces for switch (unshare: unshare failed: Operation not permitted)"),
    ("ip", "no veth link (RTNETLINK answers: Operation not permitted)")], ids=["no-namespaces", "no-veth"])
def test_start_where_nodes_cannot_be_made_exits_5_with_the_reason(slurm_nodes, tmp_path, fake, reason):
    """A sandbox that refuses namespaces or veth links (here: stand-ins for unshare and ip that say
    so): `start --nodes 2` exits 5, which the fixture turns into a skip (a failure with
    DDP_REQUIRE_SLURM=1), names the reason in one line and leaves no process behind. Its own
    state folder: the running cluster is not touched."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    real_ip = shutil.which("ip")
    (bin_dir / fake).write_text("#!/bin/sh\n" + (
        'echo "unshare: unshare failed: Operation not permitted" >&2; exit 1\n' if fake == "unshare" else
        f'case "$*" in *veth*) echo "RTNETLINK answers: Operation not permitted" >&2; exit 2;; esac\n'
        f'exec {real_ip} "$@"\n'))
    (bin_dir / fake).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", DDP_SLURM_NODES_DIR=str(state))
    r = subprocess.run(["bash", os.path.join(ROOT, "slurm", "dev-cluster.sh"), "start", "--nodes", "2"],
                       capture_output=True, text=True, timeout=50, env=env)
    assert r.returncode == 5 and r.stderr.strip() == f"[dev-cluster] ERROR: cannot emulate nodes here: {reason}", r.stderr
    assert not list((state / "run").glob("*.pid"))
    st = subprocess.run(["bash", os.path.join(ROOT, "slurm", "dev-cluster.sh"), "status", "--nodes", "2"],
                        capture_output=True, text=True, timeout=30)
    assert st.returncode == 0, st.stdout       # the cluster of the other tests still runs


@pytest.mark.timeout(150)
def test_train_template_on_two_nodes_with_two_ranks_each_crosses_the_link(nodes, tmp_path):
    """sbatch --nodes=2 --ntasks-per-node=2 --gpus-per-task=1: a world of 4, ranks 0-1 on node1 and 2-3 on
    node2 with local ranks 0, 1 on each; each task sees one (fake) GPU, a different one per local
    rank; and every step's gradient exchange crossed eth0 (each node received at least the
    gradient of every step: summing across two nodes needs the other node's share of each element)."""
    log, out = tmp_path / "train.out", tmp_path / "run"
    before = nodes.eth0_bytes()
    job = nodes.sbatch(_export(nodes), "--nodes=2", "--ntasks-per-node=2", "--gpus-per-task=1", f"--output={log}",
                       TRAIN, CFG, out, "--quiet", "--set", "train.epochs=2")
    assert nodes.wait(job, timeout=120) == "COMPLETED", log.read_text()
    after = nodes.eth0_bytes()
    s = _summary(out)
    assert (s["status"], s["world_size"]) == ("completed", 4)
    assert _placement(s) == [(0, "node1", 0, 2), (1, "node1", 1, 2), (2, "node2", 0, 2), (3, "node2", 1, 2)]
    for node in nodes.nodes:
        assert [len(p["cuda_visible_devices"].split(",")) for p in s["placement"] if p["host"] == node] == [1, 1]
        assert sorted(_gpus_of(s["placement"], node)) == ["0", "1"], s["placement"]
    assert s["dtype"] == "float32"
    grads = s["steps"] * s["n_params"] * 4
    for node in nodes.nodes:
        got, sent = (a - b for a, b in zip(after[node], before[node]))
        assert got >= grads and sent >= grads, (node, got, sent, grads)


@pytest.mark.timeout(60)
def test_each_local_rank_drives_its_own_gpu_when_tasks_see_all_of_them(nodes):
    """The local rank -> device mapping where every task sees all of its node's GPUs
    (--gpus-per-node; one GPU per task is in the template test above): device = local rank.
    ddp_scratch's own Comm gives the local rank; the GPUs are the nodes' fake ones."""
    probe = ("import os, platform; from ddp_scratch import backend as B; from ddp_scratch.parallel.world import Comm; "
             "c = Comm(); v = os.environ['CUDA_VISIBLE_DEVICES'].split(','); "
             "print(platform.node(), c.rank, c.local_rank, len(v), v[B.device_index(c.local_rank, len(v))], flush=True)")
    r = nodes.run("srun", "--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2", nodes.python, "-c", probe, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = sorted(tuple(line.split()) for line in r.stdout.splitlines() if line.strip())
    assert rows == [("node1", "0", "0", "2", "0"), ("node1", "1", "1", "2", "1"),
                    ("node2", "2", "0", "2", "0"), ("node2", "3", "1", "2", "1")], r.stdout


@pytest.mark.timeout(200)
def test_submit_on_two_nodes(nodes, tmp_path):
    """`launch.py submit --nodes 2` (submitit) from node1: one rank on each node, followed to COMPLETED."""
    out = tmp_path / "run"
    r = nodes.run(sys.executable, LAUNCH, "submit", CFG, "--nodes", "2", "--tasks-per-node", "1", "--time", "10",
                  "--wait", "--quiet", "--out", out, "--set", "train.epochs=2", cwd=ROOT, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 node(s) x 1 task(s)" in r.stdout and " COMPLETED in " in r.stdout, r.stdout
    assert _placement(_summary(out)) == [(0, "node1", 0, 1), (1, "node2", 0, 1)]


@pytest.mark.timeout(240)
def test_scaling_sweep_on_one_and_two_nodes(nodes, tmp_path):
    """`launch.py scaling --slurm --tasks-per-node 1`: the 1-rank point runs on one node, the 2-rank
    point on both."""
    out = tmp_path / "sweep"
    r = nodes.run(sys.executable, LAUNCH, "scaling", CFG, "--mode", "weak", "--ranks", "1,2", "--steps", "6",
                  "--warmup", "2", "--slurm", "--tasks-per-node", "1", "--time", "5", "--out", out,
                  cwd=ROOT, timeout=220)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "(1 node(s) x 1 task(s))" in r.stdout and "(2 node(s) x 1 task(s))" in r.stdout, r.stdout
    hosts = {n: [p["host"] for p in _summary(out / "points" / f"weak-n{n}-r0")["placement"]] for n in (1, 2)}
    assert len(hosts[1]) == 1 and hosts[2] == ["node1", "node2"], hosts
    worlds = sorted(json.loads(p.read_text())["world_size"] for p in (out / "runs").glob("*.json"))
    assert worlds == [1, 2] and (out / "report.md").exists()


@pytest.mark.timeout(300)
def test_preempted_then_a_node_dies_and_the_run_still_ends_exactly(nodes, tmp_path, reference):
    """One rank per node, one job through two interruptions (one job: the suite's time is short):
    1. USR1 (as 120 s before the time limit) -> every rank checkpoints -> exit 75 -> requeue ->
       --resume on both nodes;
    2. node2 dies (its link goes down, then slurmd and its rank are killed, as in a power cut):
       rank 0's watchdog names rank 1, the job ends and SLURM requeues it (--requeue, node
       failure), and the last periodic checkpoint loads;
    3. node2 comes back, the job resumes from that checkpoint and ends with the parameters of an
       uninterrupted run. Runs last: it takes a node down."""
    log, out = tmp_path / "train.out", tmp_path / "run"
    job = nodes.sbatch(_export(nodes), "--nodes=2", "--ntasks-per-node=1", f"--output={log}", TRAIN, CFG, out,
                       *LONG, "--set", "comm.timeout_s=8")
    _wait_for_checkpoint(nodes, job, out)
    nodes.scancel("--signal=USR1", "--batch", job)
    text = nodes.wait_for_text(log, r"restart 1 on node\[1-2\]", timeout=90)
    assert "training exited with status 75" in text and "requeueing job" in text, text
    # a periodic checkpoint written after the resume, then the power cut
    _wait_for_checkpoint(nodes, job, out, after_step=ckpt.load(out / "checkpoint.npz")[1]["step"])
    nodes.script("kill-node", "node2")
    try:
        text = nodes.wait_for_text(log, r"training exited with status 3", timeout=90)
        assert "did not complete within comm.timeout_s=8s: rank(s) [1] did not arrive" in text, text
        arrays, meta = ckpt.load(out / "checkpoint.npz")
        assert arrays["params"].shape == reference.shape and meta["step"] % 20 == 0 and meta["step"] > 0
    finally:
        nodes.script("revive-node", "node2")
    assert nodes.wait(job, timeout=150) == "COMPLETED", log.read_text()
    text = log.read_text()
    assert "restart 2 on node[1-2]" in text, text
    s = _summary(out)
    assert s["status"] == "completed" and s["resumed_from_step"] == meta["step"], text
    assert _placement(s) == [(0, "node1", 0, 1), (1, "node2", 0, 1)]
    assert np.array_equal(np.load(out / "checkpoint.npz", allow_pickle=False)["params"], reference)
