"""3x3 convolutions by GEMMs on padded channels-last buffers, and their adjoints.

``shifted_gemm_conv``
    The definition as three GEMMs over shifted views: with the buffer flattened to (Hp*Wp, C),
    the input under kernel row i is the contiguous slice starting at row ``i*Wp``; the three
    column taps j are gathered side by side into one (M, 3C) operand so each GEMM has K = 3 C.
    Exact up to float rounding; the kernel of small maps and the general fallback.
``im2col_conv``
    conv1_1 (C = 3): columns of the 27 taps plus a row of ones (the bias), one GEMM per block
    of rows.

Each input gradient is the adjoint of its own forward algorithm, reading the forward's
weights (transposed views): one weight copy per kernel, never a flipped second one (Winograd's
is its forward on flipped maps, which needs none either). Each
kernel's ``*_scratch`` function gives the workspace shapes it takes (its memory estimate).
"""
from ..backend import get_array_module
from .layout import padded_shape, write_out
from .workspace import BLOCK_BYTES, Workspace, rows_per_block


def gemm_weights(w, dtype=None):
    """(C_out, C_in, 3, 3) -> (3, 3*C_in, C_out): per kernel row i, the three column taps
    stacked along K in the order of ``shifted_gemm_conv``'s gathered operand."""
    xp = get_array_module(w)
    dtype = w.dtype if dtype is None else dtype
    c_out, c_in = w.shape[:2]
    return xp.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(3, 3 * c_in, c_out).astype(dtype))


def shifted_gemm_rows(h, wp, c_in, c_out, itemsize, block_bytes=BLOCK_BYTES):
    """Output rows per block of ``shifted_gemm_conv`` (``block_bytes`` of scratch per block)."""
    return rows_per_block(h, wp * (3 * c_in + 2 * c_out) * itemsize, block_bytes)


def shifted_gemm_scratch(m, c_in, c_out):
    """Workspace shapes of ``shifted_gemm_conv`` for a block of m padded-flat positions: the
    gathered taps, the accumulator, one GEMM's product."""
    return [(m, 3 * c_in), (m, c_out), (m, c_out)]


def shifted_gemm_adjoint_rows(h, wp, c_in, itemsize, block_bytes=BLOCK_BYTES):
    """Input rows per block of ``shifted_gemm_conv_adjoint``."""
    return rows_per_block(h, wp * 2 * c_in * itemsize, block_bytes)


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
        rows_per_block = shifted_gemm_rows(h, wp, c_in, c_out, xpad.itemsize, ws.block_bytes)
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
        write_out(xp, acc.reshape(rb, wp, c_out)[:, :w], dst, bias, relu, None if mask is None else mask[y0:y0 + rb])
    return out


def shifted_gemm_conv_adjoint(dpad, wk, dx, h, w, mask=None, ws=None, rows_per_block=None, taps_t=None):
    """Input gradient of ``shifted_gemm_conv`` with the *same* weights ``wk`` (3, 3*C_in, C_out).

    ``dx[y, x] = sum_{i,j} dpad[y + i, x + j] @ w[:, :, 2-i, 2-j]`` (the conv with the flipped
    kernel): nine GEMMs per block, each reading a contiguous slice of the flattened padded
    gradient and the (C_in, C_out) block of ``wk`` for tap (2-i, 2-j) transposed (a view, no
    copy of the kernel).

    dpad : (Hp, Wp, C_out) padded output gradient; dx : (h, w, C_in); mask : as above.
    taps_t : None, or the taps transposed, (3, 3, C_out, C_in) in C order
        (``ConvPlan.adjoint_weights``): on the GPU, where matmul copies a transposed operand,
        kept once per layer instead of copied nine times per block.
    """
    xp = get_array_module(dpad)
    hp, wp, c_out = dpad.shape
    c_in = wk.shape[1] // 3
    ws = ws or Workspace(xp)
    if rows_per_block is None:
        rows_per_block = shifted_gemm_adjoint_rows(h, wp, c_in, dpad.itemsize, ws.block_bytes)
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
                tap = (wk[2 - i, (2 - j) * c_in:(3 - j) * c_in].T if taps_t is None  # (C_out, C_in) view
                       else taps_t[2 - i, 2 - j])
                xp.matmul(flat[start:start + rows], tap, out=part[:rows])
                xp.add(acc[:rows], part[:rows], out=acc[:rows])
        dst = dx[y0:y0 + rb]
        write_out(xp, acc.reshape(rb, wp, c_in)[:, :w], dst, None, False, None if mask is None else mask[y0:y0 + rb])
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


def im2col_rows(h, wp, c_in, c_out, itemsize, block_bytes=BLOCK_BYTES):
    """Output rows per block of ``im2col_conv`` and its adjoint."""
    return rows_per_block(h, wp * (9 * c_in + 1 + c_out) * itemsize, block_bytes)


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
        rows_per_block = im2col_rows(h, wp, c_in, c_out, x.itemsize, ws.block_bytes)
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


def im2col_conv_adjoint(dpad, wk, h, w, ws=None, rows_per_block=None, taps_t=None):
    """Input gradient of ``im2col_conv`` with the same weights: dpad (Hp, Wp, C_out) padded
    output gradient -> dx (C_in, h, w), channel-major like the image.

    The adjoint of each step: per block, the columns' gradient (m, 27) = dY W^T (one GEMM;
    in this orientation OpenBLAS runs it several times faster than W^T dY^T), then each of
    its 27 columns is added back where the forward read that column row from (into the
    channel-major padded gradient). dY at flat position p is ``dpad.flat[p + Wp + 1]``; the
    dropped positions read the buffer's zero border, so they add nothing. ``taps_t``: None,
    or the taps' transpose (C_out, 9 C_in) in C order (``ConvPlan.adjoint_weights``, GPU)."""
    xp = get_array_module(dpad)
    hp, wp, c_out = dpad.shape
    c_in = (wk.shape[0] - 1) // 9
    ws = ws or Workspace(xp)
    if rows_per_block is None:
        rows_per_block = im2col_rows(h, wp, c_in, c_out, dpad.itemsize, ws.block_bytes)
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
        ws.parallel_gemms(lambda r: xp.matmul(dy[r], taps.T if taps_t is None else taps_t, out=d[r]), m)

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
