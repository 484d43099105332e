"""Fast 3x3 convolutions on channels-last, zero-padded buffers: the kernels behind VGG19's
forward and input-gradient passes.

Layout
------
A map of C channels and size H x W lives in a *padded buffer* of shape (Hp, Wp, C),
channels last, with the map in ``buf[1:H+1, 1:W+1]`` and zeros everywhere else. Hp and Wp are
rounded up so that a 4x4 output tiling fits (``padded_shape``): every kernel reads its input
straight from such a buffer (no padding copy, no im2col) and writes its output straight into
the interior of the next layer's buffer.

Kernels
-------
``shifted_gemm_conv``
    The definition as three GEMMs over shifted views: with the buffer flattened to
    (Hp*Wp, C), the input under kernel row i is the contiguous slice starting at row
    ``i*Wp``; the three column taps j are gathered side by side into one (M, 3C) operand so
    each GEMM has K = 3 C. Exact up to float rounding; the kernel of small maps (below
    ``WINOGRAD_MIN_TILES`` tiles) and the general fallback.
``im2col_conv``
    conv1_1 (C = 3): columns of the 27 taps plus a row of ones (the bias), one GEMM per
    block of rows.
``winograd_conv``
    Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray 2016): each 6x6 input tile d is
    transformed to B^T d B, multiplied element-wise (summed over input channels: 36 GEMMs of
    (tiles, C_in) @ (C_in, C_out), split over the workspace's threads by ``Workspace.matmul``)
    with the transformed kernel U = G g G^T, and transformed back by A^T (.) A into a 4x4
    output tile. 36 products per 16
    outputs instead of 144: a quarter of the multiplications. Tile rows are processed in
    blocks so that the transformed tiles stay in cache; the block work space is shared by all
    layers. Interpolation points 0, +-1/2, +-2, infinity (Lavin & Gray use 0, +-1, +-2,
    infinity): in float32 this about halves the input gradient's error (see "Winograd
    accuracy" below).

The input gradient of a 3x3, stride-1, pad-1 convolution is the same convolution of the
output gradient with the kernel flipped in both spatial axes and its in/out channels swapped
(``flip_kernel``). Each kernel computes it as the adjoint of its own forward algorithm
(``shifted_gemm_conv_adjoint``, ``winograd_conv_adjoint``), reading the forward's weights
(transposed views): one weight copy per kernel, never a flipped second one.

Every array operation goes through ``xp`` (NumPy or CuPy): the same lines run on both.

Winograd accuracy
-----------------
F(4, 3) is a Toom-Cook algorithm: it evaluates the 6-tap input and the 3-tap kernel at five
points and infinity, multiplies, and interpolates. Barabasz et al. (2018) show that its
floating-point error depends on the points: the transforms' coefficients grow with powers of
the points, and on real data most of the error is the rounding of the 36 channel sums, which
the output transform amplifies. Diagonal scalings (row a of B^T and G, column a of A^T, with
product 1) leave the algorithm unchanged and, by powers of two, its rounding too. Measured on
VGG19's real layer inputs and gradients (``benchmarks/winograd_error.py``, 96x96), the
points 0, +-1/2, +-2 (a set closed under p -> 1/p, as 0 <-> infinity) lower the worst
input-gradient error over the layers about 2x against Lavin & Gray's 0, +-1, +-2 (normwise
max 1.0e-5 -> 4.7e-6, relative L2 3.4e-6 -> 1.8e-6); the forward's stays about where it was
(L2 1.2e-6 -> 1.0e-6, max 3.8e-6 -> 4.8e-6). PyTorch's float32 (direct) conv: 5e-7 / 2e-7.
The transforms stay as cheap: dyadic coefficients (exact in float32) and +- pairs sharing
their even and odd parts; 20, 15, 15 and 21 element-wise operations in ``_bt_pass``,
``_at_pass``, ``_a_pass``, ``_b_pass`` (20, 13, 15, 20 before). In a simulation, 0, +-3/4,
+-3/2 also lowered the forward's error about 3x, but its powers of 3/4 need more
multiplications in every pass. ``toom_cook`` derives the matrices from the points.

References
----------
A. Lavin, S. Gray. *Fast Algorithms for Convolutional Neural Networks*. CVPR 2016 (arXiv:1509.09308).
B. Barabasz, A. Anderson, K. M. Soodhalter, D. Gregg. *Error analysis and improving the
accuracy of Winograd convolution for deep neural networks*. arXiv:1803.10986, 2018.
"""
import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np

from .backend import get_array_module

# ----------------------------------------------------------------------------- F(4x4, 3x3)
# Y = A^T [ (G g G^T) (.) (B^T d B) ] A     for a 3x3 kernel g and a 6x6 input tile d.
WINO_POINTS = (0, Fraction(1, 2), Fraction(-1, 2), 2, -2)   # and infinity (Barabasz et al.)


