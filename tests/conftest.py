"""Shared fixtures: every array test runs on NumPy and, where CuPy and a GPU exist, on CuPy."""
import os

import numpy as np
import pytest

from nstlite.backend import gpu_available, xp_for
from nstlite.weights import default_weights_path

DEVICES = ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(not gpu_available(),
                                                                  reason="CuPy with a CUDA device not available"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def xp(device):
    return xp_for(device)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def real_weights_path():
    path = default_weights_path()
    return path if os.path.exists(path) else None


requires_weights = pytest.mark.skipif(real_weights_path() is None,
                                      reason="real VGG19 weights not present (python -m weights_convert fetch)")
