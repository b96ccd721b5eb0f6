"""Nothing lost, nothing hung: a failing, killed or frozen rank ends the whole job within a bounded
time with one clear message; non-finite values follow the policy; diverged ranks are caught;
writes are atomic; nothing is loaded through pickle."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, mpiexec, run_group
from ddp_scratch.run import checkpoint as ckpt

FAULT = os.path.join(ROOT, "tests", "scripts", "fault.py")
BASE = ["train", "experiments/mlp_digits.yaml", "--quiet", "--set", "comm.timeout_s=3",
        "--set", "train.checkpoint_every=2", "--set", "train.check_every=4"]


def fault(kind, tmp_path, rank=1, step=5, extra=(), timeout=60, ranks=2):
    out = tmp_path / "out"
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, FAULT, kind, str(rank), str(step), "--", *BASE,
           "--out", str(out), *extra]
    t0 = time.monotonic()
    r = run_group(cmd, timeout=timeout, cwd=ROOT, env=dict(os.environ, WANDB_MODE="disabled"))
    return r, time.monotonic() - t0, out


def assert_checkpoint_intact(out, max_step):
    arrays, meta = ckpt.load(str(out / "checkpoint.npz"))
    assert 0 < meta["step"] <= max_step and np.isfinite(arrays["params"]).all()


def test_uncaught_error_in_one_rank_aborts_the_world(tmp_path):
    r, took, out = fault("raise", tmp_path)
    print(f"raise: exit {r.returncode} after {took:.1f}s")
    assert r.returncode != 0 and took < 20
    assert r.stderr.count("error: rank 1: RuntimeError: injected failure; aborting all 2 ranks") == 1
    assert r.stderr.count("Traceback") == 1
    assert_checkpoint_intact(out, 4)


@pytest.mark.parametrize("kind", ["stop", "sleep"])
def test_frozen_or_stuck_rank_ends_the_job_after_the_timeout(tmp_path, kind):
    r, took, out = fault(kind, tmp_path)
    print(f"{kind}: exit {r.returncode} after {took:.1f}s: {r.stderr.strip().splitlines()[:1]}")
    assert r.returncode != 0 and took < 3 + 15
    assert re.search(r"gradient all-reduce at step 6 did not complete within comm.timeout_s=3s: "
                     r"rank\(s\) \[1\] did not arrive", r.stderr)
    assert_checkpoint_intact(out, 4)


def test_a_rank_frozen_outside_the_gradient_all_reduce_is_named_among_three(tmp_path):
    """Every collective carries a heartbeat, not only the gradient all-reduce: with three ranks
    the one that froze in an evaluation is named (with two, the missing one is the other anyway)."""
    r, took, out = fault("stop-eval", tmp_path, rank=2, ranks=3)
    print(f"stop-eval: exit {r.returncode} after {took:.1f}s: {r.stderr.strip().splitlines()[:1]}")
    assert r.returncode != 0 and took < 3 + 20
    assert re.search(r"at step \d+ did not complete within comm.timeout_s=3s: rank\(s\) \[2\] did not arrive",
                     r.stderr), r.stderr


def test_killed_rank_ends_the_job(tmp_path):
    r, took, out = fault("kill", tmp_path)
    print(f"kill: exit {r.returncode} after {took:.1f}s")
    assert r.returncode != 0 and took < 15
    assert_checkpoint_intact(out, 4)


def test_silent_divergence_is_caught_and_named(tmp_path):
    r, took, out = fault("diverge", tmp_path, step=5)
    print(f"diverge: exit {r.returncode}: {r.stderr.strip()}")
    assert r.returncode == 5 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "ranks diverged at step 8: parameters on rank(s) [1] differ from rank 0" in r.stderr


def test_nonfinite_abort_names_step_and_first_layer(tmp_path):
    r, _, out = fault("nan", tmp_path, step=5)
    assert r.returncode == 4 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("error: non-finite loss at step 6; first non-finite gradient in fc0.W "
                                "(train.nonfinite=abort; try a lower optim.lr or train.nonfinite=skip)")
    assert_checkpoint_intact(out, 4)


def test_nonfinite_skip_drops_the_step_on_all_ranks_and_continues(tmp_path):
    r, _, out = fault("nanloss", tmp_path, step=5, extra=["--set", "train.nonfinite=skip",
                                                          "--set", "train.max_steps=12"])
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped_steps"] == 1 and s["steps"] == 12 and np.isfinite(s["train_loss"])


def test_nonfinite_skip_gives_up_after_max_skips(tmp_path):
    r, _, out = fault("nan", tmp_path, step=5, extra=["--set", "train.nonfinite=skip", "--set", "train.max_skips=3",
                                                      "--set", "train.check_every=0"])
    assert r.returncode == 4
    assert "4 consecutive steps skipped (train.max_skips=3)" in r.stderr



@pytest.mark.parametrize("policy", ["abort", "skip"])
def test_nonfinite_gradient_behind_a_finite_loss_is_caught_at_its_step(tmp_path, policy):
    """A backward can make inf/NaN while the loss is finite (a plug-in's derivative at a kink, an
    overflowing product): the check on the summed gradient, every step, clipping or not, catches it
    before the update. abort names the step and layer; skip leaves parameters and optimizer state
    as they were (the next step's loss would otherwise be the first to show it, one step late)."""
    from ddp_scratch.config import load_config
    from ddp_scratch.parallel.world import Comm
    from ddp_scratch.run.trainer import NonFinite, Options, Trainer
    cfg = load_config(os.path.join(ROOT, "experiments", "mlp_digits.yaml"),
                      ["logging.progress=false", "optim.name=adamw", f"train.nonfinite={policy}"])
    tr = Trainer(cfg, Options(out=str(tmp_path), quiet=True, signals=False), comm=Comm(serial=True))
    tr.skips, tr.step = 0, 3
    tr.train_step(0, 0)                        # optimizer state exists and is non-zero
    backward = tr.model.backward

    def poisoned():
        backward()
        tr.space.named()["fc1.W"].grad[5, 7] = np.inf
    tr.model.backward = poisoned
    from ddp_scratch import backend as B

    def host(v):
        return v if isinstance(v, (int, float)) else B.to_numpy(v)
    before = B.to_numpy(tr.space.params).copy(), {k: np.array(host(v)) for k, v in tr.opt.state_dict().items()}
    if policy == "abort":
        with pytest.raises(NonFinite, match=r"^non-finite gradient norm at step 4; first non-finite gradient in fc1\.W "):
            tr.train_step(0, 1)
        return
    stats, _, _ = tr.train_step(0, 1)
    assert np.isfinite(stats[0]) and tr.state.skipped == 1 and tr.skips == 1
    np.testing.assert_array_equal(B.to_numpy(tr.space.params), before[0])
    for k, v in tr.opt.state_dict().items():
        np.testing.assert_array_equal(host(v), before[1][k])

WRITER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from ddp_scratch.run import checkpoint as ckpt
big = np.zeros(20_000_000, dtype=np.float32)
i = 0
while True:
    i += 1
    big[:] = i
    ckpt.save({path!r}, {{"params": big}}, {{"step": i}})
    print(i, flush=True)
"""


def test_killing_a_writer_mid_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = str(tmp_path / "checkpoint.npz")
    p = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, path=path)],
                         stdout=subprocess.PIPE, text=True)
    try:
        p.stdout.readline()                     # one complete checkpoint exists
        for k in range(4):
            time.sleep(0.05 + 0.07 * k)         # then kill at different points of later writes
            p.send_signal(signal.SIGSTOP)
            arrays, meta = ckpt.load(path)      # whatever is at the path is complete
            assert (arrays["params"] == meta["step"]).all()
            p.send_signal(signal.SIGCONT)
        p.kill()
        p.wait()
        arrays, meta = ckpt.load(path)
        assert (arrays["params"] == meta["step"]).all()
        print(f"last complete checkpoint after SIGKILL: step {meta['step']}")
        leftovers = [f for f in os.listdir(tmp_path) if f != "checkpoint.npz"]
        assert all(f.endswith(".tmp") for f in leftovers)   # a killed write leaves only its temp file
    finally:
        p.kill()


def test_no_code_is_loaded_from_files():
    """No pickle loading anywhere in the package: npz with allow_pickle=False, YAML safe_load."""
    bad = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "ddp_scratch")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(dirpath, f)).read()
                for pat in (r"allow_pickle\s*=\s*True", r"\bpickle\.loads?\(", r"yaml\.load\(", r"yaml\.unsafe_load",
                            r"\bcloudpickle\b", r"\beval\("):
                    bad += [f"{f}: {pat}" for _ in re.finditer(pat, text)]
    assert not bad, bad
