"""VGG19's layers as forward/backward pairs, on one image of shape (C, H, W).

Each ``*_forward`` returns ``(out, cache)``; the matching ``*_backward(dout, cache)`` returns
``dx``, the gradient with respect to the layer *input* only: the network's weights are frozen
during style transfer, so their gradients are never computed. dtype follows the input
(float32 in use, float64 in the gradient checks). All array code uses ``xp``, the array module
of the input (NumPy or CuPy), so the same lines run on CPU and GPU.

The convolution here is the plain, obviously-correct one: the ``"reference"`` kernel, and the
oracle every fast kernel of ``nstlite.fast`` is tested against. Pooling is written once, over
the four taps of each 2x2 window with the spatial axes as a parameter, so that the
channels-last path of ``nstlite.fast`` runs these same functions on its (H, W, C) maps.
"""
from .backend import get_array_module


# --------------------------------------------------------------------------- convolution
def conv3x3_forward_reference(x, w, b):
    """3x3 cross-correlation, stride 1, zero padding 1, plus bias.

    Parameters
    ----------
    x : (C_in, H, W) input
    w : (C_out, C_in, 3, 3) kernel, applied without flipping (as in Caffe/PyTorch)
    b : (C_out,) bias

    Returns
    -------
    out : (C_out, H, W), ``out[o] = b[o] + sum_{c,i,j} w[o,c,i,j] * xpad[c, y+i, x+j]``
    cache : (x, w) - all the backward pass needs

    Notes
    -----
    Written as nine matrix products, one per kernel offset (i, j), each between the
    (C_out, C_in) slice ``w[:, :, i, j]`` and the input shifted by (i, j). This is the
    definition summed in a different order, and it runs unchanged on NumPy and CuPy.
    """
    xp = get_array_module(x)
    c_in, h, wd = x.shape
    xpad = xp.zeros((c_in, h + 2, wd + 2), dtype=x.dtype)
    xpad[:, 1:-1, 1:-1] = x
    out = xp.empty((w.shape[0], h, wd), dtype=x.dtype)
    out[...] = b.astype(x.dtype, copy=False)[:, None, None]
    for i in range(3):
        for j in range(3):
            # (C_out, C_in) @ (C_in, H*W): the contribution of kernel tap (i, j)
            shifted = xpad[:, i:i + h, j:j + wd].reshape(c_in, h * wd)
            out += (w[:, :, i, j].astype(x.dtype, copy=False) @ shifted).reshape(-1, h, wd)
    return out, (x, w)


def conv3x3_backward_reference(dout, cache):
    """Gradient of ``conv3x3_forward_reference`` w.r.t. its input.

    ``dx = sum_{i,j} shift_{-(i,j)}( w[:, :, i, j]^T @ dout )``, cropped to the unpadded input:
    each input pixel receives the output gradients of every window it took part in.

    dout : (C_out, H, W) -> dx : (C_in, H, W)
    """
    x, w = cache
    xp = get_array_module(dout)
    c_in, h, wd = x.shape
    c_out = dout.shape[0]
    dxpad = xp.zeros((c_in, h + 2, wd + 2), dtype=dout.dtype)
    dflat = dout.reshape(c_out, h * wd)
    for i in range(3):
        for j in range(3):
            wt = w[:, :, i, j].astype(dout.dtype, copy=False).T  # (C_in, C_out)
            dxpad[:, i:i + h, j:j + wd] += (wt @ dflat).reshape(c_in, h, wd)
    return dxpad[:, 1:-1, 1:-1].copy()


# --------------------------------------------------------------------------- ReLU
def relu_forward(x):
    """max(x, 0). The cache is the output itself: ``out > 0`` is exactly the mask backward needs."""
    xp = get_array_module(x)
    out = xp.maximum(x, 0)
    return out, out


def relu_backward(dout, cache):
    """dx = dout where the unit was active (out > 0), else 0.

    This is the "if F_ij^l > 0 ... else 0" case of the paper's eqs. (2) and (6): the losses
    return dL/dF unmasked and the mask is applied here, once.
    """
    out = cache
    return dout * (out > 0)


# --------------------------------------------------------------------------- pooling
# 2x2 windows with stride 2, floor mode (PyTorch's default): an odd last row/column is dropped
# by the forward pass and gets zero gradient. ``spatial`` names the (row, column) axes: CHW for
# the (C, H, W) maps of this module, HWC for the channels-last maps of ``nstlite.fast``.
CHW = (1, 2)
HWC = (0, 1)


def pool_taps(x, ho, wo, spatial=CHW):
    """The four strided views of the 2x2 windows of an ho x wo output grid over x, in
    row-major window order: tap k = 2 a + b is ``x[2i + a, 2j + b]`` (along ``spatial``)."""
    rows, cols = spatial
    taps = []
    for a in range(2):
        for b in range(2):
            index = [slice(None)] * x.ndim
            index[rows], index[cols] = slice(a, 2 * ho, 2), slice(b, 2 * wo, 2)
            taps.append(x[tuple(index)])
    return taps


def _output_size(out, spatial):
    return out.shape[spatial[0]], out.shape[spatial[1]]


