"""The fused numba optimizer kernels (nn/optim_kernels.py) against the NumPy path they replace
(nn/optim.py), bit for bit: every option combination of SGD, Adam/AdamW and RMSProp, float32 and
float64, over a buffer of odd size whose weight-decay runs cross the kernels' parallel chunks,
on the whole buffer and on a ZeRO-1 slice. Also: a fused step allocates no array, and a resume
from the optimizer's state is exact. (test_optim.py and test_optim_plugins.py run their torch
and fixture comparisons with the kernels forced too.)"""
import itertools
import os

import numpy as np
import pytest

from conftest import ROOT, step_memory
from ddp_scratch.nn import jit
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.optim import SGD, Adam, RMSProp
from ddp_scratch.nn.optim_kernels import CHUNK

pytestmark = [pytest.mark.host_arrays("numba kernels run on host NumPy arrays only"),
              pytest.mark.skipif(not jit._numba(), reason="numba does not import here")]

SIZES = (CHUNK + 1001, 777, CHUNK + 3)        # decays, does not, decays: 2 chunk edges, 3 runs
STEPS, LRS = 3, (0.05, 0.02, 0.03)            # a schedule: each step its own lr

SGD_OPTS = [dict(momentum=mu, nesterov=nest, dampening=damp, weight_decay=wd, maximize=mx)
            for mu, nest, damp, wd, mx in itertools.product((0.0, 0.9), (False, True), (0.0, 0.3), (0.0, 0.01),
                                                            (False, True)) if not (nest and (not mu or damp))]
ADAM_OPTS = [dict(amsgrad=ams, decoupled=dec, weight_decay=wd, maximize=mx, betas=(0.8, 0.99))
             for ams, dec, wd, mx in itertools.product((False, True), (False, True), (0.0, 0.05), (False, True))]
RMS_OPTS = [dict(centered=c, momentum=mu, weight_decay=wd, maximize=mx, alpha=0.9)
            for c, mu, wd, mx in itertools.product((False, True), (0.0, 0.8), (0.0, 0.01), (False, True))]
CASES = [(SGD, o) for o in SGD_OPTS] + [(Adam, o) for o in ADAM_OPTS] + [(RMSProp, o) for o in RMS_OPTS]


def space(dtype, seed=0):
    s = ParamSpace(dtype)
    for name, n in zip(("w1", "b1", "w2"), SIZES):
        s.param(name, (n,), "normal:1", decay=name != "b1")
    return s.build(seed)


@pytest.fixture
def setting():
    before = jit.setting()
    yield jit.use
    jit.use(before)


def two_steppers(cls, opts, dtype, shard=None):
    """The same optimizer twice on identical buffers: one for the NumPy path, one for the kernel."""
    out = []
    for _ in range(2):
        s = space(dtype)
        out.append((cls(s.shard(*shard) if shard else s, 0.0, **opts), s))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_match_the_numpy_path_bit_for_bit(dtype, setting):
    rng = np.random.default_rng(7)
    grads = rng.standard_normal((STEPS, sum(SIZES))).astype(dtype)
    worst = 0.0
    for (cls, opts), shard in itertools.product(CASES, [None, (CHUNK - 5, sum(SIZES) - 2)]):
        (ref, _), (fused, _) = two_steppers(cls, opts, dtype, shard)
        lo, hi = shard or (0, sum(SIZES))
        for g, lr in zip(grads, LRS):
            for opt, kind in ((ref, "numpy"), (fused, "numba")):
                setting(kind)
                opt.g[...] = g[lo:hi]
                opt.step(lr)
        worst = max(worst, float(np.abs(ref.p - fused.p).max()))
        for name in ref.state_names:
            np.testing.assert_array_equal(getattr(fused, name), getattr(ref, name),
                                          err_msg=f"{cls.__name__} {opts} {name}")
        np.testing.assert_array_equal(fused.p, ref.p, err_msg=f"{cls.__name__} {opts} shard={shard}")
        assert fused.t == ref.t == STEPS
    print(f"{len(CASES)} optimizer settings x 2 layouts, {dtype}: max |kernel - numpy| = {worst:.1e}")


def test_a_fused_step_allocates_nothing(setting):
    setting("numba")
    for cls, opts in [(SGD, dict(momentum=0.9, weight_decay=0.01)), (Adam, dict(amsgrad=True, decoupled=True,
                                                                                  weight_decay=0.1)),
                      (RMSProp, dict(momentum=0.9, centered=True))]:
        s = space("float32")
        opt = cls(s, 1e-3, **opts)
        s.grads[...] = 0.5
        live, peak = step_memory(opt.step)
        print(f"fused {cls.__name__} step on {s.n_params} float32 parameters: temporaries peak "
              f"{peak / 1024:.1f} KiB, live {live} B")
        assert live < 1024 and peak < 64 * 1024      # one parameter-sized temporary would be 144 KiB


@pytest.mark.parametrize("cls, opts", [(SGD, dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
                                       (Adam, dict(amsgrad=True, decoupled=True, weight_decay=0.1)),
                                       (RMSProp, dict(momentum=0.5, centered=True))])
def test_a_resume_from_the_state_is_exact(cls, opts, setting):
    setting("numba")
    grads = np.random.default_rng(2).standard_normal((4, sum(SIZES))).astype(np.float32)
    s = space("float32")
    whole = cls(s, 0.01, **opts)
    for g in grads:
        s.grads[...] = g
        whole.step()
    s2 = space("float32")
    first = cls(s2, 0.01, **opts)
    for g in grads[:2]:
        s2.grads[...] = g
        first.step()
    state = {k: v.copy() if hasattr(v, "copy") else v for k, v in first.state_dict().items()}
    s3 = space("float32")
    s3.params[...] = s2.params
    second = cls(s3, 0.01, **opts)
    second.load_state_dict(state)
    for g in grads[2:]:
        s3.grads[...] = g
        second.step()
    np.testing.assert_array_equal(s3.params, s.params)


def test_a_checkpoint_resume_with_the_kernels_is_bit_exact(tmp_path, setting):
    """The trainer (in this process) with kernels: numba, every optimizer and MLP kernel at every
    size: a run stopped mid-epoch and resumed from its checkpoint ends with the parameters of the
    uninterrupted run, bit for bit."""
    import json
    from ddp_scratch.config import load_config
    from ddp_scratch.parallel.world import Comm
    from ddp_scratch.run.trainer import Options, Trainer
    cfg = load_config(f"{ROOT}/experiments/mlp_digits.yaml", [
        "kernels=numba", "train.epochs=1", "optim.name=adamw", "optim.lr=0.003", "train.grad_clip=1.0"])

    def run(out, **opts):
        tr = Trainer(cfg, Options(out=str(out), quiet=True, signals=False, **opts), comm=Comm(serial=True))
        tr.run()
        os.close(tr.lock)          # the folder's lock is held until the process ends: hand it on
    run(tmp_path / "full")
    run(tmp_path / "split", stop_at_step=9)
    run(tmp_path / "split", resume=True)
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 9 and summary["kernels"].startswith("numba ")
    got, want = (np.load(tmp_path / d / "checkpoint.npz", allow_pickle=False)["params"] for d in ("split", "full"))
    assert np.array_equal(got, want), "resumed run differs from the uninterrupted one"