def toom_cook(points, m=4, r=3):
    """Exact (Fraction) Toom-Cook matrices A^T (m x n), G (n x r), B^T (n x n) of F(m, r) for
    n - 1 = m + r - 2 finite points and infinity, such that
    ``A^T [(G g) * (B^T d)] = (sum_j g[j] d[i + j])_i``, the 1-D correlation.

    Column a of A^T evaluates the output polynomial's basis at point p_a (1, p, p^2, ...);
    row a of G evaluates the kernel there, divided by prod_{b != a} (p_a - p_b) (Lagrange);
    the point infinity takes the leading coefficient. B^T is then the unique matrix making
    the identity hold, solved exactly from its m r n linear equations."""
    n = m + r - 1
    p = [Fraction(x) for x in points]
    assert len(p) == n - 1 and len(set(p)) == n - 1
    AT = [[p[a] ** k for a in range(n - 1)] + [Fraction(int(k == m - 1))] for k in range(m)]
    G = []
    for a in range(n - 1):
        lagrange = Fraction(1)
        for b in range(n - 1):
            if b != a:
                lagrange *= p[a] - p[b]
        G.append([p[a] ** j / lagrange for j in range(r)])
    G.append([Fraction(int(j == r - 1)) for j in range(r)])
    # sum_a AT[k, a] G[a, j] BT[a, i] = [i == k + j]: for each input tap i, n unknowns BT[:, i]
    K = [[AT[k][a] * G[a][j] for a in range(n)] for k in range(m) for j in range(r)]
    BT = [[None] * n for _ in range(n)]
    for i in range(n):
        col = _solve_exact(K, [Fraction(int(i == k + j)) for k in range(m) for j in range(r)])
        for a in range(n):
            BT[a][i] = col[a]
    return AT, G, BT


def _solve_exact(K, rhs):
    """x with K x = rhs for a consistent (overdetermined) system of full column rank, by
    Gauss-Jordan elimination on Fractions."""
    rows = [list(k) + [v] for k, v in zip(K, rhs)]
    n = len(K[0])
    for c in range(n):
        piv = next(i for i in range(c, len(rows)) if rows[i][c] != 0)
        rows[c], rows[piv] = rows[piv], rows[c]
        rows[c] = [v / rows[c][c] for v in rows[c]]
        for i in range(len(rows)):
            if i != c and rows[i][c] != 0:
                f = rows[i][c]
                rows[i] = [u - f * v for u, v in zip(rows[i], rows[c])]
    assert all(v == 0 for row in rows[n:] for v in row), "inconsistent system"
    return [rows[i][n] for i in range(n)]


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
TILE = 4    # output tile side m
ALPHA = 6   # input tile side m + r - 1


def tiles(n):
    """Number of 4-wide output tiles covering n pixels."""
    return -(-n // TILE)


def padded_shape(h, w, c):
    """Shape of the zero-padded channels-last buffer for an h x w x c map: one pixel of zeros
    on every side, rounded up so that ceil(h/4) x ceil(w/4) Winograd tiles (6x6 windows with
    stride 4) fit inside."""
    return (TILE * tiles(h) + 2, TILE * tiles(w) + 2, c)


def interior(buf, h, w):
    """The h x w x C map inside a padded buffer (a view)."""
    return buf[1:h + 1, 1:w + 1]


def to_padded(x, out=None):
    """(C, H, W) map -> a fresh (or the given) padded channels-last buffer holding it."""
    xp = get_array_module(x)
    c, h, w = x.shape
    if out is None:
        out = xp.zeros(padded_shape(h, w, c), dtype=x.dtype)
    interior(out, h, w)[...] = x.transpose(1, 2, 0)
    return out


def flip_kernel(w):
    """The kernel of the input gradient: (C_out, C_in, 3, 3) -> (C_in, C_out, 3, 3), flipped
    in both spatial axes. ``conv(dout, flip_kernel(w)) = d/dx sum(conv(x, w) * dout)``."""
    return w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)


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


def gemm_weights(w, dtype=None):
    """(C_out, C_in, 3, 3) -> (3, 3*C_in, C_out): per kernel row i, the three column taps
    stacked along K in the order of ``shifted_gemm_conv``'s gathered operand."""
    xp = get_array_module(w)
    dtype = w.dtype if dtype is None else dtype
    c_out, c_in = w.shape[:2]
    return xp.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(3, 3 * c_in, c_out).astype(dtype))


# Threads for the Winograd tile transforms on NumPy (``Workspace.parallel``): the transforms
# are element-wise NumPy work that OpenBLAS does not parallelise, so without this they run on
# one core. Measured on the 2-core machine, quiet, default OpenBLAS threads (benchmarks/
# bench_objective.py --transform-threads 1 vs 2): 256^2 0.552 -> 0.389 s/eval, 512^2
# 1.699 -> 1.430 s/eval. $NSTLITE_TRANSFORM_THREADS overrides; capped at 4 (not measured above 2).
TRANSFORM_THREADS = max(1, min(4, int(os.environ.get("NSTLITE_TRANSFORM_THREADS", 0)) or (os.cpu_count() or 1)))


