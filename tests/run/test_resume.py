"""Exact checkpoint/resume: a run split with --stop-at-step (or stopped by a preemption signal)
and resumed ends with parameters equal BIT FOR BIT to an uninterrupted run, on 1 and 2 ranks."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import LAUNCH, ROOT, mpiexec
from ddp_scratch.run import checkpoint as ckpt

ARGS = ["experiments/mlp_digits.yaml", "--quiet", "--set", "train.epochs=3", "--set", "optim.name=adamw",
        "--set", "optim.lr=0.003", "--set", "optim.schedule=cosine", "--set", "optim.warmup_steps=5",
        "--set", "train.grad_clip=1.0"]


def params(out):
    return np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False)["params"]


@pytest.mark.parametrize("ranks", [0, 2])
def test_stop_and_resume_is_bit_exact(tmp_path, launch, ranks):
    full, split = tmp_path / "full", tmp_path / "split"
    assert launch("train", *ARGS, "--out", full, ranks=ranks).returncode == 0
    r = launch("train", *ARGS, "--out", split, "--stop-at-step", 23, ranks=ranks)   # mid-epoch
    assert r.returncode == 0, r.stderr
    _, meta = ckpt.load(str(split / "checkpoint.npz"))
    assert meta["step"] == 23 and meta["epoch"] == 1 and meta["step_in_epoch"] == 4
    assert json.loads((split / "summary.json").read_text())["status"] == "stopped"
    r = launch("train", *ARGS, "--out", split, "--resume", ranks=ranks)
    assert r.returncode == 0, r.stderr
    s = json.loads((split / "summary.json").read_text())
    assert s["resumed_from_step"] == 23 and s["steps"] == 57 and s["status"] == "completed"
    assert np.array_equal(params(full), params(split)), "resumed run differs from the uninterrupted one"


def test_resume_across_world_sizes_and_longer_runs(tmp_path, launch):
    """The data order depends on the global batch only, so 1 rank may continue a 2-rank run, and
    the run length (epochs / max_steps) may grow on resume."""
    out = tmp_path / "o"
    assert launch("train", *ARGS, "--out", out, "--stop-at-step", 10, ranks=2).returncode == 0
    r = launch("train", *ARGS, "--out", out, "--resume", "--set", "train.epochs=4")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == 76


@pytest.mark.parametrize("ranks", [0, 2])
def test_resume_without_checkpoint_starts_fresh_and_says_so(tmp_path, launch, ranks):
    """Resume-if-there-is-one is what a requeued job needs; a person who expected a checkpoint
    learns there was none (once, also with --quiet)."""
    r = launch("train", *ARGS, "--out", tmp_path / "new", "--resume", "--set", "train.max_steps=3", ranks=ranks)
    assert r.returncode == 0 and json.loads((tmp_path / "new" / "summary.json").read_text())["steps"] == 3
    assert r.stdout == f"note: --resume: no checkpoint in {tmp_path / 'new'} yet; starting from step 0\n"
    r = launch("train", *ARGS, "--out", tmp_path / "new", "--resume", "--set", "train.max_steps=4", ranks=ranks)
    assert r.returncode == 0 and "no checkpoint" not in r.stdout


def _signal_one_rank(p, pre, sig):
    deadline = time.time() + 60          # the first checkpoint proves both ranks are in the loop
    while not (pre / "checkpoint.npz").exists():
        assert time.time() < deadline and p.poll() is None, "training did not start"
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-f", "--", f"--out {pre}"], capture_output=True, text=True).stdout.split()
    pids = [int(x) for x in ranks if int(x) != p.pid]
    assert len(pids) >= 2, "both ranks should be running"
    os.kill(max(pids), getattr(signal, sig))      # only one rank sees the signal
    p.wait(timeout=60)


@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGTERM"])
def test_preemption_signal_to_one_rank_checkpoints_all_and_resumes_exactly(tmp_path, launch, sig):
    long = [*ARGS, "--set", "train.epochs=500", "--set", "train.checkpoint_every=50"]
    ref, pre = tmp_path / "ref", tmp_path / "pre"
    cmd = [mpiexec(), "-n", "2", sys.executable, LAUNCH, "train", *long, "--out", str(pre)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, WANDB_MODE="disabled"), start_new_session=True)
    try:
        _signal_one_rank(p, pre, sig)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    err = p.stderr.read()
    assert p.returncode == 75, err               # EX_TEMPFAIL: checkpoint written, requeue me
    assert "checkpoint written at step" in err and err.count("checkpoint written") == 1
    _, meta = ckpt.load(str(pre / "checkpoint.npz"))
    stopped = meta["step"]
    assert 0 < stopped < 500 * 19
    assert json.loads((pre / "summary.json").read_text())["status"] == "preempted"
    # The resumed run and the uninterrupted reference (the same 9500-step config, so the same cosine
    # schedule) both stop 40 steps past the preemption: two epoch boundaries and the optimizer's
    # state carried over, without training the 9500 steps twice.
    end = stopped + 40
    r = launch("train", *long, "--out", pre, "--resume", "--stop-at-step", end, ranks=2, timeout=300)
    assert r.returncode == 0, r.stderr
    assert launch("train", *long, "--out", ref, "--stop-at-step", end, ranks=2, timeout=300).returncode == 0
    steps = [json.loads((out / "summary.json").read_text())["steps"] for out in (pre, ref)]
    print(f"{sig}: stopped at step {stopped}, resumed to {steps[0]}")
    assert steps == [end, end]
    assert np.array_equal(params(ref), params(pre))
