"""The plug-in optimizers of examples/optimizers, built through the public path (optim.name as
path/file.py:Class, their keys under optim.options): RAdam step by step against torch.optim.RAdam,
Lion against its update written out in NumPy here (torch has none), both in float64 over enough
steps to cross RAdam's switch from its SGD phase to the rectified one, with a learning rate that
changes per step (a schedule), weight decay on some parameters only, and maximize. Both leave
nothing allocated behind a step, and resume from their state_dict exactly. On the active array
module (tests/nn/devices.py)."""
import numpy as np
import pytest

from conftest import ROOT, require_torch, step_memory
from devices import dev, host
from jit_settings import kernels  # noqa: F401  (each test with the NumPy path and the numba kernels)
from ddp_scratch.config import load_config
from ddp_scratch.nn.flat import ParamSpace
from ddp_scratch.nn.optim import build_optimizer

RADAM = f"{ROOT}/examples/optimizers/radam.py:RAdam"
LION = f"{ROOT}/examples/optimizers/lion.py:Lion"
N_DECAY, N_FREE, STEPS = 30, 10, 12           # parameters with and without weight decay; steps


def problem(seed=3):
    rng = np.random.default_rng(seed)
    p0 = rng.normal(size=N_DECAY + N_FREE)
    grads = rng.normal(size=(STEPS, N_DECAY + N_FREE))
    lrs = 0.01 * (1 + np.arange(STEPS)) / STEPS                  # a warm-up: step(lr) gets a new lr each time
    return p0, grads, lrs


def ours(overrides, p0, grads, lrs):
    cfg = load_config(None, overrides)
    space = ParamSpace("float64")
    space.param("w", (N_DECAY,), "zeros")
    space.param("b", (N_FREE,), "zeros", decay=False)
    space.build(0)
    space.params[:] = dev(p0)
    opt = build_optimizer(cfg.optim, space)
    traj = []
    for g, lr in zip(grads, lrs):
        space.grads[:] = dev(g)
        opt.step(lr)
        traj.append(host(space.params).copy())
    return np.array(traj), opt, space


