"""Winograd's minimal filtering F(4x4, 3x3) on padded channels-last buffers, both passes.

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A     for a 3x3 kernel g and a 6x6 input tile d

Each 6x6 input tile d (stride 4) is transformed to B^T d B, multiplied element-wise with the
transformed kernel U = G g G^T (summed over input channels: 36 GEMMs of (tiles, C_in) @ (C_in,
C_out), split over the workspace's threads by ``Workspace.matmul``) and transformed back by
A^T (.) A into a 4x4 output tile: 36 products per 16 outputs instead of 144. Tile rows are
processed in blocks so that the transformed tiles stay in cache; the block scratch is the
network's shared workspace. The matrices are ``toom_cook(WINO_POINTS)``, scaled by powers of
two (see ``nstlite.fast.toom_cook`` for the choice of points).

The input gradient (``winograd_conv_adjoint``) is the same algorithm on the flipped output
gradient, with the same U read with its channels swapped: correlating with the kernel turned by
180 degrees is correlating the flipped map with the kernel itself.

Each of the two one-axis transforms (B^T, A^T) is a few dozen element-wise operations: on NumPy
that many passes over cached blocks (``_bt_steps``, ``_at_steps``), on CuPy one fused kernel
each (``backend.Fused``, CUDA C beside the NumPy steps it must equal): one launch and one pass
over memory instead of 15 or 20.

References
----------
A. Lavin, S. Gray. *Fast Algorithms for Convolutional Neural Networks*. CVPR 2016 (arXiv:1509.09308).
"""
import numpy as np

from ..backend import Fused, get_array_module
from .layout import TILE, tiles, write_out
from .workspace import BLOCK_BYTES, Workspace, rows_per_block

# Diagonal scaling of toom_cook(WINO_POINTS) (powers of two: exact, and no change to the
# rounding): A^T's columns for +-1/2 times 4 and B^T's rows for +-2 times 4, G's rows divided
# by both, so that the passes below need the fewest multiplications.
WINO_SCALE_AT = (1, 4, 4, 1, 1, 1)
WINO_SCALE_BT = (1, 1, 1, 4, 4, 1)
WINO_BT = np.array([[1, 0, -17 / 4, 0, 1, 0],
                    [0, -2, -4, 1 / 2, 1, 0],
                    [0, 2, -4, -1 / 2, 1, 0],
                    [0, -2, -1, 8, 4, 0],
                    [0, 2, -1, -8, 4, 0],
                    [0, 1, 0, -17 / 4, 0, 1]], dtype=np.float64)
WINO_G = np.array([[1, 0, 0],
                   [-2 / 15, -1 / 15, -1 / 30],
                   [-2 / 15, 1 / 15, -1 / 30],
                   [1 / 120, 1 / 60, 1 / 30],
                   [1 / 120, -1 / 60, 1 / 30],
                   [0, 0, 1]], dtype=np.float64)
WINO_AT = np.array([[1, 4, 4, 1, 1, 0],
                    [0, 2, -2, 2, -2, 0],
                    [0, 1, 1, 4, 4, 0],
                    [0, 1 / 2, -1 / 2, 8, -8, 1]], dtype=np.float64)
ALPHA = 6   # input tile side m + r - 1 (m = TILE = 4, r = 3)


def winograd_weights(w, dtype=None):
    """U = G g G^T for every (out, in) kernel: (C_out, C_in, 3, 3) -> (36, C_in, C_out).

    Computed in float64 (once per network), a block of output channels at a time so the
    float64 temporaries stay small, and stored in ``dtype`` (default: w's).
    """
    xp = get_array_module(w)
    dtype = w.dtype if dtype is None else dtype
    c_out, c_in = w.shape[:2]
    G = xp.asarray(WINO_G)
    U = xp.empty((ALPHA, ALPHA, c_in, c_out), dtype=dtype)
    step = 64
    for o0 in range(0, c_out, step):
        g = w[o0:o0 + step].astype(xp.float64)                       # (o, C_in, 3, 3)
        u = xp.matmul(xp.matmul(G, g), G.T)                           # (o, C_in, 6, 6)
        U[:, :, :, o0:o0 + step] = u.transpose(2, 3, 1, 0)
    return U.reshape(ALPHA * ALPHA, c_in, c_out)


