"""Error measures and tolerances shared by the engine's tests (test_fast_*.py).

Normwise relative error, max|fast - ref| / max|ref|:
  float64: 1e-12 for every kernel (Winograd's transforms lose a few digits: ~1e-14 seen);
  float32: 2e-6 for the shifted GEMM, 1e-5 for Winograd F(4x4, 3x3) (its transforms amplify
  rounding by roughly 10x; ~3e-6 seen on the tests' inputs). 'auto' mixes both.
"""
import numpy as np

TOL = {("float64", "shifted_gemm"): 1e-12, ("float64", "winograd"): 1e-12, ("float64", "auto"): 1e-12,
       ("float32", "shifted_gemm"): 2e-6, ("float32", "winograd"): 1e-5, ("float32", "auto"): 1e-5}


def rel(a, b):
    """max|a - b| / max|b| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def rel_l2(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
