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
    with pytest.raises(UserError, match="kernels: 'numba' needs the numba package"):
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
