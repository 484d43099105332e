"""The one place that knows about array libraries.

Every array operation in nstlite goes through the module returned here (called ``xp`` by
convention, as in Chainer and CuPy's own docs), so the same lines run on NumPy (CPU) and
CuPy (GPU). This is the only module that imports cupy; the import is guarded so that the
package imports and runs on machines without CUDA.
"""
import numpy

from .errors import NstliteError

try:  # pragma: no cover - depends on the machine
    import cupy  # noqa: F401
    try:
        _GPU_OK = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        _GPU_OK = False
except Exception:  # ImportError, or a CUDA library that fails to load
    cupy = None
    _GPU_OK = False

DEVICES = ("cpu", "gpu")


class BackendError(NstliteError):
    """Raised when a requested device is not available."""


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    return _GPU_OK


def xp_for(device):
    """Array module for a device name: numpy for 'cpu', cupy for 'gpu'."""
    if device == "cpu":
        return numpy
    if device == "gpu":
        if not _GPU_OK:
            raise BackendError("device 'gpu' requested but CuPy with a CUDA device is not available "
                               "(install nstlite[gpu] with the CuPy wheel for your CUDA)")
        return cupy
    raise BackendError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")


def get_array_module(x):
    """numpy or cupy, whichever owns ``x`` (numpy for anything that is not a CuPy array)."""
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy
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
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy.asnumpy(a)
    return numpy.asarray(a)


def scalar(a):
    """A Python float from a 0-d array. On the GPU this synchronises: call it outside hot loops."""
    return float(to_host(a))
