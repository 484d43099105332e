"""``import cupy`` gives the suite's NumPy-backed CuPy stand-in (``tests/cupy_standin.py``), so
that every gpu-parametrised test runs through the CuPy code paths on a machine without a GPU:

    PYTHONPATH=tests/cupy_shim:. python -m pytest -q -k gpu tests
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import cupy_standin  # noqa: E402

sys.modules["cupy"] = cupy_standin  # what ``import cupy`` returns from here on
