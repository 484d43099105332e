"""Winograd's minimal filtering F(4x4, 3x3) on padded channels-last buffers, and its adjoint.

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A     for a 3x3 kernel g and a 6x6 input tile d

Each 6x6 input tile d (stride 4) is transformed to B^T d B, multiplied element-wise with the
transformed kernel U = G g G^T (summed over input channels: 36 GEMMs of (tiles, C_in) @ (C_in,
C_out), split over the workspace's threads by ``Workspace.matmul``) and transformed back by
A^T (.) A into a 4x4 output tile: 36 products per 16 outputs instead of 144. Tile rows are
processed in blocks so that the transformed tiles stay in cache; the block scratch is the
network's shared workspace. The matrices are ``toom_cook(WINO_POINTS)``, scaled by powers of
two (see ``nstlite.fast.toom_cook`` for the choice of points).

The input gradient (``winograd_conv_adjoint``) is the adjoint of every step, in reverse order,
with the same U.

Each of the four one-axis transforms (B^T, A^T and their adjoints A, B) is a few dozen
element-wise operations: on NumPy that many passes over cached blocks (``_bt_steps`` ...), on
CuPy one fused kernel each (``backend.Fused``, CUDA C beside the NumPy steps it must equal):
one launch and one pass over memory instead of 15 to 21.

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


def winograd_adjoint_scratch(nb, w, c_in, c_out):
    """Workspace shapes of ``winograd_conv_adjoint`` for a block of nb tile rows: Z = A dY A^T,
    the row pass A dY, M = U^T Z (then B M B^T), the row pass B M, the block's padded
    input-gradient rows, and the two rows carried to the next block."""
    tw = tiles(w)
    wv = TILE * tw + 2
    return [(ALPHA, ALPHA, nb, tw, c_out), (ALPHA, nb, TILE * tw, c_out), (ALPHA, ALPHA, nb, tw, c_in),
            (ALPHA, ALPHA, nb, tw, c_in), (TILE * nb + 2, wv, c_in), (2, wv, c_in)]


def _input_transform(xp, src, dst, tmp):
    """B^T d B on every tile of a block.

    src : (nb, 6, Wv, C) view: for each of the nb tile rows, its 6 input rows (full width)
    dst : (6, 6, nb, tw, C) transformed tiles, dst[a, b, r, t] = (B^T d B)[a, b] of tile (r, t)
    tmp : (6, nb, Wv, C) scratch for the row pass
    """
    tw = dst.shape[3]
    # rows: tmp[a] = sum_k BT[a, k] src[:, k]   (B^T evaluated with shared terms)
    _bt_pass(xp, [src[:, k] for k in range(ALPHA)], [tmp[k] for k in range(ALPHA)])
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


def winograd_conv(xpad, U, out, h, w, bias=None, relu=False, mask=None, ws=None, tile_rows=None):
    """3x3 convolution by Winograd F(4x4, 3x3) from a padded buffer.

    Parameters
    ----------
    xpad : (Hp, Wp, C_in) padded input buffer with Hp >= 4 ceil(h/4) + 2, Wp >= 4 ceil(w/4) + 2
        (``padded_shape``), zeros outside the h x w map
    U : (36, C_in, C_out) from ``winograd_weights``
    out : (h, w, C_out) destination view (e.g. ``interior(next_buffer, h, w)``)
    bias, relu, mask, ws : as ``shifted_gemm_conv``
    tile_rows : tile rows per block (None: ``ws.block_bytes`` of transformed tiles per block)
    """
    xp = get_array_module(xpad)
    c_in = xpad.shape[2]
    c_out = U.shape[2]
    th, tw = tiles(h), tiles(w)
    wv = TILE * tw + 2  # padded columns the tiles read
    ws = ws or Workspace(xp)
    if tile_rows is None:
        tile_rows = winograd_tile_rows(h, w, c_in, c_out, xpad.itemsize, ws.block_bytes)
    row_stride = xpad.strides[0]
    for r0 in range(0, th, tile_rows):
        nb = min(tile_rows, th - r0)
        V, M, tmp, R, Y = ws.take(xpad.dtype, *winograd_scratch(nb, w, c_in, c_out))
        # (nb, 6, wv, C): tile row r reads padded rows 4r .. 4r+5 (overlapping windows, a view)
        src = xp.lib.stride_tricks.as_strided(
            xpad[TILE * r0:], shape=(nb, ALPHA, wv, c_in),
            strides=(TILE * row_stride, row_stride, xpad.strides[1], xpad.strides[2]))
        # the transforms of different tile rows are independent: ws.parallel splits them
        ws.parallel(lambda t: _input_transform(xp, src[t], V[:, :, t], tmp[:, t]), nb)
        # the 36 GEMMs: (nb*tw, C_in) @ (C_in, C_out) for every (a, b) element of the tile
        ws.matmul(V.reshape(ALPHA * ALPHA, nb * tw, c_in), U, M.reshape(ALPHA * ALPHA, nb * tw, c_out))
        Yk = Y.transpose(1, 3, 0, 2, 4)                           # (4, 4, nb, tw, C_out) view
        y0 = TILE * r0

        def output_transform(t):
            # back to 4x4 tiles: A^T M A, first along the tile's rows, then along its columns
            _at_pass(xp, [M[k][:, t] for k in range(ALPHA)], [R[k][:, t] for k in range(TILE)])
            _at_pass(xp, [R[:, k][:, t] for k in range(ALPHA)], [Yk[:, j][:, t] for j in range(TILE)])
            a = y0 + TILE * t.start                               # output rows of tile rows t
            b = min(y0 + TILE * t.stop, h)
            if b > a:
                dst = out[a:b]
                write_out(xp, Y[t].reshape(-1, TILE * tw, c_out)[:b - a, :w], dst, bias, relu,
                           None if mask is None else mask[a:b])
        ws.parallel(output_transform, nb)
    return out


def _a_pass(xp, y, z):
    """z = A y along one axis, y a list of 4 arrays (only read), z of 6: ``_a_steps``."""
    _A(xp, *y, *z)


def _a_steps(xp, y, z):
    """z = A y along one axis (the adjoint of ``_at_pass``), y a list of 4 arrays (only read),
    z of 6:
        z0 = y0     z1, z2 = (4 y0 + y2) +- (2 y1 + y3 / 2)     z3, z4 = (y0 + 4 y2) +- (2 y1 + 8 y3)     z5 = y3
    2 y1 is shared by both odd parts; 15 operations.
    """
    y0, y1, y2, y3 = y
    z0, z1, z2, z3, z4, z5 = z
    xp.multiply(y1, 2, out=z5)           # z5 <- 2 y1 (scratch until the end)
    xp.multiply(y0, 4, out=z0)
    xp.add(z0, y2, out=z0)               # z0 <- 4 y0 + y2
    xp.multiply(y3, 0.5, out=z2)
    xp.add(z2, z5, out=z2)               # z2 <- 2 y1 + y3 / 2
    xp.add(z0, z2, out=z1)
    xp.subtract(z0, z2, out=z2)
    xp.multiply(y2, 4, out=z0)
    xp.add(z0, y0, out=z0)               # z0 <- y0 + 4 y2
    xp.multiply(y3, 8, out=z4)
    xp.add(z4, z5, out=z4)               # z4 <- 2 y1 + 8 y3
    xp.add(z0, z4, out=z3)
    xp.subtract(z0, z4, out=z4)
    xp.copyto(z0, y0)
    xp.copyto(z5, y3)


_A = Fused("nstlite_winograd_a", "T y0, T y1, T y2, T y3", "T z0, T z1, T z2, T z3, T z4, T z5", """
    T twice = (T)2 * y1, even = (T)4 * y0 + y2, odd = twice + (T)0.5 * y3;
    z1 = even + odd;
    z2 = even - odd;
    even = y0 + (T)4 * y2;
    odd = twice + (T)8 * y3;
    z3 = even + odd;
    z4 = even - odd;
    z0 = y0;
    z5 = y3;