def winograd_tile_rows(h, w, c_in, c_out, itemsize, block_bytes=BLOCK_BYTES):
    """Tile rows per block of ``winograd_conv`` and its adjoint: ``block_bytes`` of transformed
    tiles (on the CPU ~256 tiles: enough rows for efficient GEMMs, small enough to stay in cache;
    on a GPU usually the whole map, ``workspace.block_bytes_for``)."""
    return rows_per_block(tiles(h), ALPHA * ALPHA * tiles(w) * (c_in + c_out) * itemsize, block_bytes)


def winograd_scratch(nb, w, c_in, c_out):
    """Workspace shapes of ``winograd_conv`` for a block of nb tile rows of a map w wide: the
    transformed input tiles V, their products M, the row pass of B^T, the row pass of A^T and
    the block's output tiles."""
    tw = tiles(w)
    wv = TILE * tw + 2
    return [(ALPHA, ALPHA, nb, tw, c_in), (ALPHA, ALPHA, nb, tw, c_out), (ALPHA, nb, wv, c_in),
            (TILE, ALPHA, nb, tw, c_out), (nb, TILE, tw, TILE, c_out)]


def _input_transform(xp, src, dst, tmp):
    """B^T d B on every tile of a block.

    src : 6 (nb, Wv, C) views: src[k][r] is input row k of tile row r (full width)
    dst : (6, 6, nb, tw, C) transformed tiles, dst[a, b, r, t] = (B^T d B)[a, b] of tile (r, t)
    tmp : (6, nb, Wv, C) scratch for the row pass
    """
    tw = dst.shape[3]
    # rows: tmp[a] = sum_k BT[a, k] src[k]   (B^T evaluated with shared terms)
    _bt_pass(xp, src, [tmp[k] for k in range(ALPHA)])
    # columns: tile t takes columns 4t .. 4t+5 of the padded width
    cols = [tmp[:, :, k:k + TILE * (tw - 1) + 1:TILE] for k in range(ALPHA)]  # each (6, nb, tw, C)
    _bt_pass(xp, cols, [dst[:, k] for k in range(ALPHA)])


def _bt_pass(xp, d, v):
    """v = B^T d along one axis, d and v lists of 6 arrays (d is only read): ``_bt_steps``."""
    _BT(xp, *d, *v)


def _bt_steps(xp, d, v):
    """v = B^T d along one axis, d and v lists of 6 arrays (d is only read). B^T of F(4, 3)
    at 0, +-1/2, +-2, infinity (rows for +-2 scaled by 4):
        v0 = d0 - 17/4 d2 + d4                   v5 = d1 - 17/4 d3 + d5
        v1, v2 = (d4 - 4 d2) +- (d3 - 4 d1) / 2       (points +-1/2)
        v3, v4 = (4 d4 - d2) +- 2 (4 d3 - d1)         (points +-2)
    Each +- pair shares its even and odd parts; every step in place into the outputs (the
    even part waits in v0 or v5, computed last), no temporaries: 20 operations."""
    d0, d1, d2, d3, d4, d5 = d
    v0, v1, v2, v3, v4, v5 = v
    xp.multiply(d2, -4, out=v0)
    xp.add(v0, d4, out=v0)               # v0 <- d4 - 4 d2
    xp.multiply(d1, -4, out=v2)
    xp.add(v2, d3, out=v2)
    xp.multiply(v2, 0.5, out=v2)         # v2 <- (d3 - 4 d1) / 2
    xp.add(v0, v2, out=v1)
    xp.subtract(v0, v2, out=v2)
    xp.multiply(d4, 4, out=v0)
    xp.subtract(v0, d2, out=v0)          # v0 <- 4 d4 - d2
    xp.multiply(d3, 4, out=v4)
    xp.subtract(v4, d1, out=v4)
    xp.multiply(v4, 2, out=v4)           # v4 <- 2 (4 d3 - d1)
    xp.add(v0, v4, out=v3)
    xp.subtract(v0, v4, out=v4)
    xp.multiply(d2, -4.25, out=v0)
    xp.add(v0, d0, out=v0)
    xp.add(v0, d4, out=v0)
    xp.multiply(d3, -4.25, out=v5)
    xp.add(v5, d1, out=v5)
    xp.add(v5, d5, out=v5)


