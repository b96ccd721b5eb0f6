"""A strict stand-in for CuPy, backed by NumPy: CuPy's rules enforced on a machine without a GPU.

Test code only (DDP_TEST_DEVICE=strict puts this folder first on the path, so `import cupy` in
ddp_scratch/backend.py finds it). Most CuPy bugs are not numerical but a host/device mix-up, and
NumPy forgives every one of them. This module does not:

- no implicit conversion to NumPy: `np.asarray(a)`, `np.exp(a)`, `np_array + a`, `a + np_array`
  raise TypeError, as CuPy does; NumPy arrays are refused as operands and as `out=` of device
  functions (`xp.asarray(np_array)` is the explicit host->device copy);
- `.get()`, `.set()`, `asnumpy` move data explicitly; CuPy's signatures where they differ from
  NumPy's (`take` has no `mode`);
- every device->host transfer is counted in `transfers`: `.get()`, `asnumpy`, `float()`/`int()`/
  `bool()`/`.item()`/`.tolist()`/printing of a device array, and indexing with a boolean mask (CuPy
  must read the mask's count back). A test reads the count to hold a per-step budget.
"""
import operator as _op
import sys as _sys
import traceback as _tb

import numpy as _np

# dtypes, constants and type names are NumPy's own objects in CuPy too
globals().update({n: getattr(_np, n) for n in (
    "bool_ dtype e float16 float32 float64 inf int8 int16 int32 int64 nan newaxis pi uint8 uint16 uint32 "
    "uint64").split()})

__version__ = "0.0-strict"
STRICT = True     # lets a test tell the stand-in from the real CuPy


class Transfers:
    """Device->host (d2h) and host->device (h2d) transfers since the last reset; `where` keeps the
    call site of each d2h when `trace` is on (for a message that points at the line)."""

    def __init__(self):
        self.reset()

    def reset(self, trace=False):
        self.d2h = self.h2d = 0
        self.trace, self.where = trace, []

    def note_d2h(self, what):
        self.d2h += 1
        if self.trace:
            frame = next((f for f in reversed(_tb.extract_stack()[:-2]) if "strict_device" not in f.filename),
                         None)
            self.where.append(f"{what} at {frame.filename}:{frame.lineno}" if frame else what)


transfers = Transfers()


def _refuse_numpy(x, what):
    raise TypeError(f"Unsupported type {type(x)}: a NumPy array {what} of a device operation "
                    "(CuPy refuses host arrays; copy it with cupy.asarray first)")


# Tuples here are made from lists, not generators: tuple(generator) over-allocates and shrinks
# with a realloc, so every call left one more tuple in CPython's free list, and a tracemalloc step
# test (conftest.step_memory) saw the stand-in's own bytes grow step after step.

def _un(x, what="as an operand"):
    """The NumPy array behind a device array; host arrays refused; containers walked."""
    if type(x) is ndarray:
        return x._a
    if isinstance(x, _np.ndarray):
        _refuse_numpy(x, what)
    if isinstance(x, (list, tuple)) and any(isinstance(v, (ndarray, _np.ndarray)) for v in x):
        return type(x)([_un(v, what) for v in x])
    return x


def _wrap(r):
    """Device arrays for NumPy results; a full reduction gives a 0-d device array, as in CuPy."""
    if isinstance(r, _np.ndarray):
        return ndarray(r)
    if isinstance(r, _np.generic):
        return ndarray(_np.asarray(r))
    if isinstance(r, tuple):
        return tuple([_wrap(v) for v in r])
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _call(fn, args, kwargs):
    out = kwargs.get("out")
    if out is not None:
        if isinstance(out, tuple):
            kwargs["out"] = tuple([_un(o, "as out=") for o in out])
        elif type(out) is not ndarray:
            raise TypeError(f"out= must be a device array (cupy.ndarray), got {type(out)}")
        else:
            kwargs["out"] = out._a
    r = fn(*[_un(a) for a in args], **{k: (v if k == "out" else _un(v)) for k, v in kwargs.items()})
    if out is not None and not isinstance(out, tuple):
        return out
    return _wrap(r)


