"""ZeRO-1 through launch.py: on 3 ranks (uneven slices) it trains to one rank's parameters
(float64, rtol 1e-10; the sums differ in order only) with a third of the optimizer state per
rank, and a run stopped on 2 ranks with ZeRO resumes on 3 ranks to the parameters of the
uninterrupted run (tests/mpi/test_zero.py resumes one on 1 rank without ZeRO)."""
import json

import numpy as np
import pytest

from ddp_scratch.run import checkpoint as ckpt

OPTIMS = {
    "sgd_momentum": ["--set", "optim.name=sgd", "--set", "optim.momentum=0.9", "--set", "train.grad_clip=0.5"],
    "adamw": ["--set", "optim.name=adamw", "--set", "optim.lr=0.003", "--set", "optim.weight_decay=0.01",
              "--set", "train.grad_clip=1.0"],
}
N = 17226      # parameters of experiments/mlp_digits.yaml's MLP 64-128-64-10: 5742 per rank on 3


def args(name):     # the config's cosine schedule with warm-up, float64, 24 steps
    return ["experiments/mlp_digits.yaml", "--quiet", "--set", "train.dtype=float64", "--set", "train.max_steps=24",
            *OPTIMS[name]]


def params(out):
    return ckpt.load(str(out / "checkpoint.npz"))[0]["params"]


def summary(out):
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One rank without ZeRO, in this process (no start-up to wait for): the run the others must equal."""
    from ddp_scratch.config import load_config
    from ddp_scratch.parallel.world import Comm
    from ddp_scratch.run.trainer import Options, Trainer
    outs = {}
    for name in OPTIMS:
        a = args(name)
        outs[name] = tmp_path_factory.mktemp(f"ref_{name}")
        cfg = load_config(a[0], [v for k, v in zip(a, a[1:]) if k == "--set"])
        Trainer(cfg, Options(out=str(outs[name]), quiet=True, signals=False), comm=Comm(serial=True)).run()
    return outs


@pytest.mark.parametrize("name", list(OPTIMS))
def test_three_ranks_with_zero_equal_one_rank(tmp_path, launch, reference, name):
    r = launch("train", *args(name), "--out", tmp_path, "--overwrite", "--set", "optim.zero=1", ranks=3)
    assert r.returncode == 0, r.stderr
    ref, got = params(reference[name]), params(tmp_path)
    print(f"{name}: ZeRO-1 on 3 ranks vs 1 rank: max rel err {np.abs(got - ref).max() / np.abs(ref).max():.2e}")
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)
    s, s1 = summary(tmp_path), summary(reference[name])
    arrays = 1 if name == "sgd_momentum" else 2
    assert s1["optim_state_bytes_per_rank"] == arrays * N * 8 and s1["optim_zero"] == 0
    assert s["optim_state_bytes_by_rank"] == [arrays * N // 3 * 8] * 3 and s["optim_zero"] == 1
    assert s["test_loss"] == pytest.approx(s1["test_loss"], rel=1e-10)


def test_stopped_on_two_ranks_resumes_on_three(tmp_path, launch, reference):
    stop = tmp_path / "stop"
    r = launch("train", *args("adamw"), "--out", stop, "--set", "optim.zero=1", "--stop-at-step", 10, ranks=2)
    assert r.returncode == 0, r.stderr
    arrays, meta = ckpt.load(str(stop / "checkpoint.npz"))
    assert meta["step"] == 10 and arrays["opt.m"].shape == arrays["opt.v"].shape == (N,)   # the whole state
    r = launch("train", *args("adamw"), "--out", stop, "--resume", "--set", "optim.zero=1", ranks=3)
    assert r.returncode == 0, r.stderr
    assert summary(stop)["resumed_from_step"] == 10 and summary(stop)["steps"] == 24
    np.testing.assert_allclose(params(stop), params(reference["adamw"]), rtol=1e-10, atol=1e-13)