_BT = Fused("nstlite_winograd_bt", "T d0, T d1, T d2, T d3, T d4, T d5", "T v0, T v1, T v2, T v3, T v4, T v5", """
    T even = d4 - (T)4 * d2, odd = (d3 - (T)4 * d1) * (T)0.5;
    v1 = even + odd;
    v2 = even - odd;
    even = (T)4 * d4 - d2;
    odd = ((T)4 * d3 - d1) * (T)2;
    v3 = even + odd;
    v4 = even - odd;
    v0 = d0 - (T)4.25 * d2 + d4;
    v5 = d1 - (T)4.25 * d3 + d5;
""", lambda xp, *a: _bt_steps(xp, a[:6], a[6:]))


def _at_pass(xp, m, y):
    """y = A^T m along one axis, m a list of 6 arrays (scratch), y a list of 4: ``_at_steps``."""
    _AT(xp, *m, *y)


def _at_steps(xp, m, y):
    """y = A^T m along one axis, m a list of 6 arrays (overwritten), y a list of 4. A^T of
    F(4, 3) at 0, +-1/2, +-2, infinity (columns for +-1/2 scaled by 4), with s1, d1 = m1 +- m2
    (points +-1/2) and s2, d2 = m3 +- m4 (points +-2):
        y0 = m0 + 4 s1 + s2        y2 = s1 + 4 s2
        y1 = 2 (d1 + d2)           y3 = d1 / 2 + 8 d2 + m5
    15 operations.
    """
    m0, m1, m2, m3, m4, m5 = m
    y0, y1, y2, y3 = y
    xp.add(m1, m2, out=y0)               # y0 <- s1
    xp.subtract(m1, m2, out=m1)          # m1 <- d1
    xp.add(m3, m4, out=m2)               # m2 <- s2
    xp.subtract(m3, m4, out=m3)          # m3 <- d2
    xp.multiply(m2, 4, out=y2)
    xp.add(y2, y0, out=y2)               # y2 = s1 + 4 s2
    xp.multiply(y0, 4, out=y0)
    xp.add(y0, m2, out=y0)
    xp.add(y0, m0, out=y0)               # y0 = m0 + 4 s1 + s2
    xp.add(m1, m3, out=y1)
    xp.multiply(y1, 2, out=y1)           # y1 = 2 (d1 + d2)
    xp.multiply(m3, 8, out=y3)
    xp.multiply(m1, 0.5, out=m1)
    xp.add(y3, m1, out=y3)
    xp.add(y3, m5, out=y3)               # y3 = d1 / 2 + 8 d2 + m5


_AT = Fused("nstlite_winograd_at", "T m0, T m1, T m2, T m3, T m4, T m5", "T y0, T y1, T y2, T y3", """
    T s1 = m1 + m2, d1 = m1 - m2, s2 = m3 + m4, d2 = m3 - m4;
    y0 = m0 + (T)4 * s1 + s2;
    y1 = (T)2 * (d1 + d2);
    y2 = s1 + (T)4 * s2;
    y3 = (T)0.5 * d1 + (T)8 * d2 + m5;
""", lambda xp, *a: _at_steps(xp, a[:6], a[6:]))


