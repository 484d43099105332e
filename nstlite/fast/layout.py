"""The channels-last, zero-padded buffers that every fast kernel reads and writes.

A map of C channels and size h x w lives in a *padded buffer* of shape (Hp, Wp, C), channels
last, with the map in ``buf[1:h+1, 1:w+1]`` and zeros everywhere else: the zeros are the
convolution's padding. Hp and Wp are rounded up so that a tiling by 4x4 output tiles fits (the
Winograd kernel's 6x6 windows, stride 4): every kernel reads its input straight from such a
buffer (no padding copy, no im2col) and writes its output straight into the interior of the
next layer's buffer, through ``write_out``.
"""
from ..backend import get_array_module

TILE = 4    # side of Winograd's output tile F(4x4, 3x3): the buffers' rounding unit


def tiles(n: int) -> int:
    """Number of 4-wide output tiles covering n pixels."""
    return -(-n // TILE)


def padded_shape(h: int, w: int, c: int) -> tuple:
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


def write_out(xp, src, dst, bias, relu, mask):
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
