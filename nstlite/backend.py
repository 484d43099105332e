"""The one place that knows about array libraries.

Every array operation in nstlite goes through the module returned here (called ``xp`` by
convention, as in Chainer and CuPy's own docs), so the same lines run on NumPy (CPU) and
CuPy (GPU). This is the only module that imports cupy, and only when the GPU is asked for
(``xp_for("gpu")``, ``gpu_available()``): a CPU run never imports CuPy nor initialises CUDA,
even where CuPy is installed. The import is guarded, so that the package runs on machines
without CUDA.
"""
import sys

import numpy

from .errors import NstliteError

DEVICES = ("cpu", "gpu")

_gpu_module = None      # the GPU's array module once resolved: cupy, or what set_gpu_module gave
_gpu_resolved = False   # whether CuPy was looked for (or a module set)


class BackendError(NstliteError):
    """Raised when a requested device is not available."""


def _gpu():
    """The GPU array module, looked for on first use: cupy when it imports and sees a CUDA
    device, else None."""
    global _gpu_module, _gpu_resolved
    if not _gpu_resolved:
        _gpu_resolved = True
        try:  # pragma: no cover - depends on the machine
            import cupy
            _gpu_module = cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
        except Exception:  # ImportError, or a CUDA library that fails to load
            _gpu_module = None
    return _gpu_module


def _known_gpu_module():
    """The GPU module if it is already resolved or imported, without importing anything: an
    array can only be a CuPy array if CuPy was imported."""
    return _gpu_module if _gpu_resolved else sys.modules.get("cupy")


def set_gpu_module(module) -> None:
    """Make the device 'gpu' mean ``module``, a CuPy-compatible array module (the test suite's
    NumPy-backed stand-in for CuPy); None: look for CuPy again on the next use."""
    global _gpu_module, _gpu_resolved
    _gpu_module, _gpu_resolved = module, module is not None


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device (imports CuPy on first call)."""
    return _gpu() is not None


def xp_for(device):
    """Array module for a device name: numpy for 'cpu', cupy for 'gpu'."""
    if device == "cpu":
        return numpy
    if device == "gpu":
        xp = _gpu()
        if xp is None:
            raise BackendError("device 'gpu' requested but CuPy with a CUDA device is not available "
                               "(install nstlite[gpu] with the CuPy wheel for your CUDA)")
        return xp
    raise BackendError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")


def get_array_module(x):
    """numpy or cupy, whichever owns ``x`` (numpy for anything that is not a CuPy array)."""
    gpu = _known_gpu_module()
    if gpu is not None and isinstance(x, gpu.ndarray):
        return gpu
    return numpy


def to_device(a, device, dtype=None):
    """Copy/convert ``a`` onto ``device`` ('cpu' or 'gpu'), optionally casting to ``dtype``."""
    xp = xp_for(device)
    if xp is numpy:
        a = to_host(a)
        return numpy.asarray(a, dtype=dtype)
    return xp.asarray(a, dtype=dtype)


def to_host(a):
    """A NumPy array for ``a`` (a device->host copy for CuPy arrays; no copy for NumPy)."""
    gpu = _known_gpu_module()
    if gpu is not None and isinstance(a, gpu.ndarray):
        return gpu.asnumpy(a)
    return numpy.asarray(a)


def scalar(a):
    """A Python float from a 0-d array. On the GPU this synchronises: call it outside hot loops."""
    return float(to_host(a))


class Fused:
    """An element-wise computation that the same library line runs on NumPy and on CuPy: on
    NumPy ``reference(numpy, *arrays)`` (plain NumPy, one pass per operation, the CPU's code); on
    CuPy one ``cupy.ElementwiseKernel(in_params, out_params, operation, name)``, compiled on first
    use: a single pass over memory instead of one per operation.

    Call as ``kernel(xp, *inputs, *outputs)``: arrays of one shape, the outputs written in place.
    ``operation`` is the CUDA C for one element (``T``: the arrays' common dtype); it must compute
    what ``reference`` computes and read its inputs only (the reference may use its inputs as
    scratch). Every kernel is registered by name (``fused_reference``), so that a CuPy stand-in
    can run the reference in place of the CUDA code."""

    def __init__(self, name, in_params, out_params, operation, reference):
        self.name, self.in_params, self.out_params = name, in_params, out_params
        self.operation, self.reference = operation, reference
        self.arity = (len(in_params.split(",")), len(out_params.split(",")))
        self._compiled = {}  # array module name -> its ElementwiseKernel
        _FUSED[name] = self

    def __call__(self, xp, *arrays):
        if len(arrays) != sum(self.arity):
            raise TypeError(f"{self.name} takes {self.arity[0]} inputs and {self.arity[1]} outputs, "
                            f"not {len(arrays)} arrays")
        if xp is numpy:
            self.reference(xp, *arrays)
            return
        kernel = self._compiled.get(xp.__name__)
        if kernel is None:
            kernel = xp.ElementwiseKernel(self.in_params, self.out_params, self.operation, self.name)
            self._compiled[xp.__name__] = kernel
        kernel(*arrays)


_FUSED = {}  # name -> Fused


def fused_reference(name):
    """The ``Fused`` kernel registered under ``name`` (what a CuPy stand-in runs instead)."""
    return _FUSED[name]


def fused_names():
    """The names of every ``Fused`` kernel the engine defines (the Winograd transforms)."""
    from .fast import winograd  # noqa: F401  (the kernels register when their module loads)
    return sorted(_FUSED)


def device_free_bytes(xp):
    """Bytes the GPU of array module ``xp`` can still give this process: the device's free
    memory (``cupy.cuda.Device().mem_info``) plus what CuPy's memory pool holds unused (freed
    arrays it keeps for reuse). None for NumPy: host memory is ``nstlite.memory``'s to read."""
    if xp is numpy:
        return None
    free, _total = xp.cuda.Device().mem_info
    return int(free) + int(xp.get_default_memory_pool().free_bytes())