def winograd_conv(xpad, U, out, h, w, bias=None, relu=False, mask=None, ws=None, tile_rows=None,
                  origin=(0, 0)):
    """3x3 convolution by Winograd F(4x4, 3x3) from a padded buffer.

    Parameters
    ----------
    xpad : (Hp, Wp, C_in) padded input buffer with Hp >= 4 ceil(h/4) + 2, Wp >= 4 ceil(w/4) + 2
        (``padded_shape``), zeros outside the h x w map
    U : (36, C_in, C_out) from ``winograd_weights``
    out : (h, w, C_out) destination view (e.g. ``interior(next_buffer, h, w)``)
    bias, relu, mask, ws : as ``shifted_gemm_conv``
    tile_rows : tile rows per block (None: ``ws.block_bytes`` of transformed tiles per block)
    origin : (row, column) of the tile grid's output where ``out`` starts, each below 4 (the
        adjoint's flipped maps, ``winograd_conv_adjoint``); the grid covers 4 ceil(h/4) rows
    """
    xp = get_array_module(xpad)
    c_in = xpad.shape[2]
    c_out = U.shape[2]
    th, tw = tiles(h), tiles(w)
    wv = TILE * tw + 2  # padded columns the tiles read
    ws = ws or Workspace(xp)
    if tile_rows is None:
        tile_rows = winograd_tile_rows(h, w, c_in, c_out, xpad.itemsize, ws.block_bytes)
    oy, ox = origin
    for r0 in range(0, th, tile_rows):
        nb = min(tile_rows, th - r0)
        V, M, tmp, R, Y = ws.take(xpad.dtype, *winograd_scratch(nb, w, c_in, c_out))
        # tile row r reads padded rows 4r .. 4r+5: row k of every tile row of the block is one
        # strided view (nb, wv, C), so the overlapping windows are views, whatever xpad's strides
        src = [xpad[TILE * r0 + k:TILE * (r0 + nb - 1) + k + 1:TILE, :wv] for k in range(ALPHA)]
        # the transforms of different tile rows are independent: ws.parallel splits them
        ws.parallel(lambda t: _input_transform(xp, [rows[t] for rows in src], V[:, :, t], tmp[:, t]), nb)
        # the 36 GEMMs: (nb*tw, C_in) @ (C_in, C_out) for every (a, b) element of the tile
        ws.matmul(V.reshape(ALPHA * ALPHA, nb * tw, c_in), U, M.reshape(ALPHA * ALPHA, nb * tw, c_out))
        Yk = Y.transpose(1, 3, 0, 2, 4)                           # (4, 4, nb, tw, C_out) view
        y0 = TILE * r0

        def output_transform(t):
            # back to 4x4 tiles: A^T M A, first along the tile's rows, then along its columns
            _at_pass(xp, [M[k][:, t] for k in range(ALPHA)], [R[k][:, t] for k in range(TILE)])
            _at_pass(xp, [R[:, k][:, t] for k in range(ALPHA)], [Yk[:, j][:, t] for j in range(TILE)])
            g0 = y0 + TILE * t.start                              # grid rows of tile rows t
            a, b = max(g0, oy), min(y0 + TILE * t.stop, oy + h)   # ... that out holds
            if b > a:
                write_out(xp, Y[t].reshape(-1, TILE * tw, c_out)[a - g0:b - g0, ox:ox + w], out[a - oy:b - oy],
                          bias, relu, None if mask is None else mask[a - oy:b - oy])
        ws.parallel(output_transform, nb)
    return out


def winograd_conv_adjoint(dpad, U, dx, h, w, mask=None, ws=None, tile_rows=None, Ut=None):
    """Input gradient of ``winograd_conv``, by ``winograd_conv`` itself on the flipped maps.

    The input gradient of a 3x3 correlation (padding 1) is the correlation of the output
    gradient with the kernel turned by 180 degrees, summed over output channels:
        dx_c(u) = sum_o sum_(i,j) g_oc(i, j) dY_o(u + 1 - (i, j))
    and correlating with the turned kernel is correlating the flipped map with the kernel
    itself, then flipping back. So the input gradient is ``winograd_conv`` on the reversed
    views of the padded output gradient and of dx, with the *same* transformed kernel U read
    with its channels swapped (36, C_out, C_in): no second transformed kernel, no overlap-add of
    tiles, and the forward's passes and blocking.

    The flipped buffer's tile grid ends where the padded buffer's begins: the map's gradient is
    its output rows 4 ceil(h/4) - h .. (and columns likewise), hence ``origin``.

    dpad : (Hp, Wp, C_out) padded buffer of the output gradient (zeros outside h x w)
    U : (36, C_in, C_out) from ``winograd_weights`` of the forward kernel
    dx : (h, w, C_in) destination; mask : as ``shifted_gemm_conv``
    Ut : None, or U transposed to (36, C_out, C_in) in C order (``ConvPlan.adjoint_weights``):
        CuPy's matmul copies an operand that is not C-contiguous, so on the GPU the transpose
        is kept once per layer instead of copied in every block
    """
    th, tw = tiles(h), tiles(w)
    if Ut is None:
        Ut = U.transpose(0, 2, 1)  # (36, C_out, C_in): a view, the GEMM reads it transposed
    flipped = dpad[:TILE * th + 2, :TILE * tw + 2][::-1, ::-1]
    return winograd_conv(flipped, Ut, dx[::-1, ::-1], h, w, mask=None if mask is None else mask[::-1, ::-1],
                         ws=ws, tile_rows=tile_rows, origin=(TILE * th - h, TILE * tw - w))