def _find_local_blas_threads():
    """``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27: the BLAS thread count of the
    calling thread only, returning the previous one) of the OpenBLAS that NumPy loaded, or None
    where there is no such function (another BLAS, an older OpenBLAS, no /proc)."""
    try:
        numpy_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
        # NumPy's own copy (SciPy may map a second OpenBLAS): the one under NumPy's install
        # directory, else the only one mapped
        ours = [p for p in paths if p.startswith(numpy_dir) and "numpy" in p] or (list(paths) if len(paths) == 1 else [])
        if len(ours) != 1:
            return None
        fn = ctypes.CDLL(ours[0]).openblas_set_num_threads_local
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    except (OSError, AttributeError, ValueError):
        return None


_LOCAL_BLAS_THREADS = _find_local_blas_threads()


class Workspace:
    """Scratch memory shared by every conv of a network: one flat array per dtype that grows
    to the largest request and is handed out as views (contents undefined between calls),
    and the thread pool of ``parallel`` and ``matmul``."""

    def __init__(self, xp, threads=None):
        self.xp = xp
        self._flat = {}
        # threads for the element-wise tile transforms (NumPy releases the GIL in its loops);
        # on CuPy the GPU runs them, so one
        if threads is None:
            threads = TRANSFORM_THREADS if xp is np else 1
        self.threads = max(1, int(threads))
        self._pool = None
        # Batched GEMMs split over the same threads, each calling a one-thread OpenBLAS, where
        # OpenBLAS can be set to one thread for our threads alone (see ``matmul``).
        self._blas_local = _LOCAL_BLAS_THREADS if (xp is np and self.threads > 1) else None

    def parallel(self, fn, n):
        """fn(slice) over [0, n) split into ``threads`` contiguous parts, run side by side
        (the calling thread takes one part). The parts must write disjoint memory."""
        k = min(self.threads, n)
        if k <= 1:
            fn(slice(0, n))
            return
        if self._pool is None:
            # the pool's threads only ever run nstlite's parts: one-thread BLAS for them
            init = (lambda: self._blas_local(1)) if self._blas_local else None
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="nstlite-ws", initializer=init)
        bounds = [n * i // k for i in range(k + 1)]
        futures = [self._pool.submit(fn, slice(bounds[i], bounds[i + 1])) for i in range(1, k)]
        fn(slice(bounds[0], bounds[1]))
        for f in futures:
            f.result()

    def parallel_gemms(self, fn, n):
        """``parallel(fn, n)`` for parts that call GEMMs: each part's BLAS calls run on one
        thread (its own core) where OpenBLAS allows a per-thread count; the calling thread's
        count is restored afterwards. Elsewhere the parts run one after another on the calling
        thread, OpenBLAS threading each GEMM as usual."""
        if self._blas_local is None:
            fn(slice(0, n))
            return
        previous = self._blas_local(1)
        try:
            self.parallel(fn, n)
        finally:
            self._blas_local(previous)

    def matmul(self, a, b, out):
        """out[i] = a[i] @ b[i] for 3-D stacks (the Winograd kernels' 36 GEMMs).

        OpenBLAS threads each GEMM call by itself, with a wake-up and a join per call: for
        36 GEMMs per block that is 36 synchronisations, and small GEMMs (64 channels, small
        maps) share poorly between threads. Where OpenBLAS allows a per-thread thread count,
        the stack is instead split over this workspace's threads, each running its GEMMs on
        one BLAS thread: one synchronisation, and each GEMM whole on one core (measured on 2
        cores, 36 x (832 x 64) @ (64 x 64): 113 -> 145 GF/s; 36 x (256 x 256) @ (256 x 256):
        144 -> 155 GF/s). Elsewhere (CuPy, other BLAS) one ``matmul`` call."""
        if self._blas_local is None or a.shape[0] < 2:
            return self.xp.matmul(a, b, out=out)
        self.parallel_gemms(lambda k: self.xp.matmul(a[k], b[k], out=out[k]), a.shape[0])
        return out

    def take(self, dtype, *shapes):
        """Views of consecutive, non-overlapping parts of the flat array, one per shape."""
        dtype = np.dtype(dtype)
        sizes = [int(np.prod(s)) for s in shapes]
        need = sum(sizes)
        flat = self._flat.get(dtype)
        if flat is None or flat.size < need:
            flat = self.xp.empty(need, dtype=dtype)
            self._flat[dtype] = flat
        views, at = [], 0
        for s, n in zip(shapes, sizes):
            views.append(flat[at:at + n].reshape(s))
            at += n
        return views

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self._flat.values())


# ----------------------------------------------------------------------------- blocking
# Scratch per block of rows: large enough that each GEMM call does millions of multiply-adds
# (so OpenBLAS's per-call threading overhead is amortised), small enough to stay in the
# last-level cache and to keep the shared workspace small.
BLOCK_BYTES = 16 << 20


