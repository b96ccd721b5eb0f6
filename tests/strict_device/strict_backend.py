"""Maps ddp_scratch.backend.use(...) to the strict CuPy stand-in (tests/strict_device/cupy)."""
import importlib.abc
import sys


def patch(backend):
    """backend.use(anything) -> the stand-in; idempotent."""
    if getattr(backend.use, "strict", False):
        return
    real_use = backend.use

    def use(name, device=None):
        return real_use("cupy", device)
    use.strict = True
    backend.use = use
    real_use("cupy")       # processes that never call use() (unit tests) start on the device too


class _Hook(importlib.abc.MetaPathFinder):
    """Patches ddp_scratch.backend right after its first import (without importing it, or NumPy,
    early: launch.py sets the BLAS threads before NumPy loads)."""

    def find_spec(self, name, path, target=None):
        if name != "ddp_scratch.backend":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec


def install_import_hook():
    if "ddp_scratch.backend" in sys.modules:
        patch(sys.modules["ddp_scratch.backend"])
    else:
        sys.meta_path.insert(0, _Hook())
