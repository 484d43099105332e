"""A strict stand-in for CuPy, NumPy underneath, so that the suite runs nstlite's CuPy code
paths on machines without a GPU.

What it checks that NumPy alone cannot:

* its ``ndarray`` is not a NumPy array and refuses implicit conversion (``np.asarray(a)``,
  ``np.sum(a)``, mixing it with a NumPy array in an operation) with a ``TypeError``, as CuPy
  does (stricter than CuPy in one way: NumPy functions do not dispatch to it either, so a
  ``np.`` call on a device array in library code fails);
* ``ElementwiseKernel`` runs the NumPy reference of the nstlite kernel of that name
  (``nstlite.backend.Fused``) as one launch, after checking what CuPy would refuse;
* ``cuda.Device().mem_info`` and ``get_default_memory_pool()`` report the device memory that
  ``set_memory`` sets (default: 16 GiB free), for the block sizes and the memory check;
* it counts what would cost on a GPU (``COUNTS``): ``launches`` (every operation that computes
  or copies: an element-wise operation, a reduction, a GEMM, a copy; views are free), ``syncs``
  (everything that makes the host wait for the device: ``get``/``asnumpy``, ``float``/``int``/
  ``bool``/``item``/``tolist``, ``repr``, boolean-mask indexing, which needs the number of true
  elements on the host), and ``h2d`` (host -> device copies: ``asarray`` of host data).
  ``COUNTS.sync_sites`` says where each sync came from (file:line of the first frame outside
  this module and NumPy); ``operand_copies`` / ``copied_bytes`` / ``copy_sites``: the copies
  CuPy's ``matmul`` makes of operands that are not C-contiguous (cuBLAS reads those only).

Use ``install()`` / ``uninstall()`` (``nstlite.backend.set_gpu_module``) or the ``standin``
fixture of ``tests/test_cupy_standin.py``. Each operation is one "launch": CuPy fuses nothing
either unless told to (``ElementwiseKernel``), so the count is what a GPU would run.
"""
from __future__ import annotations

import collections
import sys
import traceback
import types

import numpy

__name__ = "cupy"  # noqa: A001  nstlite keys caches on xp.__name__; the stand-in is "cupy" there
__version__ = "standin-" + numpy.__version__

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
             "a NumPy array explicitly.")
# functions and methods that make views or read metadata: no kernel
_VIEWS = {"reshape", "transpose", "broadcast_to", "as_strided", "may_share_memory", "shares_memory",
          "swapaxes", "squeeze", "expand_dims", "view", "moveaxis", "result_type", "dtype",
          "iinfo", "finfo", "can_cast", "promote_types", "ndim", "shape", "atleast_1d", "atleast_2d"}
# functions that take host data (a host -> device copy when given a NumPy array)
_FROM_HOST = {"asarray", "array", "ascontiguousarray", "asanyarray"}


class Counts:
    """What the stand-in counted since the last ``reset``."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.launches = self.syncs = self.h2d = self.operand_copies = self.copied_bytes = 0
        self.sync_sites = collections.Counter()
        self.copy_sites = collections.Counter()

    def copy(self, nbytes):
        """A copy CuPy makes behind the caller's back (a kernel launch and the bytes moved)."""
        self.launches += 1
        self.operand_copies += 1
        self.copied_bytes += nbytes
        self.copy_sites[_caller()] += 1

    def sync(self, what):
        self.syncs += 1
        self.sync_sites[f"{what} at {_caller()}"] += 1

    def snapshot(self):
        return {"launches": self.launches, "syncs": self.syncs, "h2d": self.h2d,
                "operand_copies": self.operand_copies, "copied_bytes": self.copied_bytes}


COUNTS = Counts()


def _caller():
    """file:line of the innermost frame outside this module and NumPy."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename != __file__ and "/numpy/" not in frame.filename:
            return "/".join(frame.filename.split("/")[-2:]) + f":{frame.lineno}"
    return "?"


def _unwrap(x, host_ok=False):
    """The NumPy array inside a stand-in array (recursively in lists, tuples and dicts); a NumPy
    array is refused (CuPy does not mix host and device arrays) unless ``host_ok``."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, numpy.ndarray):
        if host_ok:
            COUNTS.h2d += 1
            return x
        raise TypeError(f"Unsupported type {type(x)}: a NumPy array where a device array is expected")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, host_ok) for v in x)
    return x


