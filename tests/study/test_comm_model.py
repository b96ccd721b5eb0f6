import numpy as np
import pytest

from ddp_scratch.study.comm_model import fit_alpha_beta, predict_allreduce, project_efficiency

ALPHA, BETA = 5e-6, 1e-9  # 5 us latency, 1 GB/s


def synth(sizes, n, noise=0.0, seed=0):
    t = predict_allreduce(sizes, n, ALPHA, BETA)
    rng = np.random.default_rng(seed)
    return t * (1 + noise * rng.standard_normal(np.shape(t)))


def test_exact_recovery():
    sizes = np.logspace(2, 8, 13)
    fit = fit_alpha_beta(sizes, synth(sizes, 4), 4)
    err = max(abs(fit.alpha - ALPHA) / ALPHA, abs(fit.beta - BETA) / BETA)
    print(f"max relative error (exact): {err:.3g}")
    assert err < 1e-8 and fit.r2 == pytest.approx(1.0)
    alpha, beta, r2 = fit  # plain tuple unpacking works too
    assert alpha == fit.alpha


def test_noisy_recovery():
    sizes = np.repeat(np.logspace(2, 8, 13), 5)
    fit = fit_alpha_beta(sizes, synth(sizes, 8, noise=0.02, seed=1), 8)
    err = max(abs(fit.alpha - ALPHA) / ALPHA, abs(fit.beta - BETA) / BETA)
    print(f"max relative error (2% noise): {err:.3g}, r2={fit.r2:.5f}")
    assert err < 0.05 and fit.r2 > 0.99


def test_joint_fit_over_worlds():
    sizes = np.tile(np.logspace(3, 7, 9), 3)
    worlds = np.repeat([2, 4, 8], 9)
    fit = fit_alpha_beta(sizes, synth(sizes, worlds, noise=0.01, seed=2), worlds)
    err = max(abs(fit.alpha - ALPHA) / ALPHA, abs(fit.beta - BETA) / BETA)
    print(f"max relative error (joint worlds): {err:.3g}")
    assert err < 0.05


def test_nonnegative_when_latency_is_zero():
    sizes = np.logspace(5, 8, 20)
    t = predict_allreduce(sizes, 4, 0.0, BETA)
    t = t * (1 + 0.05 * np.random.default_rng(3).standard_normal(t.shape))
    fit = fit_alpha_beta(sizes, t, 4)
    print(f"alpha={fit.alpha:.3g} beta rel err={abs(fit.beta - BETA) / BETA:.3g}")
    assert fit.alpha >= 0 and fit.beta > 0
    assert abs(fit.beta - BETA) / BETA < 0.05


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="world_size"):
        fit_alpha_beta([1, 2], [1, 2], 1)
    with pytest.raises(ValueError, match="sizes"):
        fit_alpha_beta([1, 2, 3], [1, 2], 4)
    with pytest.raises(ValueError, match="distinct"):
        fit_alpha_beta([1000, 1000], [1e-3, 1e-3], 4)


def test_predict_allreduce():
    got = predict_allreduce(1e6, 4, ALPHA, BETA)
    want = 6 * ALPHA + 1.5 * 1e6 * BETA
    arr = predict_allreduce([1e6, 2e6], [1, 2], ALPHA, BETA)
    err = max(abs(got - want), abs(arr[0]), abs(arr[1] - (2 * ALPHA + 2e6 * BETA)))
    print(f"max predict error: {err:.3g} s")
    assert isinstance(got, float) and err < 1e-15


def test_project_efficiency_weak_and_strong():
    c, g = 0.1, 4e6
    weak = project_efficiency(c, g, [1, 2, 4, 8], ALPHA, BETA)
    strong = project_efficiency(c, g, [1, 2, 4, 8], ALPHA, BETA, mode="strong")
    errs = []
    for w, s in zip(weak, strong):
        n = w["world_size"]
        comm = 2 * (n - 1) * ALPHA + 2 * (n - 1) / n * g * BETA
        errs += [abs(w["comm_s"] - comm), abs(w["step_s"] - (c + comm)),
                 abs(w["efficiency"] - c / (c + comm)),
                 abs(s["step_s"] - (c / n + comm)),
                 abs(s["efficiency"] - c / (n * (c / n + comm))),
                 abs(s["speedup"] - c / (c / n + comm))]
    print(f"max projection error: {max(errs):.3g}")
    assert max(errs) < 1e-12
    assert weak[0]["efficiency"] == 1.0 and strong[0]["efficiency"] == 1.0
    assert all(a["efficiency"] > b["efficiency"] for a, b in zip(strong, strong[1:]))
    with pytest.raises(ValueError):
        project_efficiency(c, g, [2], ALPHA, BETA, mode="diagonal")


def test_absolute_fit_option():
    sizes = np.logspace(2, 8, 13)
    fit = fit_alpha_beta(sizes, synth(sizes, 4), 4, relative=False)
    err = max(abs(fit.alpha - ALPHA) / ALPHA, abs(fit.beta - BETA) / BETA)
    print(f"max relative error (absolute-residual fit, exact data): {err:.3g}")
    assert err < 1e-6
    with pytest.raises(ValueError, match="positive"):
        fit_alpha_beta([1, 2], [0.0, 1.0], 2)
