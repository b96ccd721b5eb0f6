"""Under mpiexec (any N >= 2; tests/test_mpi.py runs it at 2, tests/parallel/test_ring_worlds.py
at 3): the hand-written ring all-reduce equals MPI_Allreduce up to summation order, sends
2(N-1)/N of the buffer, trains like the MPI path (float64, rtol 1e-10), and its 16-bit variants
keep the statistics exact, agree bit for bit across ranks and train digits close to float32."""
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from ddp_scratch import backend as B
from ddp_scratch.config import load_config
from ddp_scratch.parallel.ring import RingAllReduce, chunk_bounds
from ddp_scratch.parallel.world import Comm
from ddp_scratch.run.trainer import Options, Trainer

WORLD = MPI.COMM_WORLD
LENGTHS = [1, 2, 3, 7, 8, 1000, 100_003]       # shorter than N (empty chunks), not divisible by N, ...


def ring_of(n, dtype, compress="none", error_feedback=False, exact_tail=0):
    comm = Comm(timeout_s=60)
    return comm, RingAllReduce(comm, n, dtype, compress, error_feedback, exact_tail)


def local_data(n, dtype, seed=0):
    rng = np.random.default_rng(1000 * seed + WORLD.Get_rank())
    return rng.standard_normal(n).astype(dtype)


def same_on_every_rank(x):
    return all(np.array_equal(x, y) for y in WORLD.allgather(x))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", LENGTHS)
