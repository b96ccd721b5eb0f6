"""The stand-in itself refuses what CuPy refuses and counts what moves (so a pass under it means
something). Runs in both passes: it imports the stand-in by path, not through the backend."""
import importlib.util
import os

import numpy as np
import pytest

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "strict_device", "cupy",
                    "__init__.py")


@pytest.fixture(scope="module")
def cp():
    spec = importlib.util.spec_from_file_location("strict_cupy_under_test", HERE)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


MIXES = {
    "np.asarray(device)": lambda cp, a: np.asarray(a),
    "np.array(device scalar)": lambda cp, a: np.array(a[0, 0]),
    "np.exp(device)": lambda cp, a: np.exp(a),
    "device + host": lambda cp, a: a + np.ones(3),
    "host + device": lambda cp, a: np.ones(3) + a,
    "host -= device": lambda cp, a: np.ones((2, 3)).__isub__(a),
    "device *= host": lambda cp, a: a.__imul__(np.ones(3)),
    "xp.add(device, host)": lambda cp, a: cp.add(a, np.ones(3)),
    "xp.matmul(..., out=host)": lambda cp, a: cp.matmul(a, a.T, out=np.empty((2, 2))),
    "device[...] = host": lambda cp, a: a.__setitem__(slice(None), np.ones(3)),
    "np.dot(device, device)": lambda cp, a: np.dot(a, a.T),
    "memoryview (MPI's buffer)": lambda cp, a: memoryview(a),
    "take(mode=)": lambda cp, a: cp.take(a, cp.asarray([0]), axis=0, mode="clip"),
    "float() of a vector": lambda cp, a: float(a),
}


@pytest.mark.parametrize("what", list(MIXES))
def test_host_device_mixing_is_refused(cp, what):
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError):
        MIXES[what](cp, a)


def test_reads_are_counted_and_results_stay_on_the_device(cp):
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    cp.transfers.reset()
    s = cp.exp(a).sum()
    assert type(s) is cp.ndarray and s.shape == ()          # a reduction gives a 0-d device array
    assert cp.transfers.d2h == 0
    float(s), int(a[0, 1]), bool(a[0, 1]), a[1, 1].item(), a.get(), cp.asnumpy(a), a[a > 2], f"{s}"
    assert cp.transfers.d2h == 8
    h = np.empty((2, 3))
    a.get(out=h)
    a.set(h * 2)
    assert cp.transfers.h2d == 1 and (a.get() == h * 2).all()
    v = a[0]                                                 # views write through, as in CuPy
    v += 1
    assert a.get()[0].tolist() == [1.0, 3.0, 5.0]
