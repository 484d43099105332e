"""The one array namespace: device names, conversions, and the one-line device errors."""
import numpy as np
import pytest

from nstlite import backend
from nstlite.errors import NstliteError


def test_cpu_is_numpy_and_arrays_say_their_module():
    assert backend.xp_for("cpu") is np
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module([1.0, 2.0]) is np  # anything that is not a CuPy array


@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'; choose one of cpu, gpu"),
                                             ("CPU", "unknown device 'CPU'")])
def test_unknown_device_is_a_one_line_user_error(device, message):
    with pytest.raises(NstliteError, match=message):
        backend.xp_for(device)


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is present")
def test_gpu_without_cupy_says_what_to_install():
    with pytest.raises(backend.BackendError, match=r"install nstlite\[gpu\]"):
        backend.xp_for("gpu")


def test_to_device_casts_and_to_host_does_not_copy_numpy():
    a = backend.to_device([[1, 2], [3, 4]], "cpu", np.float32)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    assert backend.to_host(a) is a
    b = backend.to_device(a, "cpu")  # no dtype: kept
    assert b.dtype == np.float32
    assert backend.scalar(np.asarray(2.5, np.float32)) == 2.5 and isinstance(backend.scalar(a[0, 0]), float)


def test_devices_lists_what_xp_for_accepts():
    assert backend.DEVICES == ("cpu", "gpu")
    for device in backend.DEVICES:
        if device == "cpu" or backend.gpu_available():
            backend.xp_for(device)