def torch_radam(torch, p0, grads, lrs, betas, eps, wd, decoupled, maximize):
    w = torch.nn.Parameter(torch.tensor(p0[:N_DECAY]))
    b = torch.nn.Parameter(torch.tensor(p0[N_DECAY:]))
    opt = torch.optim.RAdam([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=lrs[0], betas=betas, eps=eps,
                            weight_decay=wd, decoupled_weight_decay=decoupled, maximize=maximize)
    out = []
    for g, lr in zip(grads, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad, b.grad = torch.tensor(g[:N_DECAY]), torch.tensor(g[N_DECAY:])
        opt.step()
        out.append(np.concatenate([w.detach().numpy(), b.detach().numpy()]))
    return np.array(out)


@pytest.mark.parametrize("decoupled, wd, maximize, betas", [
    (False, 0.0, False, (0.9, 0.999)),
    (False, 0.1, False, (0.9, 0.999)),          # L2: g += wd p
    (True, 0.1, False, (0.9, 0.999)),           # decoupled: p *= 1 - lr wd
    (True, 0.05, True, (0.8, 0.99)),            # rho_t > 5 from step 3 with b2 = 0.99
])
def test_radam_plugin_matches_torch_step_by_step(decoupled, wd, maximize, betas):
    torch = require_torch()
    p0, grads, lrs = problem()
    got, opt, _ = ours([f"optim.name={RADAM}", f"optim.weight_decay={wd}", f"optim.maximize={str(maximize).lower()}",
                        f"optim.options.betas=[{betas[0]},{betas[1]}]", "optim.options.eps=1e-8",
                        f"optim.options.decoupled_weight_decay={str(decoupled).lower()}"], p0, grads, lrs)
    ref = torch_radam(torch, p0, grads, lrs, betas, 1e-8, wd, decoupled, maximize)
    rho_inf = 2 / (1 - betas[1]) - 1
    rectified = [t for t in range(1, STEPS + 1) if rho_inf - 2 * t * betas[1] ** t / (1 - betas[1] ** t) > 5]
    err = np.abs(got - ref).max()
    print(f"RAdam plug-in vs torch.optim.RAdam over {STEPS} steps (rectified from step {rectified[0]}; "
          f"decoupled={decoupled}, wd={wd}, maximize={maximize}): max abs err {err:.2e}")
    assert opt.t == STEPS and rectified and rectified[0] <= STEPS - 3     # both phases were stepped
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    assert not np.allclose(got[-1], p0)


def lion_reference(p0, grads, lrs, b1, b2, wd, maximize):
    """The update of Chen et al. 2023 (Algorithm 2), decay only on the first N_DECAY entries."""
    p, m, out = p0.copy(), np.zeros_like(p0), []
    mask = np.arange(p0.size) < N_DECAY
    for g, lr in zip(grads, lrs):
        g = -g if maximize else g
        c = b1 * m + (1 - b1) * g
        p = p - lr * (np.sign(c) + wd * p * mask)
        m = b2 * m + (1 - b2) * g
        out.append(p.copy())
    return np.array(out)


@pytest.mark.parametrize("wd, maximize, betas", [(0.0, False, (0.9, 0.99)), (0.3, False, (0.9, 0.99)),
                                                 (0.3, True, (0.95, 0.98))])
def test_lion_plugin_matches_the_papers_update(wd, maximize, betas):
    p0, grads, lrs = problem()
    got, opt, _ = ours([f"optim.name={LION}", f"optim.weight_decay={wd}", f"optim.maximize={str(maximize).lower()}",
                        f"optim.options.betas=[{betas[0]},{betas[1]}]"], p0, grads, lrs)
    ref = lion_reference(p0, grads, lrs, *betas, wd, maximize)
    err = np.abs(got - ref).max()
    print(f"Lion plug-in vs the paper's update over {STEPS} steps (wd={wd}, maximize={maximize}): max abs err {err:.2e}")
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    step = np.abs(np.diff(np.vstack([p0, got]), axis=0))[:, N_DECAY:]        # no decay there: each moves by lr
    np.testing.assert_allclose(step, np.broadcast_to(lrs[:, None], step.shape), rtol=1e-9)


@pytest.mark.parametrize("ref, options", [(RADAM, ["optim.options.decoupled_weight_decay=true"]), (LION, [])])
def test_plugin_optimizers_resume_exactly_and_allocate_nothing(ref, options):
    p0, grads, lrs = problem()
    over = [f"optim.name={ref}", "optim.weight_decay=0.1", *options]
    full, _, _ = ours(over, p0, grads, lrs)
    half = STEPS // 2
    _, opt, _ = ours(over, p0, grads[:half], lrs[:half])
    state = {k: v.copy() if hasattr(v, "copy") else v for k, v in opt.state_dict().items()}
    params = opt.p.copy()
    cfg = load_config(None, over)
    space = ParamSpace("float64")
    space.param("w", (N_DECAY,), "zeros")
    space.param("b", (N_FREE,), "zeros", decay=False)
    space.build(0)
    space.params[:] = params
    opt2 = build_optimizer(cfg.optim, space)
    opt2.load_state_dict(state)
    for g, lr in zip(grads[half:], lrs[half:]):
        space.grads[:] = dev(g)
        opt2.step(lr)
    np.testing.assert_array_equal(host(space.params), full[-1])

    big = ParamSpace("float32")
    big.param("w", (1 << 18,), "normal:1")
    big.build(0)
    opt3 = build_optimizer(load_config(None, [*over, "train.dtype=float32"]).optim, big)
    big.grads[:] = 0.5

    def step():
        opt3.step(1e-3)
    live, peak = step_memory(step)
    print(f"{ref.rpartition(':')[2]} step on 2^18 float32 parameters: temporaries peak {peak / 1024:.1f} KiB, "
          f"live {live} B")
    assert live < 1024 and peak < 64 * 1024          # one parameter-sized temporary would be 1 MiB