def _wrap(x):
    """NumPy results as stand-in arrays (NumPy's scalars as 0-d arrays, as CuPy returns)."""
    if isinstance(x, numpy.ndarray):
        return ndarray(x)
    if isinstance(x, numpy.generic):
        return ndarray(numpy.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _device_call(fn, name, host_ok=False):
    def call(*args, **kwargs):
        if name not in _VIEWS:
            COUNTS.launches += 1
        out = kwargs.get("out")
        args = _unwrap(args, host_ok)
        kwargs = {k: _unwrap(v, host_ok and k != "out") for k, v in kwargs.items()}
        result = fn(*args, **kwargs)
        return out if isinstance(out, ndarray) and result is out._a else _wrap(result)  # out= gives out back
    call.__name__ = name
    return call


def _binary(op, reflected=False):
    def method(self, other):
        if isinstance(other, numpy.ndarray):
            raise TypeError(f"Unsupported type {type(other)}: a NumPy array mixed with a device array")
        other = other._a if isinstance(other, ndarray) else other
        COUNTS.launches += 1
        return _wrap(op(other, self._a) if reflected else op(self._a, other))
    return method


def _inplace(ufunc):
    def method(self, other):
        if isinstance(other, numpy.ndarray):
            raise TypeError(f"Unsupported type {type(other)}: a NumPy array mixed with a device array")
        COUNTS.launches += 1
        ufunc(self._a, other._a if isinstance(other, ndarray) else other, out=self._a)
        return self
    return method


class ndarray:  # noqa: N801  (CuPy's name)
    """A device array: a NumPy array that only the stand-in's functions may touch."""

    __slots__ = ("_a",)
    __array_ufunc__ = None  # NumPy's ufuncs refuse it; NumPy's operators hand over to ours
    __hash__ = None

    def __init__(self, a):
        self._a = a

    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a device array: {_IMPLICIT}")

    # metadata: no kernel
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __getattr__(self, name):  # methods: sum, astype, copy, reshape, fill ...
        attr = getattr(self._a, name)
        if not callable(attr):
            raise AttributeError(name)
        if name in ("item", "tolist"):
            COUNTS.sync(name)
            return attr
        return _device_call(attr, name)

    # the host side: every one of these makes the host wait for the device
    def get(self):
        COUNTS.sync("get")
        return self._a.copy()

    def __float__(self):
        COUNTS.sync("float")
        return float(self._a)

    def __int__(self):
        COUNTS.sync("int")
        return int(self._a)

    def __index__(self):
        COUNTS.sync("index")
        return self._a.__index__()

    def __bool__(self):
        COUNTS.sync("bool")
        return bool(self._a)

    def __repr__(self):
        COUNTS.sync("repr")
        return "standin." + repr(self._a)

    def __iter__(self):
        return (ndarray(self._a[i]) if self._a.ndim > 1 else _wrap(self._a[i]) for i in range(len(self._a)))

    # indexing: views are free; a boolean mask needs its count of true elements on the host
    def _index(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        for k in keys:
            if isinstance(k, ndarray) and k.dtype == numpy.bool_:
                COUNTS.sync("boolean-mask indexing")
        return _unwrap(key, host_ok=True)

    def __getitem__(self, key):
        key = self._index(key)
        out = self._a[key]
        if not (isinstance(out, numpy.ndarray) and numpy.may_share_memory(out, self._a)):
            COUNTS.launches += 1  # a gather, not a view
        return _wrap(out)

    def __setitem__(self, key, value):
        key = self._index(key)
        if isinstance(value, numpy.ndarray):
            raise TypeError(f"Unsupported type {type(value)}: a NumPy array assigned into a device array")
        COUNTS.launches += 1
        self._a[key] = value._a if isinstance(value, ndarray) else value

    __add__, __radd__ = _binary(numpy.add), _binary(numpy.add, True)
    __sub__, __rsub__ = _binary(numpy.subtract), _binary(numpy.subtract, True)
    __mul__, __rmul__ = _binary(numpy.multiply), _binary(numpy.multiply, True)
    __truediv__, __rtruediv__ = _binary(numpy.true_divide), _binary(numpy.true_divide, True)
    __floordiv__, __rfloordiv__ = _binary(numpy.floor_divide), _binary(numpy.floor_divide, True)
    __mod__, __rmod__ = _binary(numpy.mod), _binary(numpy.mod, True)
    __pow__, __rpow__ = _binary(numpy.power), _binary(numpy.power, True)
    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)
    __and__, __rand__ = _binary(numpy.logical_and), _binary(numpy.logical_and, True)
    __or__, __ror__ = _binary(numpy.logical_or), _binary(numpy.logical_or, True)
    __xor__ = _binary(numpy.logical_xor)
    __lt__, __le__ = _binary(numpy.less), _binary(numpy.less_equal)
    __gt__, __ge__ = _binary(numpy.greater), _binary(numpy.greater_equal)
    __eq__, __ne__ = _binary(numpy.equal), _binary(numpy.not_equal)
    __iadd__, __isub__ = _inplace(numpy.add), _inplace(numpy.subtract)
    __imul__, __itruediv__ = _inplace(numpy.multiply), _inplace(numpy.true_divide)
    __ipow__ = _inplace(numpy.power)

    def __neg__(self):
        COUNTS.launches += 1
        return ndarray(-self._a)

    def __pos__(self):
        return self

    def __abs__(self):
        COUNTS.launches += 1
        return ndarray(abs(self._a))

    def __invert__(self):
        COUNTS.launches += 1
        return ndarray(~self._a)


def asnumpy(a, out=None):
    """Device -> host (a sync); host data passes through as CuPy's does."""
    if isinstance(a, ndarray):
        COUNTS.sync("asnumpy")
        if out is not None:
            numpy.copyto(out, a._a)
            return out
        return a._a.copy()
    return numpy.asarray(a)


def _namespace(numpy_module, name):
    """A submodule (linalg, lib.stride_tricks ...) whose functions take and give device arrays."""
    ns = types.SimpleNamespace()
    for attr in dir(numpy_module):
        value = getattr(numpy_module, attr)
        if callable(value) and not isinstance(value, type) and not attr.startswith("_"):
            setattr(ns, attr, _device_call(value, attr))
    ns.__name__ = name
    return ns


linalg = _namespace(numpy.linalg, "cupy.linalg")
lib = types.SimpleNamespace(stride_tricks=_namespace(numpy.lib.stride_tricks, "cupy.lib.stride_tricks"))


# The device's memory as the stand-in reports it: ``mem_info`` (free, total) and the bytes the
# memory pool holds unused (``get_default_memory_pool().free_bytes()``). Tests set it with
# ``set_memory``; nothing is really allocated against it.
MEMORY = {"free": 16 << 30, "total": 16 << 30, "pool_free": 0}


def set_memory(free=16 << 30, total=None, pool_free=0):
    """What the stand-in's device says it has free (default: an idle 16 GiB device)."""
    MEMORY.update(free=int(free), total=int(max(free + pool_free, total or 0, 16 << 30)), pool_free=int(pool_free))


class _Runtime:
    @staticmethod
    def getDeviceCount():  # noqa: N802  (CUDA's name)
        return 1

    @staticmethod
    def memGetInfo():  # noqa: N802
        return MEMORY["free"], MEMORY["total"]


class _Device:
    def __init__(self, index=0):
        self.id = index

    @property
    def mem_info(self):  # (free, total) bytes, as cudaMemGetInfo
        return _Runtime.memGetInfo()

    def synchronize(self):
        COUNTS.sync("Device.synchronize")

    def use(self):
        return self


class _Stream:
    def synchronize(self):
        COUNTS.sync("Stream.synchronize")


cuda = types.SimpleNamespace(runtime=_Runtime, Device=_Device, Stream=types.SimpleNamespace(null=_Stream()))


class _MemoryPool:
    """CuPy's default memory pool, as far as nstlite reads it."""

    def free_bytes(self):
        return MEMORY["pool_free"]

    def used_bytes(self):
        return MEMORY["total"] - MEMORY["free"] - MEMORY["pool_free"]

    def total_bytes(self):
        return self.used_bytes() + MEMORY["pool_free"]

    def free_all_blocks(self):
        MEMORY["free"] += MEMORY["pool_free"]
        MEMORY["pool_free"] = 0


_POOL = _MemoryPool()


def get_default_memory_pool():
    return _POOL


class ElementwiseKernel:
    """CuPy's ``ElementwiseKernel`` for the kernels nstlite defines (``nstlite.backend.Fused``):
    the CUDA C cannot run here, so a call runs the kernel's NumPy reference, found by name, as
    one launch. What CuPy would refuse or get wrong is refused: a parameter list that is not the
    registered kernel's, arguments that are not device arrays of one dtype and one shape (the
    outputs given, written in place), an output overlapping another argument. The inputs are
    handed to the reference as copies: the CUDA code only reads them, whatever the reference
    does with its arguments."""

    def __init__(self, in_params, out_params, operation, name="kernel", **options):
        from nstlite.backend import fused_reference
        self.fused = fused_reference(name)
        if (in_params, out_params, operation) != (self.fused.in_params, self.fused.out_params, self.fused.operation):
            raise ValueError(f"ElementwiseKernel {name!r} is not the kernel nstlite registered under that name")
        for param in (in_params + "," + out_params).split(","):
            if param.split()[-1] not in operation:
                raise ValueError(f"ElementwiseKernel {name!r}: parameter {param.strip()!r} unused by its operation")
        self.n_in = len(in_params.split(","))

    def __call__(self, *args):
        if not all(isinstance(a, ndarray) for a in args):
            raise TypeError(f"{self.fused.name}: every argument must be a device array")
        arrays = [a._a for a in args]
        if len({a.dtype for a in arrays}) != 1:
            raise TypeError(f"{self.fused.name}: one dtype T for every argument, not {[a.dtype for a in arrays]}")
        shape = numpy.broadcast_shapes(*(a.shape for a in arrays))
        outputs = arrays[self.n_in:]
        if any(o.shape != shape for o in outputs):
            raise ValueError(f"{self.fused.name}: the outputs must have the broadcast shape {shape}")
        for k, o in enumerate(outputs):  # outputs may interleave (views of one array), never share
            if any(numpy.may_share_memory(o, a) for a in arrays[:self.n_in]) or any(
                    numpy.shares_memory(o, other) for other in outputs[k + 1:]):
                raise ValueError(f"{self.fused.name}: output {k} overlaps another argument")
        COUNTS.launches += 1
        self.fused.reference(numpy, *[a.copy() for a in arrays[:self.n_in]], *outputs)
        return tuple(args[self.n_in:]) if len(outputs) > 1 else args[-1]


def get_array_module(*arrays):
    return sys.modules[__spec__.name] if any(isinstance(a, ndarray) for a in arrays) else numpy


def matmul(a, b, out=None):
    """CuPy's matmul: cuBLAS reads C-contiguous operands only, so CuPy copies any other
    operand first (``COUNTS.operand_copies``), and computes into a temporary when ``out`` is not
    C-contiguous or overlaps an operand."""
    for x in (a, b):
        if isinstance(x, ndarray) and not x._a.flags.c_contiguous:
            COUNTS.copy(x._a.nbytes)
    if isinstance(out, ndarray) and not (out._a.flags.c_contiguous and not any(
            isinstance(x, ndarray) and numpy.may_share_memory(out._a, x._a) for x in (a, b))):
        COUNTS.copy(out._a.nbytes)
    COUNTS.launches += 1
    result = numpy.matmul(_unwrap(a), _unwrap(b), out=_unwrap(out))
    return out if isinstance(out, ndarray) else _wrap(result)


def __getattr__(name):  # everything else: NumPy's functions on device arrays, NumPy's dtypes
    value = getattr(numpy, name)
    if isinstance(value, (type, numpy.dtype)) or not callable(value):
        return value
    fn = _device_call(value, name, host_ok=name in _FROM_HOST)
    setattr(sys.modules[__spec__.name], name, fn)
    return fn


def install():
    """Make nstlite's "gpu" device this stand-in (``nstlite.backend.set_gpu_module``)."""
    from nstlite import backend
    backend.set_gpu_module(sys.modules[__spec__.name])
    COUNTS.reset()
    set_memory()


def uninstall():
    from nstlite import backend
    backend.set_gpu_module(None)
