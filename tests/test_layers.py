"""Layers: forward against independent oracles, backward against finite differences."""
import numpy as np
import pytest
from scipy.signal import correlate2d

from nstlite import layers as L
from nstlite.backend import to_host
from nstlite.errors import NstliteError
from nstlite.fast.plan import CONV_KERNELS, check_kernel
from nstlite.gradient_check import PER_OP_TOL, check_op, numerical_gradient, rel_error

SHAPES = [(1, 1, 1), (3, 5, 7), (2, 8, 8), (4, 1, 6), (3, 9, 4)]


def away_from_zero(rng, shape, margin=1e-3):
    """Normal samples at least ``margin`` from the ReLU's kink at 0 (resampled there)."""
    x = rng.standard_normal(shape)
    while (np.abs(x) < margin).any():
        bad = np.abs(x) < margin
        x[bad] = rng.standard_normal(int(bad.sum()))
    return x


def without_pool_ties(rng, shape, margin=1e-3):
    """A (C, H, W) sample whose 2x2 windows have a clear maximum (top two taps at least
    ``margin`` apart): finite differences then never switch a max-pool's winner."""
    c, h, w = shape
    while True:
        x = rng.standard_normal(shape)
        win = x[:, :h // 2 * 2, :w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4)
        top2 = np.sort(win.reshape(c, h // 2, w // 2, 4), axis=-1)[..., -2:]
        if (top2[..., 1] - top2[..., 0]).min() > margin:
            return x


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
@pytest.mark.parametrize("kernel", sorted(CONV_KERNELS))
def test_conv_forward_matches_correlate2d(xp, rng, shape, kernel):
    c_in = shape[0]
    x = rng.standard_normal(shape)
    w = rng.standard_normal((5, c_in, 3, 3))
    b = rng.standard_normal(5)
    out, _ = CONV_KERNELS[kernel][0](xp.asarray(x), xp.asarray(w), xp.asarray(b))
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
@pytest.mark.parametrize("kernel", sorted(CONV_KERNELS))
def test_conv_backward_finite_differences(xp, rng, shape, kernel):
    fwd, bwd = CONV_KERNELS[kernel]
    w = xp.asarray(rng.standard_normal((4, shape[0], 3, 3)))
    b = xp.asarray(rng.standard_normal(4))
    c = check_op("conv", lambda z: fwd(z, w, b), bwd, xp.asarray(rng.standard_normal(shape)), rng)
    assert c.error < PER_OP_TOL, c


def test_relu_forward_backward(xp, rng):
    x = xp.asarray(away_from_zero(rng, (3, 4, 5)))
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
    x = without_pool_ties(rng, shape)
    out, _ = L.max_pool_forward(xp.asarray(x))
    np.testing.assert_array_equal(to_host(out), _pool_by_loops(x, np.max))
    chk = check_op("max", L.max_pool_forward, L.max_pool_backward, xp.asarray(x), rng)
    assert chk.error < PER_OP_TOL, chk


# ----------------------------------------------------------------------------- pooling, both layouts
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("shape", [(2, 4, 6), (3, 5, 7), (1, 3, 2), (2, 2, 5), (1, 1, 4)])
def test_pooling_is_one_implementation_for_both_layouts(rng, pooling, shape):
    """``pool_forward_into``/``pool_backward_into`` on a (C, H, W) map and on the same map
    channels-last (H, W, C) give the window-loop oracle's outputs, and the backward sends each
    window's gradient to its taps (a quarter each, or all to the winner), times the ReLU mask,
    with zero on the dropped odd row/column (which must overwrite what dx held)."""
    x = rng.standard_normal(shape)
    c, h, w = shape
    expect = _pool_by_loops(x, np.mean if pooling == "avg" else np.max)
    dout = rng.standard_normal((c, h // 2, w // 2))
    mask = rng.standard_normal(shape) > 0
    # the backward by window loops
    dx_loops = np.zeros(shape)
    for i in range(h // 2):
        for j in range(w // 2):
            win = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(c, 4)
            share = np.full((c, 4), 0.25) if pooling == "avg" else np.eye(4)[np.argmax(win, axis=1)]
            dx_loops[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = (share * dout[:, i, j, None]).reshape(c, 2, 2)
    for spatial, to_layout in ((L.CHW, lambda a: a), (L.HWC, lambda a: np.ascontiguousarray(a.transpose(1, 2, 0)))):
        back = (lambda a: a) if spatial == L.CHW else (lambda a: a.transpose(2, 0, 1))
        xl = to_layout(x)
        out = np.full(to_layout(expect).shape, np.nan)
        L.pool_forward_into(pooling, xl, out, spatial)
        np.testing.assert_allclose(back(out), expect, rtol=1e-14, atol=0)
        winner = L.max_pool_winner(xl, out, np.empty(out.shape, np.int8), spatial) if pooling == "max" else None
        dx = np.full(xl.shape, np.nan)
        L.pool_backward_into(pooling, to_layout(dout), dx, winner, to_layout(mask), spatial)
        np.testing.assert_allclose(back(dx), dx_loops * mask, rtol=1e-14, atol=0)
        scratch = to_layout(dout).copy()
        L.pool_backward_into(pooling, scratch, dx, winner, None, spatial, overwrite_dout=True)
        np.testing.assert_allclose(back(dx), dx_loops, rtol=1e-14, atol=0)
        if pooling == "avg":
            np.testing.assert_allclose(back(scratch), dout * 0.25)  # scaled in place, as documented


def test_pooling_on_a_band_of_rows():
    """The channels-last path pools bands of output rows in parallel: pooling output rows
    r0..r1 from input rows 2 r0..2 r1 equals those rows of the whole map's pooling."""
    x = np.random.default_rng(3).standard_normal((9, 7, 3))  # (H, W, C), odd H and W
    whole = L.pool_forward_into("max", x, np.empty((4, 3, 3)), L.HWC)
    band = L.pool_forward_into("max", x[2:6], np.empty((2, 3, 3)), L.HWC)
    np.testing.assert_array_equal(band, whole[1:3])


def test_max_pool_ties_go_to_the_first_tap_in_both_layouts():
    """A window of equal values (a tie) and one whose last two taps tie: the winner is the
    first maximal tap in row-major order, and only it receives the gradient."""
    x = np.array([[[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 2.0, -1.0]]])  # (1, 2, 4): two windows
    out, (shape, winner) = L.max_pool_forward(x)
    np.testing.assert_array_equal(winner, [[[0, 1]]])
    dx = L.max_pool_backward(np.ones((1, 1, 2)), (shape, winner))
    np.testing.assert_array_equal(dx, [[[1, 0, 0, 1], [0, 0, 0, 0]]])
    xl = np.ascontiguousarray(x.transpose(1, 2, 0))
    w_hwc = L.max_pool_winner(xl, L.pool_forward_into("max", xl, np.empty((1, 2, 1)), L.HWC),
                              np.empty((1, 2, 1), np.int8), L.HWC)
    np.testing.assert_array_equal(w_hwc[..., 0], winner[0])


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
        out, cache = L.conv3x3_forward_reference(x, w, b)
        assert out.dtype == dt and L.conv3x3_backward_reference(out, cache).dtype == dt
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
    assert check_kernel(None) == "auto" and check_kernel("reference") == "reference"
    with pytest.raises(NstliteError, match="unknown conv kernel 'fast'"):
        check_kernel("fast")
