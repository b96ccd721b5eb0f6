"""Every optimizer, step by step, against torch.optim on identical gradients (float64), and the
learning-rate schedules. On the active array module (tests/nn/devices.py)."""
import os

import numpy as np
import pytest

from conftest import FIXTURES, require_torch
from devices import dev, host
from jit_settings import kernels  # noqa: F401  (each test with the NumPy path and the numba kernels)
from ddp_scratch.config import OptimConfig
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.optim import build_optimizer, lr_at
from oracle_mlp import OPTIMS, optim_grads, torch_optim_trajectory


def ours(cfg):
    p0, grads = optim_grads()
    space = ParamSpace("float64")
    space.param("p", (len(p0),), "zeros")
    space.build(0)
    space.params[:] = dev(p0)
    opt = build_optimizer(OptimConfig(**cfg), space)
    traj = []
    for g in grads:
        space.grads[:] = dev(g)
        opt.step()
        traj.append(host(space.params).copy())
    return np.array(traj)


@pytest.mark.parametrize("name", list(OPTIMS))
def test_optimizer_matches_torch_fixture(name):
    ref = np.load(os.path.join(FIXTURES, "mlp_reference.npz"))[f"optim.{name}"]
    got = ours(OPTIMS[name])
    print(f"{name}: max rel err vs fixture {np.abs(got - ref).max() / np.abs(ref).max():.2e}")
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", list(OPTIMS))
def test_optimizer_matches_live_torch(name):
    torch = require_torch()
    p0, grads = optim_grads()
    ref = torch_optim_trajectory(torch, OPTIMS[name], p0, grads)
    got = ours(OPTIMS[name])
    print(f"{name}: max abs err vs torch.optim {np.abs(got - ref).max():.2e}")
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)


def test_weight_decay_ranges_skip_excluded_params():
    space = ParamSpace("float64")
    space.param("w", (3,), "ones")
    space.param("b", (2,), "ones", decay=False)
    space.build(0)
    opt = build_optimizer(OptimConfig(name="adamw", lr=0.1, weight_decay=0.5), space)
    space.grads[:] = 0
    opt.step()
    np.testing.assert_allclose(host(space.params), [0.95, 0.95, 0.95, 1.0, 1.0])


def test_optimizer_state_round_trip():
    cfg = OptimConfig(name="adam", lr=0.01, amsgrad=True)
    a = ours(dict(name="adam", lr=0.01, amsgrad=True))
    space = ParamSpace("float64")
    space.param("p", (40,), "zeros")
    space.build(0)
    p0, grads = optim_grads()
    space.params[:] = dev(p0)
    opt = build_optimizer(cfg, space)
    for g in grads[:3]:
        space.grads[:] = dev(g)
        opt.step()
    state = {k: np.array(host(v)) if not isinstance(v, int) else v for k, v in opt.state_dict().items()}
    opt2 = build_optimizer(cfg, space)
    opt2.load_state_dict(state)
    for g in grads[3:]:
        space.grads[:] = dev(g)
        opt2.step()
    np.testing.assert_array_equal(host(space.params), a[-1])


def test_schedules():
    c = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr=0.1)
    assert lr_at(c, 0, 110) == pytest.approx(0.1)
    assert lr_at(c, 9, 110) == pytest.approx(1.0)
    assert lr_at(c, 10, 110) == pytest.approx(1.0)
    assert lr_at(c, 60, 110) == pytest.approx(0.55)
    assert lr_at(c, 110, 110) == pytest.approx(0.1)
    s = OptimConfig(lr=1.0, schedule="step", step_size=5, gamma=0.5)
    assert [lr_at(s, i, 20) for i in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_at(OptimConfig(lr=0.3), 1000, 10) == 0.3
