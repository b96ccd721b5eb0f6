"""Under DDP_TEST_DEVICE=strict, every Python process the tests start (ranks under mpiexec,
launch.py subprocesses) runs ddp_scratch on the strict CuPy stand-in: `import cupy` finds
tests/strict_device/cupy (this folder is first on PYTHONPATH), and ddp_scratch.backend.use() maps
any backend to it, so runs configured for the CPU take the device paths (host-staged MPI, device
scalars, synchronisation) under CuPy's rules. Test code only."""
import os
import sys

if os.environ.get("DDP_TEST_DEVICE") == "strict":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import strict_backend
    strict_backend.install_import_hook()
