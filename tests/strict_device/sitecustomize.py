"""Under DDP_TEST_DEVICE=strict, every Python process the tests start (ranks under mpiexec,
launch.py subprocesses) runs ddp_scratch on the strict CuPy stand-in: `import cupy` finds
tests/strict_device/cupy (this folder is first on PYTHONPATH), and ddp_scratch.backend.use() maps
any backend to it, so runs configured for the CPU take the device paths (host-staged MPI, device
scalars, synchronisation) under CuPy's rules. Test code only."""
import os
import sys

if os.environ.get("DDP_TEST_DEVICE") in ("strict", "cupy"):     # cupy: the real one, on a GPU machine
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import strict_backend
    if os.environ["DDP_TEST_DEVICE"] == "cupy":
        sys.path.remove(here)           # `import cupy` finds the installed CuPy
    strict_backend.install_import_hook()
