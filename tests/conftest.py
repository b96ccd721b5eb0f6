"""Shared test helpers.

Torch policy: torch is an external ORACLE only. Oracle tests call `require_torch()`: without torch
they skip, unless DDP_REQUIRE_TORCH=1 (set by CI and `make test`), where a missing torch FAILS.
Reference values made with torch are also committed under tests/fixtures/ (tests/make_fixtures.py),
so a machine without torch still checks against them. The finite-difference checker is the
package's own (ddp_scratch.nn.gradcheck.numgrad), as `launch.py gradcheck` uses it.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FASHION = "/usr/share/datasets/fashion-mnist"     # Debian's dataset-fashion-mnist (real IDX files)
sys.path.insert(0, ROOT)


def require_torch():
    try:
        import torch
    except ImportError:
        if os.environ.get("DDP_REQUIRE_TORCH") == "1":
            pytest.fail("torch is required here (DDP_REQUIRE_TORCH=1) but cannot be imported")
        pytest.skip("torch not installed: checked against the committed fixtures only")
    torch.set_default_dtype(torch.float64)
    return torch


def step_memory(step, warmup=3, steps=2):
    """(live, peak) bytes that `steps` calls of step() add under tracemalloc after `warmup` calls
    (NumPy reports every array buffer to tracemalloc, so a temporary array shows in the peak).

    On the strict CuPy stand-in the device arrays are NumPy buffers, so the same bounds hold; its
    live bytes count array buffers only (NumPy's tracemalloc domain): the stand-in's own Python
    objects per call (argument tuples left in CPython's free lists) are not the package's. With
    the real CuPy tracemalloc sees no device memory: the test skips."""
    import tracemalloc
    if ON_DEVICE and not STRICT:
        pytest.skip("tracemalloc does not see CuPy's device memory (the strict stand-in pass measures this)")
    for _ in range(warmup):
        step()
    tracemalloc.start()
    try:
        before = _array_bytes(tracemalloc) if STRICT else None
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(steps):
            step()
        live, peak = tracemalloc.get_traced_memory()
        if STRICT:
            return _array_bytes(tracemalloc) - before, peak - base
    finally:
        tracemalloc.stop()
    return live - base, peak - base


def _array_bytes(tracemalloc):
    """Bytes of the NumPy array buffers tracemalloc traces now."""
    import numpy as np
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)])
    return sum(t.size for t in snap.traces)


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def run_launch(*args, timeout=120, env=None, ranks=0, cwd=None):
    """Run `launch.py ARGS` (under mpiexec -n RANKS if ranks) and return the CompletedProcess."""
    cmd = [sys.executable, LAUNCH, *map(str, args)]
    if ranks:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    e = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    e.update(env or {})
    return run_group(cmd, timeout=timeout, env=e, cwd=cwd or ROOT)


def run_group(cmd, timeout, **kw):
    """subprocess.run in its own process group: a timeout kills every rank, not just mpiexec."""
    import signal
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def need_fashion():
    if not os.path.isdir(FASHION):
        if os.environ.get("DDP_REQUIRE_FASHION") == "1":
            pytest.fail(f"{FASHION} missing (apt-get install dataset-fashion-mnist)")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return FASHION


def write_idx(path, arr, magic_type=0x08, gz=False, cut=0):
    """An MNIST-format IDX file of `arr` (uint8), optionally gzipped or cut short by `cut` bytes."""
    import gzip
    import numpy as np
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, magic_type, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    if cut:
        raw = raw[:-cut]
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if gz else raw)


def make_mnist_dir(d, n_train=20, n_test=10, gz=False):
    """A folder of the four MNIST IDX files with random images and labels 0..9."""
    import numpy as np
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(d / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28)), gz=gz)
    write_idx(d / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_train), gz=gz)
    write_idx(d / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28)), gz=gz)
    write_idx(d / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_test), gz=gz)
    return d


@pytest.fixture
def launch():
    return run_launch


def pytest_ignore_collect(collection_path, config):
    """tests/mpi/ runs only under mpiexec with --with-mpi (tests/test_mpi.py launches it)."""
    if collection_path.name == "mpi" and collection_path.is_dir():
        return not config.getoption("--with-mpi", default=False)
    return None


_SHM_AT_START = set()


def _mapped_shm():
    import glob
    names = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                names.update(ln.rsplit("/", 1)[-1].strip() for ln in f if "/dev/shm/mpich_shm_" in ln)
        except OSError:
            pass
    return names


def pytest_sessionstart(session):
    if os.path.isdir("/dev/shm"):
        _SHM_AT_START.update(n for n in os.listdir("/dev/shm") if n.startswith("mpich_shm_"))


def pytest_sessionfinish(session, exitstatus):
    """Ranks these tests killed on purpose (SIGKILL, aborts) never unlink MPICH's shared-memory
    segments: remove the ones this session left that no process maps any more."""
    if not os.path.isdir("/dev/shm") or os.environ.get("PMI_RANK"):
        return
    mapped = _mapped_shm()
    for name in os.listdir("/dev/shm"):
        if name.startswith("mpich_shm_") and name not in _SHM_AT_START and name not in mapped:
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass


# DDP_TEST_DEVICE=strict: this process and every process it starts run on the strict CuPy
# stand-in (tests/strict_device): see tests/strict_device/sitecustomize.py.
# DDP_TEST_DEVICE=cupy does the same with the real CuPy (benchmarks/gpu/device_run.sh, on a GPU).
STRICT = os.environ.get("DDP_TEST_DEVICE") == "strict"
ON_DEVICE = os.environ.get("DDP_TEST_DEVICE") in ("strict", "cupy")
BACKEND = "cupy" if ON_DEVICE else "numpy"      # what a run reports as its array module
if ON_DEVICE:
    _sd = os.path.join(ROOT, "tests", "strict_device")
    os.environ["PYTHONPATH"] = os.pathsep.join([_sd] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    sys.path.insert(0, _sd)
    import strict_backend
    if not STRICT:
        sys.path.remove(_sd)
    strict_backend.install_import_hook()
    from ddp_scratch import backend as _backend
    assert _backend.use.strict          # patched on import: use() gives the stand-in


def pytest_configure(config):
    config.addinivalue_line("markers", "device_agnostic(why): skipped in a device pass (DDP_TEST_DEVICE=strict "
                            "or cupy): what the test checks (messages, refusals, files, locks, schedules) is decided "
                            "on the host before or beside the array work, which other tests of the pass cover; "
                            "the NumPy pass runs it")


def pytest_collection_modifyitems(config, items):
    """In the strict pass, tests that hand NumPy arrays to the package directly (unit tests not yet
    written for a device) or measure host-side NumPy behaviour skip with that reason; so do tests
    marked device_agnostic (their launches would only repeat, at the stand-in's cost, array work
    that the pass's training, resume and reliability tests already run on it)."""
    if not ON_DEVICE:
        return
    for item in items:
        m = item.get_closest_marker("host_arrays")
        if m is not None:
            why = m.args[0] if m.args else "hands NumPy arrays to the package directly"
            item.add_marker(pytest.mark.skip(reason=f"strict device pass: {why}"))
        m = item.get_closest_marker("device_agnostic")
        if m is not None:
            item.add_marker(pytest.mark.skip(reason=f"device pass: device-agnostic: {m.args[0]}"))