def pool_forward_into(pooling, x, out, spatial=CHW):
    """out <- 2x2 'avg' or 'max' pooling of x, in place, and returns out.

    x has spatial size (h, w) along the ``spatial`` axes; out has (h//2, w//2), or the size of
    a band of whole windows when x is a band of 2 r rows. Average pooling sums the four taps
    and takes a quarter; max pooling keeps the largest.
    """
    xp = get_array_module(x)
    a, b, c, d = pool_taps(x, *_output_size(out, spatial), spatial)
    if pooling == "avg":
        xp.add(a, b, out=out)
        xp.add(out, c, out=out)
        xp.add(out, d, out=out)
        xp.multiply(out, 0.25, out=out)
    else:
        xp.maximum(a, b, out=out)
        xp.maximum(out, c, out=out)
        xp.maximum(out, d, out=out)
    return out


def max_pool_winner(x, out, winner, spatial=CHW):
    """winner (int8, out's shape) <- index 0..3 of each window's first maximal tap, for the max
    pooled ``out`` of x: ties go to the first tap in row-major window order."""
    winner[...] = 3
    taps = pool_taps(x, *_output_size(out, spatial), spatial)
    xp = get_array_module(x)
    for k in (2, 1, 0):  # copyto with where=, not a boolean-mask assignment (a host sync on CuPy)
        xp.copyto(winner, k, where=taps[k] == out)
    return winner


def pool_backward_into(pooling, dout, dx, winner=None, mask=None, spatial=CHW, overwrite_dout=False):
    """dx <- the gradient of 2x2 pooling for the output gradient dout, in place.

    Parameters
    ----------
    pooling : 'avg' (each tap of a window gets a quarter of its gradient) or 'max' (the
        window's ``winner`` gets all of it)
    dout : output gradient, spatial size (h//2, w//2) (or a band of whole windows)
    dx : input gradient to fill, spatial size (h, w); rows and columns beyond the windows
        (the dropped odd ones) get zero
    winner : int8 winning tap per window (``max_pool_winner``), for max pooling
    mask : bool, dx's shape, or None: multiplies the result (the ReLU mask of the conv layer
        below, applied in the same pass)
    spatial : the (row, column) axes, ``CHW`` or ``HWC``
    overwrite_dout : average pooling may scale dout in place (the caller's scratch) instead of
        making a scaled copy

    Returns
    -------
    dx
    """
    xp = get_array_module(dout)
    ho, wo = _output_size(dout, spatial)
    if pooling == "avg":
        dout = xp.multiply(dout, 0.25, out=dout if overwrite_dout else None)  # scaled once, not per tap
    masks = [None] * 4 if mask is None else pool_taps(mask, ho, wo, spatial)
    for k, (tap, m) in enumerate(zip(pool_taps(dx, ho, wo, spatial), masks)):
        if pooling == "max":  # all of the window's gradient to its winning tap
            on = winner == k if m is None else (winner == k) & m
            xp.multiply(dout, on, out=tap)
        elif m is None:  # a quarter to every tap
            tap[...] = dout
        else:
            xp.multiply(dout, m, out=tap)
    rows, cols = spatial
    for axis, n in ((rows, ho), (cols, wo)):
        if dx.shape[axis] > 2 * n:
            index = [slice(None)] * dx.ndim
            index[axis] = slice(2 * n, None)
            dx[tuple(index)] = 0
    return dx


def _pooled_shape(shape, spatial=CHW):
    shape = list(shape)
    for axis in spatial:
        shape[axis] //= 2
    return tuple(shape)


def avg_pool_forward(x):
    """2x2 average pooling, stride 2 - the paper's replacement for max pooling.

    x : (C, H, W) -> out : (C, H//2, W//2), each output the mean of its 2x2 window; the cache
    is x's shape.
    """
    xp = get_array_module(x)
    out = pool_forward_into("avg", x, xp.empty(_pooled_shape(x.shape), dtype=x.dtype))
    return out, x.shape


def avg_pool_backward(dout, cache):
    """Each input pixel of a window receives a quarter of the window's output gradient;
    pixels in a dropped odd row/column receive zero. dout (C, H//2, W//2) -> dx (C, H, W)."""
    xp = get_array_module(dout)
    return pool_backward_into("avg", dout, xp.empty(cache, dtype=dout.dtype))


def max_pool_forward(x):
    """2x2 max pooling, stride 2 (VGG's original pooling; an option here).

    Returns ``(out, cache)`` with cache = (x's shape, int8 index 0..3 of the winning tap per
    window, ``max_pool_winner``). Ties go to the first tap in row-major window order.
    """
    xp = get_array_module(x)
    out = pool_forward_into("max", x, xp.empty(_pooled_shape(x.shape), dtype=x.dtype))
    return out, (x.shape, max_pool_winner(x, out, xp.empty(out.shape, dtype=xp.int8)))


def max_pool_backward(dout, cache):
    """The window's output gradient flows to its winning input only."""
    xp = get_array_module(dout)
    shape, winner = cache
    return pool_backward_into("max", dout, xp.empty(shape, dtype=dout.dtype), winner=winner)


POOLING = {
    "avg": (avg_pool_forward, avg_pool_backward),
    "max": (max_pool_forward, max_pool_backward),
}