""", lambda xp, *a: _a_steps(xp, a[:4], a[4:]))


def _b_pass(xp, m, v):
    """v = B m along one axis, m a list of 6 arrays (scratch), v of 6: ``_b_steps``."""
    _B(xp, *m, *v)


def _b_steps(xp, m, v):
    """v = B m along one axis (the adjoint of ``_bt_pass``), m a list of 6 arrays (overwritten),
    with s1, d1 = m1 +- m2 and s2, d2 = m3 +- m4:
        v0 = m0                                 v5 = m5
        v1 = m5 - 2 (d1 + d2)                   v3 = d1 / 2 + 8 d2 - 17/4 m5
        v2 = -17/4 m0 - 4 s1 - s2               v4 = m0 + s1 + 4 s2
    21 operations.
    """
    m0, m1, m2, m3, m4, m5 = m
    v0, v1, v2, v3, v4, v5 = v
    xp.add(m1, m2, out=v2)               # v2 <- s1
    xp.subtract(m1, m2, out=m1)          # m1 <- d1
    xp.add(m3, m4, out=v4)               # v4 <- s2
    xp.subtract(m3, m4, out=m3)          # m3 <- d2
    xp.add(m1, m3, out=v1)
    xp.multiply(v1, -2, out=v1)
    xp.add(v1, m5, out=v1)               # v1 = m5 - 2 (d1 + d2)
    xp.multiply(m3, 8, out=v3)
    xp.multiply(m1, 0.5, out=m1)
    xp.add(v3, m1, out=v3)
    xp.multiply(m5, -4.25, out=m1)
    xp.add(v3, m1, out=v3)               # v3 = d1 / 2 + 8 d2 - 17/4 m5
    xp.multiply(v4, 4, out=m2)
    xp.add(m2, v2, out=m2)               # m2 <- s1 + 4 s2
    xp.multiply(v2, -4, out=v2)
    xp.subtract(v2, v4, out=v2)          # v2 <- -4 s1 - s2
    xp.add(m2, m0, out=v4)               # v4 = m0 + s1 + 4 s2
    xp.multiply(m0, -4.25, out=m2)
    xp.add(v2, m2, out=v2)               # v2 = -17/4 m0 - 4 s1 - s2
    xp.copyto(v0, m0)
    xp.copyto(v5, m5)


_B = Fused("nstlite_winograd_b", "T m0, T m1, T m2, T m3, T m4, T m5", "T v0, T v1, T v2, T v3, T v4, T v5", """
    T s1 = m1 + m2, d1 = m1 - m2, s2 = m3 + m4, d2 = m3 - m4;
    v1 = m5 - (T)2 * (d1 + d2);
    v3 = (T)0.5 * d1 + (T)8 * d2 - (T)4.25 * m5;
    v2 = -(T)4.25 * m0 - (T)4 * s1 - s2;
    v4 = m0 + s1 + (T)4 * s2;
    v0 = m0;
    v5 = m5;
