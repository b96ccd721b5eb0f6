"""`launch.py gradcheck TARGET`: every built-in passes, a wrong backward fails (exit 1), and a
target that cannot be checked is one line (exit 2). The finite-difference checker itself is the
package's (ddp_scratch.nn.gradcheck), which the other gradient tests use too."""

import numpy as np
import pytest

from conftest import ROOT, run_launch
from devices import dev, host
from ddp_scratch.cli.main import main
from ddp_scratch.nn.gradcheck import numgrad, rel_err
from ddp_scratch.nn.gradcheck_targets import BUILTINS, check_target

BROKEN = "tests/nn/broken_layers.py"


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_numgrad_of_a_known_function_all_or_some_entries():
    xh = np.linspace(-1, 1, 7)
    x = dev(xh)                              # numgrad perturbs the array f reads, host or device
    f = lambda: float((x ** 3).sum())        # noqa: E731
    assert rel_err(numgrad(f, x), 3 * xh ** 2) < 1e-9
    part = numgrad(f, x, entries=[1, 4])
    assert part[0] == 0 and abs(part[1] - 3 * xh[1] ** 2) < 1e-9 and abs(part[4] - 3 * xh[4] ** 2) < 1e-9
    assert np.array_equal(host(x), xh)       # restored


@pytest.mark.parametrize("name", list(BUILTINS))
def test_every_builtin_passes(name):
    r = check_target(name, entries=40)
    print(r.text())
    assert r.ok, r.failures
    assert r.fresh == "ok"


@pytest.mark.parametrize("target", ["Affine", "WrongTwin"])
def test_a_right_backward_passes_finite_differences(target, capsys):
    code = main(["gradcheck", f"{BROKEN}:{target}", "--no-torch"])
    out = capsys.readouterr().out
    print(out)
    assert code == 0 and "torch not asked for" in out and out.rstrip().splitlines()[-1].startswith("ok: ")


@pytest.mark.parametrize("target, failed", [
    ("TransposedInputGradient", "FAILED: input (finite differences: max rel"),
    ("BiasGradientMeanNotSum", "FAILED: aff.b (finite differences: max rel"),
    ("AlwaysAdds", "FAILED: the fresh rule (a backward after zero_grad() did not overwrite the stale gradient"),
    ("AlwaysOverwrites", "FAILED: the fresh rule (a second backward without zero_grad() did not add"),
    ("WrongTwin", "FAILED: aff.b (torch: max rel inf > 1e-08); output (torch: max rel"),
    ("ForgetsToReturnDx", "FAILED: input (backward returned None; expected the input's gradient, shape (5, 4) (return dx))"),
    ("WrongDxShape", "FAILED: input (backward returned shape (20,); expected the input's gradient, shape (5, 4))"),
])
def test_a_wrong_backward_fails(target, failed, capsys):
    if target == "WrongTwin":
        pytest.importorskip("torch")
    code = main(["gradcheck", f"{BROKEN}:{target}"])
    out = capsys.readouterr().out
    print(out)
    assert code == 1
    assert out.rstrip().splitlines()[-1].startswith(failed)


@pytest.mark.parametrize("target, message", [
    ("conv", "gradcheck: 'conv' is neither a built-in (linear, relu"),
    (f"{BROKEN}:NoHook", f"gradcheck: {BROKEN}:NoHook has no classmethod gradcheck_inputs(space, rng) -> (layer, x)"),
    (f"{BROKEN}:BadHook", f"gradcheck: {BROKEN}:BadHook.gradcheck_inputs(space, rng) must return (layer, x), got BadHook"),
    (f"{BROKEN}:NOT_A_CLASS", f"gradcheck: {BROKEN}:NOT_A_CLASS is an int, expected a class"),
    (f"{BROKEN}:NotALayer", f"gradcheck: {BROKEN}:NotALayer is neither a layer (forward(x), backward(dy)) nor a model"),
    (f"{BROKEN}:Nope", f"gradcheck: {BROKEN} has no attribute 'Nope' (it defines Affine, "),
    ("tests/nn/nothere.py:X", "gradcheck: tests/nn/nothere.py not found"),
    (BROKEN, f"gradcheck: {BROKEN} names a file but not the class in it: expected {BROKEN}:ClassName"),
])
def test_a_target_that_cannot_be_checked_is_one_line(target, message, capsys):
    assert main(["gradcheck", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_the_command_exits_1_on_a_wrong_backward_and_0_on_a_right_one():
    r = run_launch("gradcheck", f"{BROKEN}:BiasGradientMeanNotSum", "--seed", "3", timeout=120)
    print(r.stdout, r.stderr)
    assert r.returncode == 1 and "FAILED: aff.b" in r.stdout and not r.stderr
    r = run_launch("gradcheck", "tests.nn.broken_layers:Affine", "--entries", "0", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "  aff.W " in r.stdout and "12/12" in r.stdout


@pytest.mark.parametrize("name", ["gpt", "gelu"])
def test_the_gpt_and_gelu_pass_with_the_numba_kernels_forced(name):
    """The same checks with every fused kernel on (kernels: numba, whatever the size)."""
    from ddp_scratch import backend as B
    from ddp_scratch.nn import jit
    if B.name != "numpy" or not jit._numba():
        pytest.skip("numba kernels run on host NumPy arrays, with numba installed")
    import numba
    before, threads = jit.setting(), numba.get_num_threads()
    jit.use("numba")
    numba.set_num_threads(1)     # a parallel launch on a loaded 2-core machine can wait ms for its 2nd thread
    try:
        r = check_target(name, entries=40)
    finally:
        jit.use(before)
        numba.set_num_threads(threads)
    print(r.text())
    assert r.ok, r.failures
