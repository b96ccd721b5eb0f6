"""Compiled CPU kernels (numba), each next to the NumPy code it replaces.

A NumPy expression such as `p -= lr * (mu * v + g)` walks its arrays once per operator, on one
core, through temporaries; a fused loop walks them once, on the rank's threads. Where that pays
(an optimizer over a flat buffer of millions of parameters, LayerNorm, GELU, a softmax), the layer
or optimizer asks `active(n)` and calls a kernel, else it runs its NumPy code, which stays the
reference: tests compare the two (tests/nn/test_jit.py).

`kernels:` in the config chooses (`use()`):
  auto   numba where it is installed, on the CPU, for arrays of at least MIN_ELEMENTS (a call
         costs ~1-2 us more than NumPy's, and a small array fits in cache either way)
  numba  every size; refused where numba cannot be imported (the tests use it on small models)
  numpy  never: the plain NumPy path (and no numba import at all)
On CuPy nothing here runs: the GPU's own kernels do the work.

A kernel is a plain Python function under `@kernel`; it is compiled on its first call with
`numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")` (cache: the machine
code is kept in __pycache__ next to this package, or NUMBA_CACHE_DIR, so only the first run on a
machine pays the compile; fastmath off: the same IEEE operations in the same order as the NumPy
path, no reassociation or fused multiply-add; error_model numpy: x / 0 is inf or nan, as in NumPy).
Threads: NUMBA_NUM_THREADS, which cli/local.set_threads sets with OMP_NUM_THREADS (the rank's BLAS
threads).

Never call a parallel kernel from a thread of nn/batch_threads.py's pool: numba's default
(workqueue) threading layer aborts on concurrent launches.
"""
import os
import sys

from .. import backend as B
from ..errors import UserError

SETTINGS = ("auto", "numba", "numpy")
MIN_ELEMENTS = 1 << 15
_state = {"setting": "auto", "numba": None}    # numba: None = not tried yet, False = missing

THREADS = 1
"""numba threads a kernel launches on (None: NUMBA_NUM_THREADS, the rank's BLAS threads). One,
because that is what pays inside a step on the CPU: after each GEMM OpenBLAS's workers busy-wait
on the rank's other cores, and a 2-thread kernel waits for one of them. Measured on 2 cores (MLP
784-1024-1024-10, batch 256, 2 BLAS threads, bench_mlp.py --kernel-threads, load ~2): the step ran
52.8 steps/s with the kernels on 1 thread and 16.8 on 2 (the optimizer 1.1 ms vs 4.8 ms, ReLU
backward 0.08 vs 3.7 ms); bench_gpt.py's all-threads side measured the same for the GPT."""


def _numba():
    if _state["numba"] is None:
        try:
            import numba
            # NUMBA_DISABLE_JIT=1 would run the kernels as Python loops, 30-70x slower than NumPy
            _state["numba"] = False if numba.config.DISABLE_JIT else numba
            limit_threads()
        except Exception:        # not installed, or broken against this NumPy
            _state["numba"] = False
    return _state["numba"]


def limit_threads(n=None):
    """Kernels launched from this thread use min(n or THREADS, numba's pool) threads (numba's
    setting is per launching thread; the trainer launches from the main thread)."""
    nb = _state["numba"]
    if nb:
        want = min(x for x in (n, THREADS, nb.config.NUMBA_NUM_THREADS) if x)
        nb.set_num_threads(want)