def _is_mask(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(type(k) is ndarray and k._a.dtype == _np.bool_ and k._a.ndim > 0 for k in keys)


def _index(key):
    """Index keys: device arrays unwrapped; host index arrays allowed (CuPy copies them over)."""
    if isinstance(key, tuple):
        return tuple([_index(k) for k in key])
    if type(key) is ndarray:
        return key._a
    return key


class ndarray:
    """A device array: NumPy's data, CuPy's manners."""
    __slots__ = ("_a",)

    def __init__(self, a):
        if not isinstance(a, _np.ndarray):
            raise TypeError("cupy.ndarray(...) wraps device data; use cupy.asarray for host data")
        object.__setattr__(self, "_a", a)

    # ---------------------------------------------------------------- NumPy must not see through it
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise TypeError(f"numpy.{ufunc.__name__} was given a device array: use the array module "
                        f"(xp.{ufunc.__name__}), not numpy")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} was given a device array: use the array module "
                        f"(xp.{func.__name__}), not numpy")

    # ---------------------------------------------------------------- explicit transfers
    def get(self, stream=None, order="C", out=None):
        transfers.note_d2h(".get()")
        if out is None:
            return self._a.copy(order=order)
        if type(out) is not _np.ndarray:
            raise TypeError(f"get(out=...) needs a numpy.ndarray, got {type(out)}")
        if out.shape != self._a.shape or out.dtype != self._a.dtype:
            raise ValueError("get(out=...): shape or dtype mismatch")
        out[...] = self._a
        return out

    def __reduce__(self):              # pickled (mpi4py's allgather of objects) through the host, as CuPy's
        transfers.note_d2h("pickle")
        return _from_host, (self._a.copy(),)

    def set(self, arr, stream=None):
        if type(arr) is not _np.ndarray:
            raise TypeError(f"set() needs a numpy.ndarray, got {type(arr)}")
        if arr.shape != self._a.shape:
            raise ValueError(f"set(): shape mismatch {arr.shape} != {self._a.shape}")
        transfers.h2d += 1
        self._a[...] = arr

    # ---------------------------------------------------------------- implicit reads (synchronising)
    def _scalar(self, what):
        if self._a.size != 1:
            raise TypeError(f"{what} of a device array with {self._a.size} elements")
        transfers.note_d2h(what)
        return self._a.reshape(()).item()

    def __float__(self):
        return float(self._scalar("float()"))

    def __int__(self):
        return int(self._scalar("int()"))

    def __index__(self):
        if self._a.dtype.kind not in "iu" or self._a.ndim:
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return int(self._scalar("an index"))

    def __bool__(self):
        return bool(self._scalar("bool()"))

    def __complex__(self):
        return complex(self._scalar("complex()"))

    def item(self):
        return self._scalar(".item()")

    def tolist(self):
        transfers.note_d2h(".tolist()")
        return self._a.tolist()

    def __repr__(self):
        transfers.note_d2h("repr()")
        return "array(" + repr(self._a)[6:] if repr(self._a).startswith("array(") else repr(self._a)

    def __str__(self):
        transfers.note_d2h("str()")
        return str(self._a)

    def __format__(self, spec):
        transfers.note_d2h("format()")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (ndarray(self._a[i]) if self._a.ndim > 1 else ndarray(_np.asarray(self._a[i]))
                for i in range(len(self._a)))

    def __len__(self):
        return len(self._a)

    # ---------------------------------------------------------------- no buffer for MPI or NumPy
    # (real CuPy hands MPI a device pointer, which an MPI without CUDA support cannot read: the
    # package must stage through the host; the stand-in has no buffer at all, so any slip fails)

    # ---------------------------------------------------------------- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))
    device = property(lambda self: cuda.Device(0))

    @property
    def base(self):
        return None if self._a.base is None else _wrap(self._a.base)

    def take(self, indices, axis=None, out=None):      # CuPy's take: no mode
        return take(self, indices, axis=axis, out=out)

    def __getattr__(self, name):
        if name.startswith("__"):    # __array_interface__, __array_struct__, ...: NumPy's back doors
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *a, **k: _call(attr, a, k)
        return _wrap(attr)

    def __setattr__(self, name, value):
        if name == "shape":
            self._a.shape = value
        else:
            raise AttributeError(f"cannot set {name} on a device array")

    # ---------------------------------------------------------------- indexing
    def __getitem__(self, key):
        if _is_mask(key):
            transfers.note_d2h("boolean-mask indexing")
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = _un(value, "as the value of an assignment")


def _from_host(a):
    transfers.h2d += 1
    return ndarray(a)


