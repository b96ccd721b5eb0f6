"""`launch.py submit` on the dev cluster: what is refused before anything is queued, what --wait
reports (the job's final SLURM state and rank 0's result line, or the reason it failed), and a
stop signal to the waiting submit cancelling the job."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import LAUNCH, ROOT

CFG = "experiments/mlp_digits.yaml"


def submit(*args, timeout=240):
    return subprocess.run([sys.executable, LAUNCH, "submit", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def job_id(text):
    return re.search(r"submitted job (\d+)", text).group(1)


@pytest.mark.timeout(300)
def test_submit_refuses_a_job_bound_to_fail_in_one_line_and_queues_nothing(slurm, tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    (done / "checkpoint.npz").write_bytes(b"a finished run")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("model:\n  name: mlp\ntrain:\n  epochs: many\n")
    name = f"preflight-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "new"
    cases = [
        ([CFG, "--out", done], "checkpoint.npz already exists: pass --resume"),
        ([bad_cfg, "--out", out], "train.epochs"),
        ([CFG, "--out", out, "--set", "data.name=mnist", "--set", f"data.path={tmp_path}/nowhere"], "nowhere"),
        ([CFG, "--out", out, "--tasks-per-node", "4", "--set", "train.batch_size=2"], "train.batch_size"),
        ([CFG, "--out", out, "--nodes", "0"], "argument --nodes: expected a number of nodes (an integer >= 1), got '0'"),
        ([CFG, "--out", out, "--tasks-per-node", "0"], "argument --tasks-per-node: expected a number of tasks (an integer >= 1), got '0'"),
        ([CFG, "--out", out, "--cpus-per-task", "0"], "argument --cpus-per-task: expected a number of cores (an integer >= 1), got '0'"),
        ([CFG, "--out", out, "--time", "0"], "argument --time: expected minutes (an integer >= 1), got '0'"),
        ([CFG, "--out", out, "--gpus-per-node", "-1"], "argument --gpus-per-node: expected a number of GPUs (an integer >= 0), got '-1'"),
        ([CFG, "--out", out, "--max-requeue", "-1"], "argument --max-requeue: expected a number of requeues (an integer >= 0), got '-1'"),
        ([CFG, "--out", out, "--signal-delay", "-5"], "argument --signal-delay: expected seconds (an integer >= 0), got '-5'"),
        ([CFG, "--out", out, "--time", "2", "--signal-delay", "120"], "fewer seconds than the time limit"),
    ]
    for args, expected in cases:
        r = submit(*args, "--job-name", name, "--wait")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert expected in lines[0], (args, lines[0])
        assert "submitted" not in r.stdout
    assert (done / "checkpoint.npz").read_bytes() == b"a finished run"      # nothing good overwritten
    assert not (done / "submitit").exists() and not out.exists()
    q = subprocess.run(["squeue", "-h", "-t", "all", "-n", name, "-o", "%i"], capture_output=True, text=True)
    assert q.returncode == 0 and q.stdout.strip() == "", f"jobs were queued: {q.stdout}"


@pytest.mark.timeout(300)
def test_submit_wait_reports_the_final_state_and_rank0_result_line(slurm, tmp_path):
    """Once the result files exist the job may still be RUNNING or COMPLETING: --wait returns
    only when sacct calls it COMPLETED, with `train`'s one-line result."""
    out = tmp_path / "run"
    r = submit(CFG, "--quiet", "--tasks-per-node", 2, "--time", 10, "--out", out,
               "--set", "train.max_steps=30", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    job = job_id(r.stdout)
    assert slurm.state(job) == "COMPLETED"                 # final when submit returned, not later
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"job {job} COMPLETED in \d+s: completed: step 30/30, train_loss [\d.]+ \(mean of epoch 2's first 11 steps\), "
                        rf"test_accuracy [\d.]+, [\d.]+k? samples/s -> {re.escape(str(out))}/summary.json",
                        last), last
    assert "{" not in r.stdout and r.stderr == ""
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


@pytest.mark.timeout(300)
def test_submit_wait_says_why_a_job_failed_in_one_line(slurm, tmp_path):
    # The ranks refuse at start-up (a dataset far larger than the node's memory: checked by the
    # trainer, not before queueing) ...
    out = tmp_path / "big"
    r = submit(CFG, "--quiet", "--tasks-per-node", 2, "--time", 10, "--out", out,
               "--set", "data.name=synthetic", "--set", "data.n_samples=100000000", "--wait")
    job = job_id(r.stdout)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    m = re.fullmatch(rf"error: job {job} FAILED: ConfigError: the synthetic data needs about .* \(log: (\S+)\)",
                     lines[0])
    assert m and os.path.exists(m.group(1)), lines[0]
    # ... and a job whose srun cannot start the ranks at all writes no result: the reason is srun's
    out = tmp_path / "srun"
    r = submit(CFG, "--quiet", "--time", 10, "--out", out, "--srun-arg=--mpi=nonesuch", "--wait")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert re.fullmatch(rf"error: job {job_id(r.stdout)} FAILED: srun: error: .*nonesuch.* \(log: \S+\)", lines[0])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_to_the_waiting_submit_cancels_the_job(slurm, tmp_path, sig):
    out, name = tmp_path / "run", f"cancel-{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([sys.executable, LAUNCH, "submit", CFG, "--quiet", "--tasks-per-node", "2", "--time", "10",
                          "--job-name", name, "--out", str(out), "--set", "train.checkpoint_every=20",
                          "--set", "train.epochs=5000", "--wait"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 150   # generous: the machine may be busy
        while not (out / "checkpoint.npz").exists():            # training is under way
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.2)
        os.killpg(p.pid, sig)           # as Ctrl-C does (to the terminal's foreground group), or `kill`
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            subprocess.run(["scancel", "-n", name])
    job = job_id(stdout)
    slurm.submitted.append(job)
    assert p.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert re.fullmatch(rf"job {job} cancelled on {sig.name} \(scancel {job}\): CANCELLED; .*--resume.*", lines[0])
    assert not slurm.queued(job) and slurm.state(job) == "CANCELLED"
    # the dev cluster's ranks run here: `python -m submitit.core._submit OUT/submitit` under srun
    ranks = subprocess.run(["pgrep", "-af", str(out)], capture_output=True, text=True).stdout
    assert ranks.strip() == "", ranks
