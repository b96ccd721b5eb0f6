"""`kernels`: an autouse fixture that runs every test of a module twice, with the NumPy path
(kernels: numpy) and with the numba kernels forced at every size (kernels: numba), so tests
written for the NumPy code (against torch, fixtures, resumes) cover the kernels too. A module
opts in with `from jit_settings import kernels  # noqa: F401`. The numba run skips where numba
does not import or the arrays are not NumPy's (nothing compiles for CuPy)."""
import pytest

from ddp_scratch import backend as B
from ddp_scratch.nn import jit


@pytest.fixture(params=["numpy", "numba"], autouse=True)
def kernels(request):
    if request.param == "numba" and (B.name != "numpy" or not jit._numba()):
        pytest.skip("numba kernels run on NumPy arrays where numba imports")
    before = jit.setting()
    jit.use(request.param)
    try:
        yield request.param
    finally:
        jit.use(before)