def _binary(name):
    f = getattr(_op, name + "_" if name in ("and", "or") else name)
    fi = getattr(_op, "i" + name, None)     # iand, ior exist without the underscore; looked up once (a
    # name made per call would sit in the type cache: live bytes a tracemalloc step test counts)

    def method(self, other):
        if isinstance(other, _np.ndarray):
            _refuse_numpy(other, "as an operand")
        if not isinstance(other, (ndarray, int, float, complex, bool, _np.generic)):
            return NotImplemented
        return _wrap(f(self._a, _un(other)))

    def reflected(self, other):
        if isinstance(other, _np.ndarray):
            _refuse_numpy(other, "as an operand")
        if not isinstance(other, (int, float, complex, bool, _np.generic)):
            return NotImplemented
        return _wrap(f(_un(other), self._a))

    def inplace(self, other):
        if isinstance(other, _np.ndarray):
            _refuse_numpy(other, "as an operand")
        fi(self._a, _un(other))
        return self
    return method, reflected, inplace


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    _m, _r, _i = _binary(_name)
    setattr(ndarray, f"__{_name}__", _m)
    setattr(ndarray, f"__r{_name}__", _r)
    setattr(ndarray, f"__i{_name}__", _i)
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(_name)[0])
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda f: lambda self: ndarray(f(self._a)))(getattr(_op, _name)))
ndarray.__hash__ = None


# -------------------------------------------------------------------- module functions
def asarray(a, dtype=None, order=None):
    if type(a) is ndarray:
        return a if dtype is None or a.dtype == _np.dtype(dtype) else a.astype(dtype)
    transfers.h2d += 1
    return ndarray(_np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if type(a) is ndarray:
        return ndarray(_np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    transfers.h2d += 1
    return ndarray(_np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None):
    if type(a) is ndarray:
        return a.get(out=out, order=order)
    return _np.asarray(a, order=order)


def get_array_module(*args):
    return _sys.modules[__name__] if any(type(a) is ndarray for a in args) else _np


def take(a, indices, axis=None, out=None):
    return _call(_np.take, (a, indices), {"axis": axis, "out": out})


class _Ufunc:
    """A NumPy ufunc that takes and gives device arrays (its reduce/accumulate/at too)."""

    def __init__(self, uf):
        self._uf, self.__name__ = uf, uf.__name__
        self.nin, self.nout = uf.nin, uf.nout

    def __call__(self, *args, **kwargs):
        return _call(self._uf, args, kwargs)

    def __getattr__(self, name):
        attr = getattr(self._uf, name)
        return (lambda *a, **k: _call(attr, a, k)) if callable(attr) else attr


_HOST_ONLY = {"save", "load", "savez", "savez_compressed", "fromfile", "frombuffer", "genfromtxt", "loadtxt"}


def __getattr__(name):
    """Everything else NumPy has, on device arrays (CuPy covers NumPy's API by name)."""
    if name.startswith("__") or name in _HOST_ONLY:
        raise AttributeError(name)
    obj = getattr(_np, name)
    if isinstance(obj, type(_np)):      # numpy.linalg, numpy.random, ...: NumPy's own functions
        raise AttributeError(f"cupy.{name}: not covered by the strict stand-in (add it, with CuPy's "
                             "signatures, to tests/strict_device/cupy)")
    if isinstance(obj, _np.ufunc):
        return _Ufunc(obj)
    if callable(obj) and not isinstance(obj, type):
        return lambda *a, **k: _call(obj, a, k)
    return obj


class _StrideTricks:
    @staticmethod
    def as_strided(x, shape=None, strides=None):      # cupy.lib.stride_tricks.as_strided
        if type(x) is not ndarray:
            raise TypeError(f"as_strided: expected a device array, got {type(x)}")
        return ndarray(_np.lib.stride_tricks.as_strided(x._a, shape, strides))


class _Lib:
    stride_tricks = _StrideTricks()


lib = _Lib()


# -------------------------------------------------------------------- the CUDA pieces the package uses
class _Stream:
    def synchronize(self):
        cuda.synchronizations += 1


class _MemoryPool:
    def __init__(self):
        self._held = 0

    def total_bytes(self):
        return self._held

    def used_bytes(self):
        return self._held

    def free_all_blocks(self):
        pass


class _Runtime:
    GiB = 1 << 30

    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDeviceProperties(i):
        return {"name": b"Strict CuPy stand-in (NumPy)", "totalGlobalMem": 16 * _Runtime.GiB,
                "multiProcessorCount": 1, "major": 9, "minor": 0}

    @staticmethod
    def memGetInfo():
        return 16 * _Runtime.GiB, 16 * _Runtime.GiB

    @staticmethod
    def runtimeGetVersion():
        return 12000

    @staticmethod
    def driverGetVersion():
        return 12000


class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise ValueError(f"invalid device ordinal {self.id} (the stand-in has one device)")

    def use(self):
        return self

    def synchronize(self):
        cuda.synchronizations += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Cuda:
    Device = _Device
    runtime = _Runtime
    synchronizations = 0
    _stream = _Stream()

    def get_current_stream(self):
        return self._stream

    def Stream(self, non_blocking=False):
        return _Stream()


cuda = _Cuda()
_pool = _MemoryPool()


def get_default_memory_pool():
    return _pool


def get_default_pinned_memory_pool():
    return _pool
