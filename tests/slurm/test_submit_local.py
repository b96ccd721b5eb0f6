"""`launch.py submit --local --wait`: submitit's local executor runs one task, which runs mpiexec
for the ranks through cli/local.py's Launch. A stop signal to the waiting submit reaches every
rank (they checkpoint and exit) and no process of the job outlives it. Needs no SLURM."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import LAUNCH, ROOT

CFG = "experiments/mlp_digits.yaml"


def start(out, *extra):
    return subprocess.Popen([sys.executable, LAUNCH, "submit", CFG, "--local", "--quiet", "--tasks-per-node", "2",
                             "--time", "10", "--out", str(out), *extra, "--wait"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def left_behind(out):
    """Processes whose command line names the run's folder (submitit's controller and task, mpiexec, ranks)."""
    r = subprocess.run(["pgrep", "-af", str(out)], capture_output=True, text=True)
    return [ln for ln in r.stdout.splitlines() if "pgrep" not in ln]


def clean_up(p, out):
    """After a failed test: no process of this run may go on using the cores."""
    if p.poll() is None:
        p.kill()
    for line in left_behind(out):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.timeout(300)
def test_local_submit_wait_prints_the_result_line(tmp_path):
    out = tmp_path / "run"
    p = start(out, "--set", "train.max_steps=30")
    try:
        stdout, stderr = p.communicate(timeout=200)
    finally:
        clean_up(p, out)
    assert p.returncode == 0, stdout + stderr
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"local job \d+ FINISHED in \d+s: completed: step 30/30, .* samples/s -> "
                        rf"{re.escape(str(out))}/summary.json", last), last
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "preempted"),
                                         (signal.SIGHUP, "preempted")], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_to_local_submit_wait_stops_every_rank(tmp_path, sig, status):
    out = tmp_path / "run"
    p = start(out, "--set", "train.checkpoint_every=20", "--set", "train.epochs=5000")
    try:
        deadline = time.monotonic() + 150   # generous: the machine may be busy
        while not (out / "checkpoint.npz").exists():         # the ranks are training
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.1)
        assert len(left_behind(out)) >= 5            # controller, task, mpiexec, 2 ranks: the check can see them
        if sig == signal.SIGINT:
            os.killpg(p.pid, sig)                     # Ctrl-C: the terminal signals its foreground group
        else:
            p.send_signal(sig)                        # kill, or the terminal closing: submit alone
        stdout, stderr = p.communicate(timeout=120)
    finally:
        clean_up(p, out)
    assert p.returncode == 128 + sig, stdout + stderr
    assert left_behind(out) == []                      # no rank, mpiexec or submitit process remains
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"local job \d+ stopped on {sig.name}; checkpoint {re.escape(str(out))}/checkpoint.npz at step \d+: "
        r"submit again with --resume to continue", lines[0]), stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == status and s["world_size"] == 2     # both ranks stopped at an agreed step


@pytest.mark.timeout(300)
def test_a_second_stop_kills_the_local_job_at_once(tmp_path):
    out = tmp_path / "run"
    p = start(out, "--set", "train.checkpoint_every=20", "--set", "train.epochs=5000")
    try:
        deadline = time.monotonic() + 150   # generous: the machine may be busy
        while not (out / "checkpoint.npz").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.1)
        ranks = [int(ln.split()[0]) for ln in left_behind(out) if "launch.py train" in ln and "mpiexec" not in ln]
        shm = set()
        for pid in ranks:           # MPICH's shared memory of the job, which killed ranks do not remove
            with open(f"/proc/{pid}/maps") as f:
                shm.update(re.findall(r"/dev/shm/mpich_shm_\S+", f.read()))
        assert len(ranks) == 2 and shm
        p.send_signal(signal.SIGTERM)       # two different signals: the same one twice may arrive as one
        p.send_signal(signal.SIGHUP)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        clean_up(p, out)
    assert left_behind(out) == [] and not any(os.path.exists(f) for f in shm)
    lines = stderr.strip().splitlines()
    m = re.fullmatch(r"local job \d+ stopped on (SIGHUP|SIGTERM) \((\d+) process\(es\) killed: asked twice, .*", lines[-1])
    assert len(lines) == 1 and m, stderr
    assert p.returncode == 128 + getattr(signal, m.group(1)) and int(m.group(2)) >= 4   # task, mpiexec, 2 ranks