""", lambda xp, *a: _b_steps(xp, a[:6], a[6:]))


def _place_tiles(xp, M, S, tw, t):
    """First half of the overlap-add of 6x6 tiles (stride 4) into S, for the tile rows t (a
    slice): S rows 4r .. 4r+3 <- the first four rows of tile row r's tiles, each tile's last two
    columns added onto the next tile's first two. Different tile rows write different rows of S.
    M (6, 6, nb, tw, C) holds the tiles; S (4 nb + 2, >= 4 tw + 2, C)."""
    span, n = TILE * tw, t.stop - t.start
    rows = S[TILE * t.start:TILE * t.stop]
    for j in range(TILE):
        # rows 4r + i, i < 4, column 4t + j: (n, 4, tw, C) views of S and of M[0:4, j]
        rows[:, j:span:TILE].reshape(n, TILE, tw, -1)[...] = M[:TILE, j, t].transpose(1, 0, 2, 3)
    rows[:, span:] = 0
    for j in range(TILE, ALPHA):
        dst = rows[:, j:j + span - TILE + 1:TILE].reshape(n, TILE, tw, -1)
        xp.add(dst, M[:TILE, j, t].transpose(1, 0, 2, 3), out=dst)


def _add_tile_tails(xp, M, S, tw, t):
    """Second half: the last two rows of tile row r's tiles added onto S rows 4r+4, 4r+5 (the
    next tile row's first two, or the block's last two, zeroed beforehand)."""
    span, n = TILE * tw, t.stop - t.start
    for i in range(TILE, ALPHA):
        rows = S[TILE * t.start + i:TILE * (t.stop - 1) + i + 1:TILE]      # (n, Wv, C)
        dst = rows[:, :span].reshape(n, tw, TILE, -1)
        xp.add(dst, M[i, :TILE, t].transpose(1, 2, 0, 3), out=dst)
        for j in range(TILE, ALPHA):
            dst = rows[:, j:j + span - TILE + 1:TILE]
            xp.add(dst, M[i, j, t], out=dst)


def winograd_conv_adjoint(dpad, U, dx, h, w, mask=None, ws=None, tile_rows=None, Ut=None):
    """Input gradient of ``winograd_conv`` with the *same* transformed kernel U: the adjoint
    of every step of the forward algorithm, in reverse order.

        forward:  Y = A^T [ U (.) (B^T d B) ] A           (summed over input channels)
        adjoint:  dd = B [ U^T (.) (A dY A^T) ] B^T        (summed over output channels)

    Each output-gradient tile dY (4x4, non-overlapping) gives a 6x6 input-gradient tile dd;
    neighbouring tiles overlap by two rows/columns, where their contributions are added.
    Sharing U with the forward pass means no second transformed kernel is kept.

    dpad : (Hp, Wp, C_out) padded buffer of the output gradient (zeros outside h x w)
    U : (36, C_in, C_out) from ``winograd_weights`` of the forward kernel
    dx : (h, w, C_in) destination; mask : as ``shifted_gemm_conv``
    Ut : None, or U transposed to (36, C_out, C_in) in C order (``ConvPlan.adjoint_weights``):
        CuPy's matmul copies an operand that is not C-contiguous, so on the GPU the transpose
        is kept once per layer instead of copied in every block
    """
    xp = get_array_module(dpad)
    c_in, c_out = U.shape[1], U.shape[2]
    th, tw = tiles(h), tiles(w)
    wv = TILE * tw + 2
    ws = ws or Workspace(xp)
    if tile_rows is None:
        tile_rows = winograd_tile_rows(h, w, c_in, c_out, dpad.itemsize, ws.block_bytes)
    if Ut is None:
        Ut = U.transpose(0, 2, 1)  # (36, C_out, C_in): a view, the GEMM reads it transposed
    # flat parts sized for the largest block, so the carried rows keep their place in memory
    largest = winograd_adjoint_scratch(min(tile_rows, th), w, c_in, c_out)
    flats = ws.take(dpad.dtype, *[(int(np.prod(sh)),) for sh in largest])
    carry, have_carry = flats[-1].reshape(2, wv, c_in), False
    for r0 in range(0, th, tile_rows):
        nb = min(tile_rows, th - r0)
        shapes = winograd_adjoint_scratch(nb, w, c_in, c_out)[:-1]
        Z, rowsA, M, BM, S = [f[:int(np.prod(sh))].reshape(sh) for f, sh in zip(flats, shapes)]
        # A dY A^T: row k of tile row r is padded row 1 + 4r + k, columns 1 .. 4 tw
        base = dpad[1 + TILE * r0:, 1:1 + TILE * tw]
        rows_of = [base[k:k + TILE * (nb - 1) + 1:TILE] for k in range(TILE)]   # each (nb, 4 tw, C)

        def gradient_transform(t):
            _a_pass(xp, [r[t] for r in rows_of], [rowsA[a][t] for a in range(ALPHA)])
            _a_pass(xp, [rowsA[:, t, j::TILE] for j in range(TILE)], [Z[:, b][:, t] for b in range(ALPHA)])
        ws.parallel(gradient_transform, nb)  # tile rows are independent
        # the 36 GEMMs, now summing over output channels: (nb*tw, C_out) @ (C_out, C_in)
        ws.matmul(Z.reshape(ALPHA * ALPHA, nb * tw, c_out), Ut, M.reshape(ALPHA * ALPHA, nb * tw, c_in))

        def input_gradient_transform(t):
            # B M B^T: rows (M[a] -> BM[i]), then columns (BM[:, b] -> M[:, j])
            _b_pass(xp, [M[a][:, t] for a in range(ALPHA)], [BM[i][:, t] for i in range(ALPHA)])
            _b_pass(xp, [BM[:, b][:, t] for b in range(ALPHA)], [M[:, j][:, t] for j in range(ALPHA)])
        ws.parallel(input_gradient_transform, nb)
        # overlap-add the 6x6 tiles (stride 4) into the block's padded rows 4 r0 .. 4 r0 + 4 nb + 1:
        # the top-left 4x4 of every tile tiles the plane (assign), the last two rows/columns
        # land on the next tile's first two (add). Each half writes disjoint rows per tile row,
        # so both run split over tile rows; the second starts when the first has finished.
        ws.parallel(lambda t: _place_tiles(xp, M, S, tw, t), nb)
        S[TILE * nb:] = 0
        ws.parallel(lambda t: _add_tile_tails(xp, M, S, tw, t), nb)
        if have_carry:
            S[:2] += carry
        # padded rows 4 r0 .. 4 r0 + 4 nb - 1 are now complete; input row y is padded row y + 1
        p0, p1 = TILE * r0, TILE * (r0 + nb)
        y0, y1 = max(p0 - 1, 0), min(p1 - 1, h)

        def write_rows(k):
            ys = slice(y0 + k.start, y0 + k.stop)
            write_out(xp, S[ys.start + 1 - p0:ys.stop + 1 - p0, 1:w + 1], dx[ys], None, False,
                       None if mask is None else mask[ys])
        if y1 > y0:
            ws.parallel(write_rows, y1 - y0)
        carry[...] = S[TILE * nb:]
        have_carry = True
    # the last input row may sit in the final carry (when h is a multiple of 4)
    if th * TILE - 1 < h:
        y = th * TILE - 1
        dx[y] = carry[0, 1:w + 1]
        write_out(xp, dx[y:y + 1], dx[y:y + 1], None, False, None if mask is None else mask[y:y + 1])
    return dx
