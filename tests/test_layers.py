"""Layers: forward against independent oracles, backward against finite differences."""
import numpy as np
import pytest
from scipy.signal import correlate2d

from nstlite import layers as L
from nstlite.backend import to_host
from nstlite.gradient_check import (PER_OP_TOL, _away_from_zero, _without_pool_ties, check_op,
                                    numerical_gradient, rel_error)

SHAPES = [(1, 1, 1), (3, 5, 7), (2, 8, 8), (4, 1, 6), (3, 9, 4)]


def conv_oracle(x, w, b):
    """Convolution by scipy.signal.correlate2d, channel by channel (float64)."""
    c_out, c_in = w.shape[:2]
    out = np.zeros((c_out,) + x.shape[1:])
    for o in range(c_out):
        out[o] = b[o]
        for c in range(c_in):
            out[o] += correlate2d(x[c], w[o, c], mode="same", boundary="fill", fillvalue=0)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", sorted(L.CONV_KERNELS))
def test_conv_forward_matches_correlate2d(xp, rng, shape, kernel):
    c_in = shape[0]
    x = rng.standard_normal(shape)
    w = rng.standard_normal((5, c_in, 3, 3))
    b = rng.standard_normal(5)
    out, _ = L.conv3x3_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), kernel=kernel)
    np.testing.assert_allclose(to_host(out), conv_oracle(x, w, b), rtol=1e-10, atol=1e-10)


def test_conv_forward_nested_loops_float32(rng):
    """An independent oracle written out as the definition, in float32: dtype follows input."""
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    xpad = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    expect = np.zeros((3, 4, 5))
    for o in range(3):
        for yy in range(4):
            for xx in range(5):
                expect[o, yy, xx] = b[o] + np.sum(w[o] * xpad[:, yy:yy + 3, xx:xx + 3])
    out, _ = L.conv3x3_forward_reference(x, w, b)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", sorted(L.CONV_KERNELS))
def test_conv_backward_finite_differences(xp, rng, shape, kernel):
    fwd, bwd = L.CONV_KERNELS[kernel]
    w = xp.asarray(rng.standard_normal((4, shape[0], 3, 3)))
    b = xp.asarray(rng.standard_normal(4))
    c = check_op("conv", lambda z: fwd(z, w, b), bwd, xp.asarray(rng.standard_normal(shape)), rng)
    assert c.error < PER_OP_TOL, c


def test_relu_forward_backward(xp, rng):
    x = xp.asarray(_away_from_zero(rng, (3, 4, 5)))
    out, cache = L.relu_forward(x)
    np.testing.assert_array_equal(to_host(out), np.maximum(to_host(x), 0))
    c = check_op("relu", L.relu_forward, L.relu_backward, x, rng)
    assert c.error < PER_OP_TOL, c


def _pool_by_loops(x, reduce):
    """2x2 / stride-2 pooling of x (C, H, W) window by window (floor mode), ``reduce`` over each."""
    c, h, w = x.shape
    expect = np.zeros((c, h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            expect[:, i, j] = reduce(x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2], axis=(1, 2))
    return expect


@pytest.mark.parametrize("shape", [(2, 4, 6), (3, 5, 7), (1, 2, 3), (2, 3, 2)])
def test_avg_pool_forward_loops(xp, rng, shape):
    x = rng.standard_normal(shape)
    out, _ = L.avg_pool_forward(xp.asarray(x))
    np.testing.assert_allclose(to_host(out), _pool_by_loops(x, np.mean), rtol=1e-12)


@pytest.mark.parametrize("shape", [(2, 4, 6), (3, 5, 7), (2, 3, 2)])
def test_avg_pool_backward_finite_differences(xp, rng, shape):
    c = check_op("avg", L.avg_pool_forward, L.avg_pool_backward, xp.asarray(rng.standard_normal(shape)), rng)
    assert c.error < PER_OP_TOL, c


@pytest.mark.parametrize("shape", [(2, 4, 6), (3, 5, 7)])
def test_max_pool_forward_loops_and_backward(xp, rng, shape):
    x = _without_pool_ties(rng, shape)
    out, _ = L.max_pool_forward(xp.asarray(x))
    np.testing.assert_array_equal(to_host(out), _pool_by_loops(x, np.max))
    chk = check_op("max", L.max_pool_forward, L.max_pool_backward, xp.asarray(x), rng)
    assert chk.error < PER_OP_TOL, chk


def test_max_pool_tie_goes_to_one_input():
    x = np.ones((1, 2, 2))
    out, cache = L.max_pool_forward(x)
    dx = L.max_pool_backward(np.ones((1, 1, 1)), cache)
    assert out[0, 0, 0] == 1 and dx.sum() == 1 and dx[0, 0, 0] == 1


def test_dtype_follows_input(rng):
    for dt in (np.float32, np.float64):
        x = rng.standard_normal((2, 4, 4)).astype(dt)
        w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
        b = np.zeros(3, np.float32)
        out, cache = L.conv3x3_forward(x, w, b)
        assert out.dtype == dt and L.conv3x3_backward(out, cache).dtype == dt
        for fwd, bwd in (L.POOLING["avg"], L.POOLING["max"], (L.relu_forward, L.relu_backward)):
            o, c = fwd(x)
            assert o.dtype == dt and bwd(o, c).dtype == dt


def test_numerical_gradient_and_rel_error_can_fail(rng):
    """The checker itself detects a wrong gradient (a backward off by a factor of 1.01)."""
    x = rng.standard_normal((2, 3, 3))
    num = numerical_gradient(lambda z: float(np.sum(z ** 3)), x)
    assert rel_error(3 * x ** 2, num) < 1e-8
    assert rel_error(3.03 * x ** 2, num) > 1e-3


def test_unknown_kernel_is_an_error():
    with pytest.raises(ValueError, match="unknown conv kernel"):
        L.get_conv_kernel("nope")
