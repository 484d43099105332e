"""VGG19's layers as forward/backward pairs, on one image of shape (C, H, W).

Each ``*_forward`` returns ``(out, cache)``; the matching ``*_backward(dout, cache)`` returns
``dx``, the gradient with respect to the layer *input* only: the network's weights are frozen
during style transfer, so their gradients are never computed. dtype follows the input
(float32 in use, float64 in the gradient checks). All array code uses ``xp``, the array module
of the input (NumPy or CuPy), so the same lines run on CPU and GPU.

Convolution kernels are chosen by name from ``CONV_KERNELS``. ``"reference"`` is the plain,
obviously-correct implementation below and the oracle every faster kernel is tested against.
"""
from . import conv_fast
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


# Registry of convolution kernels: name -> (forward, backward). Faster kernels register here
# (see ``nstlite.conv_fast``) and are tested against "reference".
CONV_KERNELS = {
    "reference": (conv3x3_forward_reference, conv3x3_backward_reference),
    **conv_fast.KERNELS,  # "shifted_gemm", "winograd", "fast" (channels-last GEMM / Winograd kernels)
}
DEFAULT_CONV_KERNEL = "fast"  # channels-last path (nstlite.conv_fast); "reference" is the oracle


def get_conv_kernel(name=None):
    """(forward, backward) for a kernel name; ``None`` gives the default."""
    name = DEFAULT_CONV_KERNEL if name is None else name
    try:
        return CONV_KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown conv kernel {name!r}; available: {', '.join(sorted(CONV_KERNELS))}")


def conv3x3_forward(x, w, b, kernel=None):
    """3x3 convolution with the named kernel; returns ``(out, cache)``."""
    forward, _ = get_conv_kernel(kernel)
    out, cache = forward(x, w, b)
    return out, (kernel, cache)


def conv3x3_backward(dout, cache):
    """Input gradient of ``conv3x3_forward`` using the same kernel as the forward."""
    kernel, inner = cache
    _, backward = get_conv_kernel(kernel)
    return backward(dout, inner)


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
def _pool_crop(x):
    """The part of x covered by 2x2 windows with stride 2 (odd last row/column dropped, as
    in PyTorch's default floor mode)."""
    c, h, w = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2]


def avg_pool_forward(x):
    """2x2 average pooling, stride 2 - the paper's replacement for max pooling.

    x : (C, H, W) -> out : (C, H//2, W//2), each output the mean of its 2x2 window.
    """
    xc = _pool_crop(x)
    c, h, w = xc.shape
    out = xc.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return out, x.shape


def avg_pool_backward(dout, cache):
    """Each input pixel of a window receives a quarter of the window's output gradient;
    pixels in a dropped odd row/column receive zero."""
    xp = get_array_module(dout)
    c, h, w = cache
    dx = xp.zeros((c, h, w), dtype=dout.dtype)
    ho, wo = dout.shape[1], dout.shape[2]
    quarter = dout * 0.25
    for i in range(2):
        for j in range(2):
            dx[:, i:2 * ho:2, j:2 * wo:2] = quarter
    return dx


def max_pool_forward(x):
    """2x2 max pooling, stride 2 (VGG's original pooling; an option here).

    Returns ``(out, cache)`` with cache = (input shape, index 0..3 of the winning tap per window).
    Ties go to the first tap in row-major window order.
    """
    xp = get_array_module(x)
    xc = _pool_crop(x)
    c, h, w = xc.shape
    # (C, H/2, W/2, 4): the four taps of every window, row-major
    windows = xc.reshape(c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4).reshape(c, h // 2, w // 2, 4)
    arg = xp.argmax(windows, axis=-1)
    out = xp.take_along_axis(windows, arg[..., None], axis=-1)[..., 0]
    return out, (x.shape, arg)


def max_pool_backward(dout, cache):
    """The window's output gradient flows to its winning input only."""
    xp = get_array_module(dout)
    (c, h, w), arg = cache
    dx = xp.zeros((c, h, w), dtype=dout.dtype)
    ho, wo = dout.shape[1], dout.shape[2]
    for k in range(4):
        i, j = divmod(k, 2)
        dx[:, i:2 * ho:2, j:2 * wo:2] = dout * (arg == k)
    return dx


POOLING = {
    "avg": (avg_pool_forward, avg_pool_backward),
    "max": (max_pool_forward, max_pool_backward),
}
