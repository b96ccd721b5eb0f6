"""The nn tests on whichever array module is active: NumPy normally, the strict CuPy stand-in
(DDP_TEST_DEVICE=strict) or the real CuPy (DDP_TEST_DEVICE=cupy) in a device pass.

Inputs are made on the host with NumPy's seeded generators (the same numbers on every backend)
and moved with dev(); what the package returns goes through host() before NumPy or torch sees
it. On NumPy both hand back the very array they were given, so the CPU run checks exactly what
it checked before. Workspaces the package writes into come from xp() (backend.xp, read at call
time: a test that swaps it in sees the swap)."""
from ddp_scratch import backend as B


def xp():
    return B.xp


def dev(*arrays):
    """Host arrays (or numbers, lists) -> arrays of the active module; one in, one out."""
    out = tuple(B.asarray(a) for a in arrays)
    return out[0] if len(out) == 1 else out


def host(*arrays):
    """Arrays of the active module -> NumPy arrays, dtype kept (a copy on a device, the array
    itself on NumPy); one in, one out."""
    out = tuple(B.to_numpy(a) for a in arrays)
    return out[0] if len(out) == 1 else out
