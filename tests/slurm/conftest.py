"""A real single-node SLURM cluster for the tests (slurm/dev-cluster.sh), and a two-node one.

`slurm_cluster` (session): starts the cluster unless it already runs, puts slurm/bin first on
PATH (its `sacct` answers from the job completion log, which submitit needs to see finished
jobs), and stops the cluster at the end only if it started it. Without root, or when the Slurm
packages cannot be installed, the tests skip with the reason; with DDP_REQUIRE_SLURM=1 (CI,
`make test` there) they fail instead.

`slurm` (function): the same cluster object; jobs that a test submitted through it and that
are still queued when the test ends are cancelled.

`slurm_nodes` (module, for the two-node tests' module): `dev-cluster.sh start --nodes 2`, two
nodes in namespaces on this machine; its commands run on node1 (`dev-cluster.sh exec node1`).
Its own state, munged and ports: it never meets the one-node cluster. Where namespaces or veth
links cannot be made (exit 5) the tests skip, or fail with DDP_REQUIRE_SLURM=1.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "dev-cluster.sh"
SLURM_BIN = REPO / "slurm" / "bin"
STUB_LAUNCH = Path(__file__).resolve().parent / "stub_launch.py"
START_TIMEOUT_S = 600   # includes apt-get update + install on a fresh machine
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs the single-node SLURM dev cluster (root)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slurm)


def _unavailable(reason):
    if os.environ.get("DDP_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM dev cluster required (DDP_REQUIRE_SLURM=1) but unavailable: {reason}",
                    pytrace=False)
    pytest.skip(f"SLURM dev cluster unavailable: {reason}")


def _run(cmd, timeout=60, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


class SlurmCluster:
    """Thin helpers over the Slurm commands, with bounded waits."""

    repo = REPO
    python = sys.executable
    stub_launch = STUB_LAUNCH

    prefix = []            # what runs a Slurm command on the cluster (the host: nothing)

    def __init__(self):
        self.submitted = []

    def run(self, *cmd, timeout=60, **kw):
        """A command where this cluster's clients run (the host, or a node)."""
        return _run([*self.prefix, *map(str, cmd)], timeout=timeout, **kw)

    def sbatch(self, *args, cwd=REPO):
        """`sbatch --parsable ARGS` from `cwd`; returns the job id (as a string)."""
        r = self.run("sbatch", "--parsable", *args, cwd=cwd)
        assert r.returncode == 0, f"sbatch {' '.join(map(str, args))} failed: {r.stderr.strip()}"
        job_id = r.stdout.strip().split(";")[0]
        self.submitted.append(job_id)
        return job_id

    def queued(self, job_id):
        """True while squeue still lists the job (or any element of an array job)."""
        r = self.run("squeue", "-h", "-r", "-j", job_id, "-o", "%i")
        return r.returncode == 0 and bool(r.stdout.strip())

    def states(self, job_id):
        """{job or array element id: state} from sacct (slurm/bin/sacct on the dev cluster)."""
        r = self.run(SLURM_BIN / "sacct", "-n", "-P", "-o", "JobID,State", "-j", job_id)
        assert r.returncode == 0, r.stderr
        out = {}
        for line in r.stdout.splitlines():
            jid, _, state = line.partition("|")
            if "." not in jid:
                out[jid] = state.split()[0] if state else ""
        return out

    def state(self, job_id):
        return self.states(job_id).get(str(job_id), "")

    def wait(self, job_id, timeout=60):
        """Wait until the job (every array element) has left the queue; return its final
        state, or {element: state} for an array job."""
        deadline = time.monotonic() + timeout
        while self.queued(job_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still queued after {timeout}s: {self.states(job_id)}")
            time.sleep(0.3)
        states = self.states(job_id)
        return states.get(str(job_id), states)

    def wait_for_text(self, path, pattern, timeout=60, count=1):
        """Wait until file `path` has `count` matches of regex `pattern`; return its text."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.M)
        text = ""
        while time.monotonic() < deadline:
            try:
                text = Path(path).read_text()
            except FileNotFoundError:
                text = ""
            if len(rx.findall(text)) >= count:
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} x{count} not in {path} after {timeout}s:\n{text}")

    def scancel(self, *args):
        r = self.run("scancel", *args)
        assert r.returncode == 0, r.stderr

    def cancel_leftovers(self):
        left = [j for j in self.submitted if self.queued(j)]
        if left:
            self.run("scancel", *left)
        self.submitted.clear()


class NodesCluster(SlurmCluster):
    """The two-node cluster: Slurm commands run on node1; `on(node, ...)` anywhere."""

    prefix = ["bash", str(SCRIPT), "exec", "node1"]
    nodes = ("node1", "node2")

    def on(self, node, *cmd, timeout=60, **kw):
        return _run(["bash", str(SCRIPT), "exec", node, *map(str, cmd)], timeout=timeout, **kw)

    def script(self, *args, timeout=60):
        """`dev-cluster.sh ARGS` (kill-node, revive-node, ...); asserts it succeeded."""
        r = _run(["bash", str(SCRIPT), *map(str, args)], timeout=timeout)
        assert r.returncode == 0, f"dev-cluster.sh {' '.join(map(str, args))}: {r.stderr}"
        return r

    def eth0_bytes(self):
        """{node: (received, sent)} bytes of each node's eth0, its only link to the others."""
        out = {}
        for node in self.nodes:
            r = self.on(node, "cat", "/proc/net/dev")
            assert r.returncode == 0, r.stderr
            row = next(line for line in r.stdout.splitlines() if line.strip().startswith("eth0:"))
            f = row.split(":", 1)[1].split()
            out[node] = (int(f[0]), int(f[8]))
        return out


def _cluster(args, make):
    """Start the dev cluster (`dev-cluster.sh start ARGS`) unless it runs; yield make(); stop it at
    the end if it was started here. slurm/bin first on PATH meanwhile."""
    if os.geteuid() != 0:
        _unavailable("needs root (installs Debian's slurm packages and runs the daemons)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        _unavailable("Slurm is not installed and there is no apt-get to install it")
    already = _run(["bash", str(SCRIPT), "status", *args]).returncode == 0
    if not already:
        try:
            r = _run(["bash", str(SCRIPT), "start", *args], timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"slurm/dev-cluster.sh start took over {START_TIMEOUT_S}s", pytrace=False)
        if r.returncode in (3, 4, 5):     # 3: apt-get could not install, 4: not root, 5: no namespaces/veth
            _unavailable(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
        if r.returncode != 0:
            pytest.fail(f"slurm/dev-cluster.sh start {' '.join(args)} failed (exit {r.returncode}):\n{r.stderr}",
                        pytrace=False)
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{SLURM_BIN}{os.pathsep}{old_path}"
    try:
        yield make()
    finally:
        os.environ["PATH"] = old_path
        if not already:
            _run(["bash", str(SCRIPT), "stop", *args], timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster():
    yield from _cluster([], SlurmCluster)


@pytest.fixture(scope="module")
def slurm_nodes():
    yield from _cluster(["--nodes", "2"], NodesCluster)


@pytest.fixture
def slurm(slurm_cluster):
    yield slurm_cluster
    slurm_cluster.cancel_leftovers()