def test_ring_equals_mpi_allreduce(n, dtype):
    x = local_data(n, dtype)
    ref = x.copy()
    WORLD.Allreduce(MPI.IN_PLACE, ref, op=MPI.SUM)
    _, ring = ring_of(n, dtype)
    ring.all_reduce_(x)
    rtol = 1e-13 if dtype == "float64" else 1e-5
    err = np.abs(x - ref).max() / max(np.abs(ref).max(), 1e-30)
    print(f"n={n} {dtype} N={WORLD.Get_size()}: ring vs MPI_Allreduce max rel err {err:.1e}")
    np.testing.assert_allclose(x, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    assert same_on_every_rank(x)
    # bandwidth: every chunk but the one a rank owns (reduce-scatter) and the one it receives
    # last (all-gather), so 2(N-1)/N of the buffer up to the uneven chunks
    N, r = WORLD.Get_size(), WORLD.Get_rank()
    b = chunk_bounds(n, N)
    size = [b[c + 1] - b[c] for c in range(N)]
    assert ring.bytes_sent == (2 * n - size[(r + 1) % N] - size[(r + 2) % N]) * np.dtype(dtype).itemsize


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("compress, tol", [("fp16", 2 ** -9), ("bf16", 2 ** -6)])
def test_compressed_ring_is_close_identical_across_ranks_and_keeps_the_tail_exact(compress, tol):
    n, tail = 10_007, 5
    x = local_data(n, "float32", seed=1)
    x[-tail:] = [1e6 + WORLD.Get_rank(), 3, 123457, 0.5, -7]   # counts fp16 cannot hold (max 65504)
    ref = x.astype(np.float64)
    WORLD.Allreduce(MPI.IN_PLACE, ref, op=MPI.SUM)
    _, ring = ring_of(n, "float32", compress, exact_tail=tail)
    ring.all_reduce_(x)
    N = WORLD.Get_size()
    err = np.abs(x[:-tail] - ref[:-tail]).max() / np.abs(ref[:-tail]).max()
    print(f"{compress} N={N}: max error {err:.1e} of the largest sum")
    assert 0 < err < tol * N
    assert np.array_equal(x[-tail:], ref[-tail:].astype(np.float32))    # the statistics: exact
    assert same_on_every_rank(x)
    # the body travels in 2 bytes, the tail in 4
    assert ring.bytes_sent < 2 * (N - 1) / N * (2 * (n - tail) + 4 * tail) + 2 * 4 * 2


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("compress", ["fp16", "bf16"])
def test_error_feedback_puts_back_what_rounding_lost(compress):
    """The same gradient K times: without feedback every step loses the same rounding, so the
    running total drifts K times as far; with it the total stays within about one rounding."""
    n, steps = 4096, 50
    g = local_data(n, "float32", seed=2) * 1e-3
    exact = g.astype(np.float64)
    WORLD.Allreduce(MPI.IN_PLACE, exact, op=MPI.SUM)
    drift = {}
    for ef in (False, True):
        _, ring = ring_of(n, "float32", compress, error_feedback=ef)
        total, buf = np.zeros(n), np.empty(n, np.float32)
        for _ in range(steps):
            buf[...] = g
            ring.all_reduce_(buf)
            total += buf
        drift[ef] = np.abs(total - steps * exact).max() / np.abs(exact).max()
    print(f"{compress}: drift of the running total over {steps} steps: without feedback "
          f"{drift[False]:.2e}, with {drift[True]:.2e} (of the largest sum)")
    assert drift[True] < drift[False] / 10


def run(overrides, comm, steps=25):
    cfg = load_config(None, ["train.dtype=float64", "train.batch_size=50", f"train.max_steps={steps}",
                             "train.epochs=5", "data.tail=pad", "model.hidden=[32,16]",
                             "logging.progress=false", "train.check_every=5", *overrides])
    out = tempfile.mkdtemp(prefix=f"ring{WORLD.Get_rank()}")
    tr = Trainer(cfg, Options(out=out, quiet=True), comm=comm)
    s = tr.run()
    return B.to_numpy(tr.space.params).copy(), s


OPTIMS = {
    "sgd_momentum": ["optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=0.001"],
    "adamw_clip_accumulate": ["optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.01",
                              "train.grad_clip=1.0", "comm.accumulate=2"],
}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", list(OPTIMS))
def test_training_with_the_ring_equals_mpi_allreduce(name):
    ring, s = run([*OPTIMS[name], "comm.algorithm=ring"], Comm(timeout_s=60))
    mpi, s_mpi = run(OPTIMS[name], Comm(timeout_s=60))
    err = np.abs(ring - mpi).max() / np.abs(mpi).max()
    print(f"{name}: ring vs MPI_Allreduce after {s['steps']} steps on {WORLD.Get_size()} ranks: max rel err {err:.2e}")
    np.testing.assert_allclose(ring, mpi, rtol=1e-10, atol=1e-13)
    assert same_on_every_rank(ring)
    assert s["train_loss"] == pytest.approx(s_mpi["train_loss"], rel=1e-10)
    N, nbytes = WORLD.Get_size(), ring.size * 8
    assert s["comm_bytes_per_step_source"] == "counted" and s_mpi["comm_bytes_per_step_source"] == "model"
    assert s["comm_bytes_per_step"] == pytest.approx(2 * (N - 1) / N * nbytes, rel=0.01)


@pytest.mark.mpi(min_size=2)
def test_compressed_training_on_digits_reaches_the_uncompressed_accuracy():
    """The documented deviation: digits MLP, 10 epochs, float32 (README, comm.compress)."""
    def digits(*sets):
        cfg = load_config("experiments/mlp_digits.yaml", ["train.epochs=10", "logging.progress=false", *sets])
        tr = Trainer(cfg, Options(out=tempfile.mkdtemp(prefix=f"dig{WORLD.Get_rank()}"), quiet=True),
                     comm=Comm(timeout_s=60))
        s = tr.run()
        assert same_on_every_rank(B.to_numpy(tr.space.params))
        return s
    base = digits()
    rows = {"none": base}
    for sets in (["comm.compress=fp16"], ["comm.compress=bf16"], ["comm.compress=bf16", "comm.error_feedback=true"]):
        rows[" ".join(sets)] = digits("comm.algorithm=ring", *sets)
    for k, s in rows.items():
        print(f"{k:45s} test accuracy {s['test_accuracy']:.4f}  train loss {s['train_loss']:.5f}  "
              f"bytes/step {s['comm_bytes_per_step']:.0f}")
    for k, s in rows.items():
        assert abs(s["test_accuracy"] - base["test_accuracy"]) <= 0.02, k
        if k != "none":
            assert s["comm_bytes_per_step"] < 0.51 * base["comm_bytes_per_step"]


@pytest.mark.mpi(min_size=2)
@pytest.mark.host_arrays("counts NumPy's host allocations (a device step's temporaries come from CuPy's pool)")
def test_a_compressed_ring_step_allocates_no_arrays(tmp_path):
    from conftest import step_memory
    cfg = load_config(None, ["data.name=synthetic", "data.n_samples=2048", "model.hidden=[256,256]",
                             "train.batch_size=256", "optim.name=adamw", "logging.progress=false",
                             "comm.algorithm=ring", "comm.compress=bf16", "comm.error_feedback=true"])
    tr = Trainer(cfg, Options(out=tempfile.mkdtemp(prefix=f"mem{WORLD.Get_rank()}"), quiet=True),
                 comm=Comm(timeout_s=60))
    i = [0]

    def step():
        tr.train_step(0, i[0] % 4)
        i[0] += 1
    live, peak = step_memory(step)
    print(f"ring bf16 train_step: temporaries peak {peak / 1024:.1f} KiB, live {live} B")
    assert live < 4096 and peak < 128 * 1024
