"""The fast conv kernels of nstlite.fast (Winograd, shifted GEMM, im2col) against the
reference convolution of nstlite.layers.

Tolerances: ``fast_tolerances.TOL`` (normwise relative error). The choice of Winograd points is
checked on smooth data below (``test_winograd_float32_input_gradient_error``).
"""
import numpy as np
import pytest

from fast_tolerances import TOL, rel, rel_l2

from nstlite import layers as L
from nstlite.fast.gemm import (im2col_conv, im2col_conv_adjoint, im2col_weights, shifted_gemm_conv,
                              shifted_gemm_conv_adjoint)
from nstlite.fast.layout import interior, padded_shape, to_padded
from nstlite.fast.plan import CONV_KERNELS, ConvPlan
from nstlite.fast.toom_cook import WINO_POINTS, toom_cook
from nstlite.fast.winograd import (WINO_AT, WINO_BT, WINO_G, WINO_SCALE_AT, WINO_SCALE_BT, winograd_conv,
                                  winograd_conv_adjoint, winograd_weights)
from nstlite.fast.workspace import Workspace, local_blas_threads

FAST_KERNELS = ["shifted_gemm", "winograd", "auto"]
SHAPES = [(3, 7, 9, 4), (5, 13, 6, 7), (16, 11, 17, 16), (8, 1, 1, 3), (4, 5, 2, 3), (20, 4, 8, 17)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kernel", FAST_KERNELS)
@pytest.mark.parametrize("c_in,h,w,c_out", SHAPES)
def test_kernel_matches_reference(kernel, dtype, c_in, h, w, c_out):
    rng = np.random.default_rng(c_in * 100 + h * 10 + w)
    x = rng.standard_normal((c_in, h, w)).astype(dtype)
    wt = rng.standard_normal((c_out, c_in, 3, 3)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    dout = rng.standard_normal((c_out, h, w)).astype(dtype)
    ref_out, ref_cache = L.conv3x3_forward_reference(x, wt, b)
    ref_dx = L.conv3x3_backward_reference(dout, ref_cache)
    fwd, bwd = CONV_KERNELS[kernel]
    out, cache = fwd(x, wt, b)
    dx = bwd(dout, cache)
    assert out.shape == ref_out.shape and out.dtype == np.dtype(dtype)
    assert dx.shape == ref_dx.shape and dx.dtype == np.dtype(dtype)
    assert rel(out, ref_out) < TOL[dtype, kernel]
    assert rel(dx, ref_dx) < TOL[dtype, kernel]


@pytest.mark.parametrize("kernel", ["shifted_gemm", "winograd"])
def test_block_sizes_do_not_change_result(kernel):
    """Blocking is an implementation detail: 1 row/tile row per block == the default."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 19, 23))
    d = rng.standard_normal((5, 19, 23))
    wt = rng.standard_normal((5, 6, 3, 3))
    wk = ConvPlan(wt, np.zeros(5), kernel).weights(kernel)
    if kernel == "winograd":
        run, adjoint, extra = winograd_conv, winograd_conv_adjoint, {"tile_rows": 1}
    else:
        run, adjoint, extra = shifted_gemm_conv, shifted_gemm_conv_adjoint, {"rows_per_block": 1}
    a, b = np.empty((19, 23, 5)), np.empty((19, 23, 5))
    run(to_padded(x), wk, a, 19, 23)
    run(to_padded(x), wk, b, 19, 23, **extra)
    assert rel(a, b) < 1e-13
    da, db = np.empty((19, 23, 6)), np.empty((19, 23, 6))
    adjoint(to_padded(d), wk, da, 19, 23)
    adjoint(to_padded(d), wk, db, 19, 23, **extra)
    assert rel(da, db) < 1e-13
    assert rel(da, L.conv3x3_backward_reference(d, (x, wt)).transpose(1, 2, 0)) < 1e-12


def test_epilogue_relu_and_mask():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 9, 10))
    wt = rng.standard_normal((16, 16, 3, 3))
    bias = rng.standard_normal(16)
    mask = rng.standard_normal((9, 10, 16))
    ref, _ = L.conv3x3_forward_reference(x, wt, bias)
    ref = ref.transpose(1, 2, 0)
    for method in ("winograd", "shifted_gemm"):
        plan = ConvPlan(wt, bias, method)
        out = np.empty((9, 10, 16))
        plan.forward(to_padded(x), out, 9, 10, Workspace(np), relu=True)
        assert rel(out, np.maximum(ref, 0)) < 1e-12
        # the backward epilogue: result * (mask > 0)
        dx = np.empty((9, 10, 16))
        plan.backward(to_padded(x), dx, 9, 10, Workspace(np), mask=mask)
        ref_dx = L.conv3x3_backward_reference(x, (x, wt)).transpose(1, 2, 0) * (mask > 0)
        assert rel(dx, ref_dx) < 1e-12


def test_padded_buffer_layout():
    assert padded_shape(5, 8, 3) == (10, 10, 3)
    x = np.arange(2 * 5 * 6, dtype=float).reshape(2, 5, 6) + 1
    buf = to_padded(x)
    assert buf.shape == padded_shape(5, 6, 2)
    assert np.array_equal(interior(buf, 5, 6), x.transpose(1, 2, 0))
    assert buf.sum() == x.sum()  # zeros everywhere else


def test_winograd_matrices_reproduce_direct_1d():
    """F(4, 3) in one dimension: A^T [(G g) * (B^T d)] equals the 4 outputs of a 3-tap correlation."""
    rng = np.random.default_rng(5)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    y = WINO_AT @ ((WINO_G @ g) * (WINO_BT @ d))
    direct = np.array([d[i:i + 3] @ g for i in range(4)])
    assert np.allclose(y, direct, rtol=0, atol=1e-13)


def test_winograd_matrices_derive_from_the_points():
    """The hard-coded WINO_* are toom_cook(WINO_POINTS) under the documented power-of-two
    scalings: A^T's columns times WINO_SCALE_AT, B^T's rows times WINO_SCALE_BT, G's rows
    divided by both."""
    from fractions import Fraction
    AT, G, BT = toom_cook(WINO_POINTS)
    a, b = WINO_SCALE_AT, WINO_SCALE_BT
    assert all(Fraction(x).denominator & (Fraction(x).denominator - 1) == 0 for x in a + b)  # powers of two
    assert all(float(AT[k][i] * a[i]) == WINO_AT[k, i] for k in range(4) for i in range(6))
    assert all(float(BT[i][j] * b[i]) == WINO_BT[i, j] for i in range(6) for j in range(6))
    assert all(float(G[i][j] / (a[i] * b[i])) == WINO_G[i, j] for i in range(6) for j in range(3))
    # the same derivation gives Lavin & Gray's published matrices for their points, unscaled
    AT2, G2, BT2 = toom_cook((0, 1, -1, 2, -2))
    assert [[float(v) for v in r] for r in BT2] == [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                                                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    assert [[float(v) for v in r] for r in AT2] == [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
                                                    [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    assert G2[1] == [Fraction(-1, 6)] * 3 and G2[3] == [Fraction(1, 24), Fraction(1, 12), Fraction(1, 6)]


def test_winograd_float32_input_gradient_error():
    """The points set the float32 error. On smooth non-negative maps (like VGG's) and a
    half-masked gradient, 64 channels: input gradient relative L2 error ~1.0e-6 with
    0, +-1/2, +-2 (1.6e-6 with Lavin & Gray's 0, +-1, +-2), forward ~5e-7."""
    rng = np.random.default_rng(0)
    c = 64
    x = np.kron(rng.uniform(0, 1, (c, 8, 8)), np.ones((1, 4, 4))) + 0.1 * rng.uniform(0, 1, (c, 32, 32))
    wt = rng.standard_normal((c, c, 3, 3)) / 24
    dout = rng.standard_normal((c, 32, 32)) * (rng.uniform(size=(c, 32, 32)) > 0.5)
    ref, cache = L.conv3x3_forward_reference(x, wt, np.zeros(c))
    ref_dx = L.conv3x3_backward_reference(dout, cache)
    fwd, bwd = CONV_KERNELS["winograd"]
    out, c32 = fwd(x.astype(np.float32), wt.astype(np.float32), np.zeros(c, np.float32))
    dx = bwd(dout.astype(np.float32), c32)

    def l2(a, b):
        return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)
    assert l2(dx, ref_dx) < 1.3e-6
    assert l2(out, ref) < 1e-6


@pytest.mark.parametrize("h,w", [(16, 12), (13, 9), (4, 4), (3, 5), (1, 1)])
def test_winograd_adjoint_blocks_and_edges(h, w):
    """The input gradient, the forward on the flipped maps, in blocks of tile rows and at sizes
    that are not multiples of 4 (the flipped grid's origin; shifting it fails this test)."""
    rng = np.random.default_rng(h * 31 + w)
    wt = rng.standard_normal((7, 5, 3, 3))
    dout = rng.standard_normal((7, h, w))
    ref = L.conv3x3_backward_reference(dout, (np.zeros((5, h, w)), wt)).transpose(1, 2, 0)
    U = winograd_weights(wt)
    mask = rng.standard_normal((h, w, 5))
    for tile_rows in (1, 2, None):
        dx = np.full((h, w, 5), np.nan)
        winograd_conv_adjoint(to_padded(dout), U, dx, h, w, tile_rows=tile_rows)
        assert rel(dx, ref) < 1e-12
        winograd_conv_adjoint(to_padded(dout), U, dx, h, w, mask=mask, tile_rows=tile_rows)
        assert rel(dx, ref * (mask > 0)) < 1e-12


def test_backward_shares_the_forward_weights():
    """One weight form per kernel (memory): the adjoints read the forward's arrays, and the
    'auto' choice takes Winograd only for wide layers on maps of at least 16 tiles."""
    rng = np.random.default_rng(8)
    plan = ConvPlan(rng.standard_normal((32, 16, 3, 3)), np.zeros(32), "auto")
    assert plan.method_for(16, 16) == "winograd" and plan.method_for(12, 16) == "shifted_gemm"
    small = ConvPlan(rng.standard_normal((32, 3, 3, 3)), np.zeros(32), "auto")
    assert small.method_for(512, 512) == "shifted_gemm"
    for method in ("winograd", "shifted_gemm"):
        p = ConvPlan(rng.standard_normal((6, 5, 3, 3)), np.zeros(6), method)
        d = rng.standard_normal((6, 9, 10))
        dx = np.empty((9, 10, 5))
        p.backward(to_padded(d), dx, 9, 10, Workspace(np))
        p.forward(to_padded(rng.standard_normal((5, 9, 10))), np.empty((9, 10, 6)), 9, 10, Workspace(np))
        assert p.forms == (method,)
        assert p.weights(method).shape == p.weights_shape(method)  # what memory_bytes counts
    assert small.weights("im2col").shape == small.weights_shape("im2col")


@pytest.mark.parametrize("c_in,h,w", [(3, 9, 7), (1, 1, 1), (4, 8, 13), (3, 5, 2)])
@pytest.mark.parametrize("rows", [1, 3, None])
def test_im2col_image_conv_and_adjoint(c_in, h, w, rows):
    """conv1_1's kernel: forward (+ bias, optional ReLU) and the image gradient equal the
    reference for any block of rows, and 'fast' picks it for an image."""
    rng = np.random.default_rng(c_in * 7 + h + w)
    x, wt, b = rng.standard_normal((c_in, h, w)), rng.standard_normal((5, c_in, 3, 3)), rng.standard_normal(5)
    dout = rng.standard_normal((5, h, w))
    ref, cache = L.conv3x3_forward_reference(x, wt, b)
    wk = im2col_weights(wt, b)
    out = np.full((h, w, 5), np.nan)
    im2col_conv(x, wk, out, relu=False, rows_per_block=rows)
    assert rel(out, ref.transpose(1, 2, 0)) < 1e-12
    im2col_conv(x, wk, out, relu=True, rows_per_block=rows)
    assert rel(out, np.maximum(ref, 0).transpose(1, 2, 0)) < 1e-12
    dx = im2col_conv_adjoint(to_padded(dout), wk, h, w, rows_per_block=rows)
    assert dx.shape == (c_in, h, w) and rel(dx, L.conv3x3_backward_reference(dout, cache)) < 1e-12
    assert ConvPlan(wt, b, "auto").reads_image() and not ConvPlan(wt, b, "shifted_gemm").reads_image()


@pytest.mark.parametrize("threads", [2, 3])
def test_winograd_threads_give_the_same_result(threads):
    """Splitting the tile transforms over threads changes nothing (the same operations on
    disjoint tile rows): bitwise equal to one thread, forward and input gradient."""
    rng = np.random.default_rng(11)
    x, d = to_padded(rng.standard_normal((6, 37, 21))), to_padded(rng.standard_normal((5, 37, 21)))
    wt, b = rng.standard_normal((5, 6, 3, 3)), rng.standard_normal(5)
    mask = rng.standard_normal((37, 21, 6)) > 0
    U = winograd_weights(wt)
    res = {}
    for k in (1, threads):
        ws = Workspace(np, threads=k)
        out, dx = np.empty((37, 21, 5)), np.empty((37, 21, 6))
        winograd_conv(x, U, out, 37, 21, bias=b, relu=True, ws=ws)
        winograd_conv_adjoint(d, U, dx, 37, 21, mask=mask, ws=ws)
        res[k] = out, dx
    assert np.array_equal(res[1][0], res[threads][0]) and np.array_equal(res[1][1], res[threads][1])
    ref, _ = L.conv3x3_forward_reference(interior(x, 37, 21).transpose(2, 0, 1), wt, b)
    assert rel(res[threads][0], np.maximum(ref, 0).transpose(1, 2, 0)) < 1e-12


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("rows_per_block", [None, 4])
def test_im2col_threads_give_the_same_result(threads, rows_per_block):
    """conv1_1's im2col kernel split over rows (forward) and over GEMM rows and channels
    (input gradient) equals the one-thread run, and the reference."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 23, 18)).astype(np.float32)
    wt, b = rng.standard_normal((8, 3, 3, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    wk = im2col_weights(wt, b)
    g = to_padded(rng.standard_normal((8, 23, 18)).astype(np.float32))
    res = {}
    for k in (1, threads):
        ws = Workspace(np, threads=k)
        out = np.empty((23, 18, 8), np.float32)
        im2col_conv(x, wk, out, ws=ws, relu=False, rows_per_block=rows_per_block)
        res[k] = out, im2col_conv_adjoint(g, wk, 23, 18, ws=ws, rows_per_block=rows_per_block)
    # The threads sum the same products in another grouping (float32 GEMM blocks), so the
    # results differ by rounding: a relative L2 error of a few float32 epsilons (~1e-7; 1e-6
    # allowed). Elementwise it can be larger where terms cancel (1.9e-6 on a value of 0.149).
    assert rel_l2(res[threads][0], res[1][0]) < 1e-6
    assert rel_l2(res[threads][1], res[1][1]) < 1e-6
    ref, cache = L.conv3x3_forward_reference(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64))
    assert rel(res[threads][0], ref.transpose(1, 2, 0)) < 1e-5
    dref = L.conv3x3_backward_reference(interior(g, 23, 18).transpose(2, 0, 1).astype(np.float64), cache)
    assert rel(res[threads][1], dref) < 1e-5


# ----------------------------------------------------------------------------- GEMM split
def test_workspace_matmul_splits_the_stack_and_restores_blas_threads():
    """Workspace.matmul equals one matmul call, and leaves the calling thread's OpenBLAS thread
    count as it found it (where OpenBLAS has per-thread counts; else it is one matmul call)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((36, 50, 24)).astype(np.float32)
    b = rng.standard_normal((36, 24, 16)).astype(np.float32)
    expect = np.matmul(a, b)
    for threads in (1, 2, 3):
        ws = Workspace(np, threads=threads)
        out = np.empty_like(expect)
        assert ws.matmul(a, b, out) is out
        np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-5)
    local = local_blas_threads()
    if local is not None:
        before = local(2)  # set a known count for this thread, remember what it was
        Workspace(np, threads=2).matmul(a, b, np.empty_like(expect))
        assert local(before) == 2  # matmul put it back