def use(setting):
    """Choose the kernels from now on (the config's `kernels:`)."""
    if setting not in SETTINGS:
        raise UserError(f"kernels: expected one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting == "numba" and not _numba():
        why = ("NUMBA_DISABLE_JIT is set, which turns them into Python loops" if os.environ.get("NUMBA_DISABLE_JIT", "0")
               not in ("", "0") else "the numba package (pip install numba) does not import here")
        raise UserError(f"kernels: 'numba' needs numba's compiler, but {why}; use kernels: auto (NumPy then) "
                        "or numpy")
    _state["setting"] = setting


def setting():
    return _state["setting"]


def active(n_elements=None):
    """Whether a caller about to touch `n_elements` elements should call its kernel."""
    s = _state["setting"]
    if s == "numpy" or B.name != "numpy":
        return False
    if s == "auto" and n_elements is not None and n_elements < MIN_ELEMENTS:
        return False
    return bool(_numba())


def describe():
    """What runs the fused work, for the summary: 'numba 0.68.1, 2 thread(s)', or 'numpy'. Does
    not import numba where no kernel ran (a small model never pays its ~0.3 s import)."""
    if _state["setting"] == "numpy" or B.name != "numpy" or _state["numba"] is False \
            or os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        return "numpy"
    nb = _state["numba"]
    if nb is None:
        version = _installed_version("numba")
        if version is None:
            return "numpy"
        threads = THREADS or os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count()
    else:
        version, threads = nb.__version__, nb.get_num_threads()
    extra = "" if _state["setting"] == "numba" else f", arrays >= {MIN_ELEMENTS} elements"
    return f"numba {version}, {threads} thread(s){extra}"


def _installed_version(name):
    """The version of an installed but not imported package, None where it is not installed: from
    its NAME-VERSION.dist-info folder beside it, where pip puts it (importlib.metadata would cost
    every run ~50 ms of imports), else from importlib.metadata."""
    import importlib.util
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.origin:
        site = os.path.dirname(os.path.dirname(spec.origin))
        try:
            infos = [f for f in os.listdir(site) if f.startswith(name + "-") and f.endswith(".dist-info")]
        except OSError:
            infos = []
        if len(infos) == 1:
            return infos[0][len(name) + 1:-len(".dist-info")]
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:      # importable, but installed without metadata
        return "(version unknown)"


class kernel:
    """A function compiled by numba on its first call (see the module's docstring)."""

    def __init__(self, fn=None, *, parallel=True):
        self.fn, self.parallel, self.compiled = fn, parallel, None

    def __call__(self, *args):
        if self.compiled is None:
            nb = _numba()
            if not nb:
                raise RuntimeError(f"kernel {self.fn.__name__} called without numba; ask jit.active() first")
            if "prange" in self.fn.__code__.co_names:      # the module's `prange = range` (see prange)
                self.fn.__globals__["prange"] = nb.prange
            # error_model numpy: x / 0 gives inf or nan as in NumPy, where numba's default raises
            # ZeroDivisionError (and checks every division in the loop, which stops vectorisation)
            cache = _cache_ok()
            try:
                self.compiled = self._compile(nb, cache)
            except RuntimeError as e:        # numba found no folder to cache in after all
                if "cannot cache" not in str(e):
                    raise
                cache = False
                self.compiled = self._compile(nb, False)
            if not cache:
                _no_cache_note()
        return self.compiled(*args)

    def _compile(self, nb, cache):
        return nb.njit(parallel=self.parallel, cache=cache, fastmath=False, error_model="numpy")(self.fn)


prange = range
"""A kernel module writes `from .jit import kernel, prange` and loops `for i in prange(n)`: plain
`range` (so the module imports without numba, and the function runs as plain Python) until the
kernel's first call compiles it, when the module's `prange` becomes numba.prange."""


def serial(fn):
    """@serial: a kernel whose loop runs on one thread (called where the caller already splits the work)."""
    return kernel(fn, parallel=False)


def _no_cache_note():
    """Said once per process: a read-only package, home and NUMBA_CACHE_DIR leave numba nowhere to
    keep the machine code, so every run compiles its kernels again."""
    if not _state.get("warned_cache"):
        _state["warned_cache"] = True
        sys.stderr.write("note: numba finds no writable folder for its cache (the package's __pycache__, "
                         "NUMBA_CACHE_DIR, ~/.cache): the kernels are compiled on every run (~10-20 s); set "
                         "NUMBA_CACHE_DIR to a writable folder, or kernels: numpy\n")
        sys.stderr.flush()


def _cache_ok():
    """numba caches next to the source or in NUMBA_CACHE_DIR / its user folder; where none is
    writable it warns on every compile, so compile without a cache there instead."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        d = os.environ["NUMBA_CACHE_DIR"]
        while not os.path.exists(d) and os.path.dirname(d) != d:
            d = os.path.dirname(d)           # numba creates it: its nearest existing parent must be writable
        return os.access(d, os.W_OK)
    here = os.path.join(os.path.dirname(__file__), "__pycache__")
    try:
        os.makedirs(here, exist_ok=True)
        if os.access(here, os.W_OK):
            return True
    except OSError:
        pass
    return os.access(os.path.expanduser("~"), os.W_OK)      # numba's user-wide cache folder