def _rows_per_block(rows, bytes_per_row):
    return max(1, min(rows, BLOCK_BYTES // max(1, bytes_per_row)))


# ----------------------------------------------------------------------------- epilogue
def _write_out(xp, src, dst, bias, relu, mask):
    """dst <- src (+ bias), then ReLU or * (mask > 0), in place: the copy out of a block's
    scratch and the first of these steps are one pass."""
    if mask is not None and mask.dtype != bool:
        mask = mask > 0
    if bias is not None:
        xp.add(src, bias, out=dst)
    elif mask is not None:
        xp.multiply(src, mask, out=dst)
        return
    elif relu:
        xp.maximum(src, 0, out=dst)
        return
    else:
        dst[...] = src
    if relu:
        xp.maximum(dst, 0, out=dst)
    if mask is not None:
        xp.multiply(dst, mask, out=dst)


# ----------------------------------------------------------------------------- shifted GEMM
def shifted_gemm_rows(h, wp, c_in, c_out, itemsize):
    """Output rows per block of ``shifted_gemm_conv`` (``BLOCK_BYTES`` of scratch per block)."""
    return _rows_per_block(h, wp * (3 * c_in + 2 * c_out) * itemsize)


def shifted_gemm_scratch(m, c_in, c_out):
    """Workspace shapes of ``shifted_gemm_conv`` for a block of m padded-flat positions: the
    gathered taps, the accumulator, one GEMM's product."""
    return [(m, 3 * c_in), (m, c_out), (m, c_out)]


def shifted_gemm_adjoint_rows(h, wp, c_in, itemsize):
    """Input rows per block of ``shifted_gemm_conv_adjoint``."""
    return _rows_per_block(h, wp * 2 * c_in * itemsize)


def shifted_gemm_adjoint_scratch(m, c_in):
    """Workspace shapes of ``shifted_gemm_conv_adjoint``: the accumulator, one GEMM's product."""
    return [(m, c_in), (m, c_in)]


def shifted_gemm_conv(xpad, wk, out, h, w, bias=None, relu=False, mask=None, ws=None, rows_per_block=None):
    """3x3 convolution by GEMMs over shifted views of a padded buffer.

    Parameters
    ----------
    xpad : (Hp, Wp, C_in) padded input buffer (zeros outside the h x w map)
    wk : (3, 3*C_in, C_out) from ``gemm_weights``
    out : (h, w, C_out) destination (e.g. ``interior(next_buffer, h, w)``)
    bias : (C_out,) or None; relu : apply max(., 0); mask : (h, w, C_out) or None, multiply
        the result by ``mask > 0`` or by a boolean mask (the ReLU mask of the layer below, in
        the backward pass)
    ws : Workspace for the block scratch

    Notes
    -----
    For output row y the input rows y..y+2 of the padded buffer are read. A block of rows is
    computed over the full padded width Wp as a (rows*Wp, 3*C_in) @ (3*C_in, C_out) GEMM per
    kernel row; the two columns per row that fall on the padding are dropped when copying
    out. The gathered operand puts the taps j = 0, 1, 2 side by side: row p of it is
    ``flat[p], flat[p+1], flat[p+2]``.
    """
    xp = get_array_module(xpad)
    hp, wp, c_in = xpad.shape
    c_out = wk.shape[2]
    ws = ws or Workspace(xp)
    if rows_per_block is None:
        rows_per_block = shifted_gemm_rows(h, wp, c_in, c_out, xpad.itemsize)
    flat = xpad.reshape(hp * wp, c_in)
    nflat = hp * wp
    for y0 in range(0, h, rows_per_block):
        rb = min(rows_per_block, h - y0)
        m = rb * wp
        gathered, acc, part = ws.take(xpad.dtype, *shifted_gemm_scratch(m, c_in, c_out))
        for i in range(3):
            start = (y0 + i) * wp
            g3 = gathered.reshape(m, 3, c_in)
            for j in range(3):
                # the last row's taps may run past the buffer end: those columns are dropped
                stop = min(start + j + m, nflat)
                g3[: stop - start - j, j] = flat[start + j: stop]
                if stop - start - j < m:
                    g3[stop - start - j:, j] = 0
            if i == 0:
                xp.matmul(gathered, wk[0], out=acc)
            else:
                xp.matmul(gathered, wk[i], out=part)
                acc += part
        dst = out[y0:y0 + rb]
        _write_out(xp, acc.reshape(rb, wp, c_out)[:, :w], dst, bias, relu, None if mask is None else mask[y0:y0 + rb])
    return out


def shifted_gemm_conv_adjoint(dpad, wk, dx, h, w, mask=None, ws=None, rows_per_block=None):
    """Input gradient of ``shifted_gemm_conv`` with the *same* weights ``wk`` (3, 3*C_in, C_out).

    ``dx[y, x] = sum_{i,j} dpad[y + i, x + j] @ w[:, :, 2-i, 2-j]`` (the conv with the flipped
    kernel): nine GEMMs per block, each reading a contiguous slice of the flattened padded
    gradient and the (C_in, C_out) block of ``wk`` for tap (2-i, 2-j) transposed (a view, no
    copy of the kernel).

    dpad : (Hp, Wp, C_out) padded output gradient; dx : (h, w, C_in); mask : as above.
    """
    xp = get_array_module(dpad)
    hp, wp, c_out = dpad.shape
    c_in = wk.shape[1] // 3
    ws = ws or Workspace(xp)
    if rows_per_block is None:
        rows_per_block = shifted_gemm_adjoint_rows(h, wp, c_in, dpad.itemsize)
    flat = dpad.reshape(hp * wp, c_out)
    nflat = hp * wp
    for y0 in range(0, h, rows_per_block):
        rb = min(rows_per_block, h - y0)
        m = rb * wp
        acc, part = ws.take(dpad.dtype, *shifted_gemm_adjoint_scratch(m, c_in))
        acc[...] = 0
        for i in range(3):
            for j in range(3):
                start = (y0 + i) * wp + j
                rows = min(m, nflat - start)  # past the end only the dropped padding columns
                tap = wk[2 - i, (2 - j) * c_in:(3 - j) * c_in].T  # (C_out, C_in) view
                xp.matmul(flat[start:start + rows], tap, out=part[:rows])
                xp.add(acc[:rows], part[:rows], out=acc[:rows])
        dst = dx[y0:y0 + rb]
        _write_out(xp, acc.reshape(rb, wp, c_in)[:, :w], dst, None, False, None if mask is None else mask[y0:y0 + rb])
    return dx


# ----------------------------------------------------------------------------- im2col (the image)
# conv1_1 reads the 3-channel image: K = 9 C_in = 27 is too small for the shifted GEMMs
# (three K = 9 GEMMs and two passes to sum them). Its input is the caller's (C, H, W) image,
# so here the columns are built channel-major, every row of the (28, m) column block one
# contiguous copy, and the bias rides along as a row of ones: one GEMM with K = 28.
def im2col_weights(w, b, dtype=None):
    """(C_out, C_in, 3, 3), (C_out,) -> (9 C_in + 1, C_out): row (c*3 + i)*3 + j holds tap
    (i, j) of input channel c, the last row the bias."""
    xp = get_array_module(w)
    dtype = w.dtype if dtype is None else dtype
    c_out = w.shape[0]
    return xp.ascontiguousarray(xp.concatenate([w.reshape(c_out, -1).T, b.reshape(1, c_out)]).astype(dtype))


def _image_padded(xp, x, ws_array):
    """(C, H, W) image -> its zero-padded channel-major copy (C, Hp + 1, Wp) in ``ws_array``
    (one spare row: the last block's taps read two elements past row Hp - 1)."""
    c, h, w = x.shape
    ws_array[...] = 0
    ws_array[:, 1:h + 1, 1:w + 1] = x
    return ws_array


def im2col_rows(h, wp, c_in, c_out, itemsize):
    """Output rows per block of ``im2col_conv`` and its adjoint."""
    return _rows_per_block(h, wp * (9 * c_in + 1 + c_out) * itemsize)


def im2col_scratch(h, w, c_in, c_out, rows_per_block):
    """Workspace shapes of ``im2col_conv``: the padded channel-major image, the columns of a
    block (with the bias row), the block's output."""
    hp, wp, _ = padded_shape(h, w, c_in)
    mb = rows_per_block * wp
    return [(c_in, hp + 1, wp), (9 * c_in + 1, mb), (mb, c_out)]


def im2col_adjoint_scratch(h, w, c_in, rows_per_block):
    """Workspace shapes of ``im2col_conv_adjoint``: the padded channel-major image gradient
    and a block's column gradient."""
    hp, wp, _ = padded_shape(h, w, c_in)
    return [(c_in, hp + 1, wp), (rows_per_block * wp, 9 * c_in)]


def im2col_conv(x, wk, out, ws=None, relu=True, rows_per_block=None):
    """3x3 convolution (stride 1, pad 1) + bias (+ ReLU) of a (C_in, H, W) image into ``out``
    (H, W, C_out), e.g. the interior of a padded channels-last buffer.

    For padded-flat output position p = y Wp + x the window starts at flat input p, and tap
    (i, j) of channel c is ``xcm[c].flat[p + i Wp + j]``: for a block of rows, row k of the
    columns is a contiguous slice. Each output row's last Wp - W positions are dropped."""
    xp = get_array_module(x)
    c_in, h, w = x.shape
    c_out = wk.shape[1]
    hp, wp, _ = padded_shape(h, w, c_in)
    ws = ws or Workspace(xp)
    if rows_per_block is None:
        rows_per_block = im2col_rows(h, wp, c_in, c_out, x.itemsize)
    xcm, cols, acc = ws.take(out.dtype, *im2col_scratch(h, w, c_in, c_out, rows_per_block))
    xflat = _image_padded(xp, x, xcm).reshape(c_in, -1)
    cols[9 * c_in] = 1  # the bias row
    for y0 in range(0, h, rows_per_block):
        rb = min(rows_per_block, h - y0)

        def rows(r):
            # output rows y0 + r of the block: their columns, one GEMM, the copy out
            m0, m1 = r.start * wp, r.stop * wp
            for c in range(c_in):
                for i in range(3):
                    for j in range(3):
                        start = (y0 + i) * wp + j
                        cols[(c * 3 + i) * 3 + j, m0:m1] = xflat[c, start + m0:start + m1]
            res = acc[m0:m1]
            xp.matmul(cols[:, m0:m1].T, wk, out=res)   # (m, 28) @ (28, C_out): conv + bias
            dst = out[y0 + r.start:y0 + r.stop]
            src = res.reshape(r.stop - r.start, wp, c_out)[:, :w]
            if relu:
                xp.maximum(src, 0, out=dst)
            else:
                dst[...] = src
        ws.parallel_gemms(rows, rb)  # parts of rows side by side, each on its own core
    return out


def im2col_conv_adjoint(dpad, wk, h, w, ws=None, rows_per_block=None):
    """Input gradient of ``im2col_conv`` with the same weights: dpad (Hp, Wp, C_out) padded
    output gradient -> dx (C_in, h, w), channel-major like the image.

    The adjoint of each step: per block, the columns' gradient (m, 27) = dY W^T (one GEMM;
    in this orientation OpenBLAS runs it several times faster than W^T dY^T), then each of
    its 27 columns is added back where the forward read that column row from (into the
    channel-major padded gradient). dY at flat position p is ``dpad.flat[p + Wp + 1]``; the
    dropped positions read the buffer's zero border, so they add nothing."""
    xp = get_array_module(dpad)
    hp, wp, c_out = dpad.shape
    c_in = (wk.shape[0] - 1) // 9
    ws = ws or Workspace(xp)
    if rows_per_block is None:
        rows_per_block = im2col_rows(h, wp, c_in, c_out, dpad.itemsize)
    dcm, dcols = ws.take(dpad.dtype, *im2col_adjoint_scratch(h, w, c_in, rows_per_block))
    dcm[...] = 0
    dflat = dcm.reshape(c_in, -1)
    gflat = dpad.reshape(hp * wp, c_out)
    taps = wk[:9 * c_in]                          # (27, C_out), the bias row has no input
    for y0 in range(0, h, rows_per_block):
        rb = min(rows_per_block, h - y0)
        m = rb * wp
        dy = gflat[(y0 + 1) * wp + 1:(y0 + 1) * wp + 1 + m]   # (m, C_out)
        d = dcols[:m]
        ws.parallel_gemms(lambda r: xp.matmul(dy[r], taps.T, out=d[r]), m)

        def add_back(cs):
            # channels are independent; the 9 taps of one channel overlap, so they stay in order
            for c in range(cs.start, cs.stop):
                for i in range(3):
                    for j in range(3):
                        start = (y0 + i) * wp + j
                        seg = dflat[c, start:start + m]
                        xp.add(seg, d[:, (c * 3 + i) * 3 + j], out=seg)
        ws.parallel(add_back, c_in)
    return xp.ascontiguousarray(dcm[:, 1:h + 1, 1:w + 1])


# ----------------------------------------------------------------------------- Winograd
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


def _at_pass(xp, m, y):
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


def winograd_tile_rows(h, w, c_in, c_out, itemsize):
    """Tile rows per block of ``winograd_conv`` and its adjoint: ``BLOCK_BYTES`` of transformed
    tiles (~256 tiles: enough rows for efficient GEMMs, small enough to stay in cache)."""
    return _rows_per_block(tiles(h), ALPHA * ALPHA * tiles(w) * (c_in + c_out) * itemsize)


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


def winograd_conv(xpad, U, out, h, w, bias=None, relu=False, mask=None, ws=None, tile_rows=None):
    """3x3 convolution by Winograd F(4x4, 3x3) from a padded buffer.

    Parameters
    ----------
    xpad : (Hp, Wp, C_in) padded input buffer with Hp >= 4 ceil(h/4) + 2, Wp >= 4 ceil(w/4) + 2
        (``padded_shape``), zeros outside the h x w map
    U : (36, C_in, C_out) from ``winograd_weights``
    out : (h, w, C_out) destination view (e.g. ``interior(next_buffer, h, w)``)
    bias, relu, mask, ws : as ``shifted_gemm_conv``
    tile_rows : tile rows per block (None: ``BLOCK_BYTES`` of transformed tiles per block)
    """
    xp = get_array_module(xpad)
    c_in = xpad.shape[2]
    c_out = U.shape[2]
    th, tw = tiles(h), tiles(w)
    wv = TILE * tw + 2  # padded columns the tiles read
    ws = ws or Workspace(xp)
    if tile_rows is None:
        tile_rows = winograd_tile_rows(h, w, c_in, c_out, xpad.itemsize)
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
            _at_pass(xp, [R[:, k][:, t] for k in range(ALPHA)], [Yk[:, l][:, t] for l in range(TILE)])
            a = y0 + TILE * t.start                               # output rows of tile rows t
            b = min(y0 + TILE * t.stop, h)
            if b > a:
                dst = out[a:b]
                _write_out(xp, Y[t].reshape(-1, TILE * tw, c_out)[:b - a, :w], dst, bias, relu,
                           None if mask is None else mask[a:b])
        ws.parallel(output_transform, nb)
    return out


def _a_pass(xp, y, z):
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


def _b_pass(xp, m, v):
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


def winograd_conv_adjoint(dpad, U, dx, h, w, mask=None, ws=None, tile_rows=None):
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
    """
    xp = get_array_module(dpad)
    c_in, c_out = U.shape[1], U.shape[2]
    th, tw = tiles(h), tiles(w)
    wv = TILE * tw + 2
    ws = ws or Workspace(xp)
    if tile_rows is None:
        tile_rows = winograd_tile_rows(h, w, c_in, c_out, dpad.itemsize)
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
            _a_pass(xp, [rowsA[:, t, l::TILE] for l in range(TILE)], [Z[:, b][:, t] for b in range(ALPHA)])
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
            _write_out(xp, S[ys.start + 1 - p0:ys.stop + 1 - p0, 1:w + 1], dx[ys], None, False,
                       None if mask is None else mask[ys])
        if y1 > y0:
            ws.parallel(write_rows, y1 - y0)
        carry[...] = S[TILE * nb:]
        have_carry = True
    # the last input row may sit in the final carry (when h is a multiple of 4)
    if th * TILE - 1 < h:
        y = th * TILE - 1
        dx[y] = carry[0, 1:w + 1]
        _write_out(xp, dx[y:y + 1], dx[y:y + 1], None, False, None if mask is None else mask[y:y + 1])
    return dx


# ----------------------------------------------------------------------------- kernel choice
IM2COL_MAX_CHANNELS = 4  # an image (conv1_1): columns of 9 C_in + 1 rows
WINOGRAD_MIN_TILES = 16  # a 16x16 map; on smaller ones the transforms cost more than they save


def use_winograd(c_in, c_out, h, w):
    """Winograd pays where the 36 GEMMs dominate the tile transforms: both channel counts at
    least 16 (every VGG19 conv but conv1_1) and a map of at least ``WINOGRAD_MIN_TILES``
    tiles. Measured single-threaded here (Winograd vs shifted GEMM, forward): 512->512 on
    64x64 100 vs 302 ms, on 32x32 26 vs 76 ms, on 16x16 11 vs 18 ms."""
    return c_in >= 16 and c_out >= 16 and tiles(h) * tiles(w) >= WINOGRAD_MIN_TILES


class ConvPlan:
    """One 3x3 conv layer's forward and input-gradient passes; chooses the kernel per call
    from the map size and keeps each kernel's form of the weights, made on first use.

    w : (C_out, C_in, 3, 3) kernel; b : (C_out,) bias; method : 'winograd', 'shifted_gemm'
    or 'auto' (``use_winograd`` decides). Both directions share one weight form per kernel:
    the input gradients are the adjoints of the forward algorithms
    (``winograd_conv_adjoint``, ``shifted_gemm_conv_adjoint``).
    """

    def __init__(self, w, b, method="auto"):
        if method not in ("auto", "winograd", "shifted_gemm"):
            raise ValueError(f"unknown conv method {method!r}")
        self.c_out, self.c_in = w.shape[:2]
        self.w, self.bias, self.method = w, b, method
        self._weights = {}

    def method_for(self, h, w):
        if self.method == "auto":
            return "winograd" if use_winograd(self.c_in, self.c_out, h, w) else "shifted_gemm"
        return self.method

    def reads_image(self):
        """True when the layer reads a (C, H, W) image directly by ``im2col_conv`` (a few
        input channels, kernel choice 'auto'): conv1_1."""
        return self.method == "auto" and self.c_in <= IM2COL_MAX_CHANNELS

    def form_for(self, h, w):
        """The kernel that runs this layer on an h x w map, forward and backward: 'im2col'
        (the image, ``reads_image``), 'winograd' or 'shifted_gemm'."""
        return "im2col" if self.reads_image() else self.method_for(h, w)

    def weights_shape(self, form):
        """Shape of the kernel in ``form``'s form (what ``weights(form)`` returns)."""
        c_in, c_out = self.c_in, self.c_out
        return {"winograd": (ALPHA * ALPHA, c_in, c_out), "shifted_gemm": (3, 3 * c_in, c_out),
                "im2col": (9 * c_in + 1, c_out)}[form]

    def workspace_shapes(self, h, w, itemsize):
        """The workspace views (shapes) the forward and the backward pass take on an h x w map,
        as two lists (the largest block's; the workspace holds the larger of the two sums)."""
        c_in, c_out = self.c_in, self.c_out
        form = self.form_for(h, w)
        if form == "im2col":
            rows = im2col_rows(h, padded_shape(h, w, c_in)[1], c_in, c_out, itemsize)
            return im2col_scratch(h, w, c_in, c_out, rows), im2col_adjoint_scratch(h, w, c_in, rows)
        if form == "winograd":
            nb = min(winograd_tile_rows(h, w, c_in, c_out, itemsize), tiles(h))
            return winograd_scratch(nb, w, c_in, c_out), winograd_adjoint_scratch(nb, w, c_in, c_out)
        wp = padded_shape(h, w, c_in)[1]
        m_fwd = min(shifted_gemm_rows(h, wp, c_in, c_out, itemsize), h) * wp
        m_bwd = min(shifted_gemm_adjoint_rows(h, wp, c_in, itemsize), h) * wp
        return shifted_gemm_scratch(m_fwd, c_in, c_out), shifted_gemm_adjoint_scratch(m_bwd, c_in)

    def weights(self, method):
        """The kernel in ``method``'s form: U (36, C_in, C_out), taps (3, 3*C_in, C_out) or
        im2col rows (9*C_in + 1, C_out)."""
        wk = self._weights.get(method)
        if wk is None:
            if method == "im2col":
                wk = im2col_weights(self.w, self.bias)
            else:
                wk = (winograd_weights if method == "winograd" else gemm_weights)(self.w)
            self._weights[method] = wk
        return wk

    def forward_image(self, x, out, ws, relu=True):
        """out (h, w, C_out) <- relu(conv(x) + b) for a (C_in, h, w) image (``im2col_conv``)."""
        return im2col_conv(x, self.weights("im2col"), out, ws=ws, relu=relu)

    def backward_image(self, dpad, h, w, ws):
        """The image's gradient (C_in, h, w) for the output gradient in padded ``dpad``."""
        return im2col_conv_adjoint(dpad, self.weights("im2col"), h, w, ws=ws)

    def forward(self, xpad, out, h, w, ws, relu=True):
        """out (h, w, C_out) <- relu(conv(x) + b), x the map in the padded buffer ``xpad``."""
        method = self.method_for(h, w)
        run = winograd_conv if method == "winograd" else shifted_gemm_conv
        return run(xpad, self.weights(method), out, h, w, bias=self.bias, relu=relu, ws=ws)

    def backward(self, dpad, dx, h, w, ws, mask=None):
        """dx (h, w, C_in) <- the input gradient for the output gradient in the padded buffer
        ``dpad`` (times ``mask > 0`` when a mask is given)."""
        method = self.method_for(h, w)
        run = winograd_conv_adjoint if method == "winograd" else shifted_gemm_conv_adjoint
        return run(dpad, self.weights(method), dx, h, w, mask=mask, ws=ws)


# ----------------------------------------------------------------------------- layer interface
# The (C, H, W) forward/backward pairs of ``nstlite.layers.CONV_KERNELS``: the same kernels,
# with the layout conversion at the edges, so the gradient checks and the reference tests see
# them exactly like the reference kernel.
def _layer_kernel(method):
    def forward(x, w, b):
        xp = get_array_module(x)
        c, h, wd = x.shape
        plan = ConvPlan(w.astype(x.dtype, copy=False), b.astype(x.dtype, copy=False), method)
        out = xp.empty((h, wd, w.shape[0]), dtype=x.dtype)
        if plan.reads_image():
            plan.forward_image(x, out, Workspace(xp), relu=False)
        else:
            plan.forward(to_padded(x), out, h, wd, Workspace(xp), relu=False)
        return xp.ascontiguousarray(out.transpose(2, 0, 1)), plan

    def backward(dout, plan):
        xp = get_array_module(dout)
        _, h, wd = dout.shape
        if plan.reads_image():
            return plan.backward_image(to_padded(dout), h, wd, Workspace(xp))
        dx = xp.empty((h, wd, plan.c_in), dtype=dout.dtype)
        plan.backward(to_padded(dout), dx, h, wd, Workspace(xp))
        return xp.ascontiguousarray(dx.transpose(2, 0, 1))

    forward.__name__ = f"conv3x3_forward_{method}"
    backward.__name__ = f"conv3x3_backward_{method}"
    forward.__doc__ = (f"3x3 conv (stride 1, pad 1) + bias by the {method!r} kernel of nstlite.conv_fast; "
                       "x (C_in, H, W) -> (out (C_out, H, W), cache).")
    backward.__doc__ = f"Input gradient of the {method!r} kernel: dout (C_out, H, W) -> dx (C_in, H, W)."
    return forward, backward


# name -> (forward, backward); "fast" picks per call (``use_winograd``), as the VGG19 fast path does.
METHODS = {"shifted_gemm": "shifted_gemm", "winograd": "winograd", "fast": "auto"}
KERNELS = {name: _layer_kernel(method) for name, method in METHODS.items()}
