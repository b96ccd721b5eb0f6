"""nn/jit.py: the choice between the compiled (numba) kernels and the NumPy path. Each kernel's
own test sits with its layer or optimizer and compares it with the NumPy path it replaces."""
import numpy as np
import pytest

from ddp_scratch import backend as B
from ddp_scratch.errors import UserError
from ddp_scratch.nn import jit

pytestmark = pytest.mark.host_arrays("numba kernels run on host NumPy arrays only")


@pytest.fixture
def setting():
    before = jit.setting()
    yield jit.use
    jit.use(before)


def test_the_setting_is_checked(setting):
    for bad in ("Numba", "", "cupy", None):
        with pytest.raises(UserError, match="kernels: expected one of auto, numba, numpy"):
            setting(bad)


def test_auto_leaves_small_arrays_to_numpy(setting):
    setting("auto")
    assert not jit.active(jit.MIN_ELEMENTS - 1)
    assert jit.active(jit.MIN_ELEMENTS) == bool(jit._numba())
    setting("numba")
    assert jit.active(1)
    setting("numpy")
    assert not jit.active(10 ** 9)
    assert jit.describe() == "numpy"


def test_nothing_compiles_for_another_array_module(setting, monkeypatch):
    setting("numba")
    monkeypatch.setattr(B, "name", "cupy")
    assert not jit.active(10 ** 9)
    assert jit.describe() == "numpy"


def test_numba_is_refused_in_one_line_where_it_is_missing(setting, monkeypatch):
    monkeypatch.setitem(jit._state, "numba", False)
    with pytest.raises(UserError, match="kernels: 'numba' needs numba's compiler, but the numba package"):
        setting("numba")
    setting("auto")
    assert not jit.active(10 ** 9)


def test_a_kernel_compiles_once_and_runs_in_parallel(setting):
    setting("numba")

    y, x = np.ones(100_000, np.float32), np.arange(100_000, dtype=np.float32)
    axpy = jit.kernel(_axpy)
    axpy(y, np.float32(2), x)
    first = axpy.compiled
    axpy(y, np.float32(2), x)
    assert axpy.compiled is first
    np.testing.assert_array_equal(y, 1 + 4 * x)
    assert jit.describe().startswith("numba ")


prange = jit.prange


def _axpy(y, a, x):
    for i in prange(y.shape[0]):
        y[i] += a * x[i]


def test_numba_with_its_compiler_disabled_counts_as_missing(setting, monkeypatch):
    """NUMBA_DISABLE_JIT=1 runs a kernel as a Python loop, 30-70x slower than NumPy: auto takes
    NumPy then, numba is refused, and the summary does not claim numba."""
    nb = pytest.importorskip("numba")
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    monkeypatch.setattr(nb.config, "DISABLE_JIT", True)
    monkeypatch.setitem(jit._state, "numba", None)
    with pytest.raises(UserError, match="kernels: 'numba' needs numba's compiler, but NUMBA_DISABLE_JIT is set"):
        setting("numba")
    setting("auto")
    assert not jit.active(10 ** 9) and jit.describe() == "numpy"


def test_a_kernel_numba_cannot_cache_compiles_without_a_cache_and_says_so(setting, monkeypatch, capsys):
    """Code numba finds no cache folder for (here: a function without a source file; in use: a
    read-only package, home and NUMBA_CACHE_DIR) is compiled uncached, with one note."""
    pytest.importorskip("numba")
    setting("numba")
    monkeypatch.setattr(jit, "_cache_ok", lambda: True)
    monkeypatch.setitem(jit._state, "warned_cache", False)
    ns = {"prange": jit.prange}
    exec("def twice(y, x):\n    for i in prange(y.shape[0]):\n        y[i] = 2 * x[i]\n", ns)
    for _ in range(2):
        k = jit.kernel(ns["twice"])
        y, x = np.zeros(10), np.arange(10.0)
        k(y, x)
        np.testing.assert_array_equal(y, 2 * x)
    err = capsys.readouterr().err
    assert err.count("note: numba finds no writable folder for its cache") == 1, err


def test_an_unwritable_numba_cache_dir_is_not_trusted(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "new" / "cache"))
    assert jit._cache_ok()                   # numba creates it under a writable parent
    monkeypatch.setattr(jit.os, "access", lambda path, mode: False)
    assert not jit._cache_ok()
