"""One conv layer's kernel choice and weight forms, and the registry of conv kernels by name.

Kernel names (the ``kernel`` argument everywhere): ``"reference"`` is the plain conv of
``nstlite.layers`` (the oracle); ``"winograd"`` and ``"shifted_gemm"`` force one fast kernel;
``"auto"`` (the default) picks per layer and map size (``use_winograd``), and reads the image
of conv1_1 by im2col.
"""
import numpy as np

from .. import layers
from ..backend import get_array_module
from ..errors import NstliteError
from .gemm import (gemm_weights, im2col_adjoint_scratch, im2col_conv, im2col_conv_adjoint, im2col_rows,
                   im2col_scratch, im2col_weights, shifted_gemm_adjoint_rows, shifted_gemm_adjoint_scratch,
                   shifted_gemm_conv, shifted_gemm_conv_adjoint, shifted_gemm_rows, shifted_gemm_scratch)
from .layout import padded_shape, tiles, to_padded
from .winograd import (ALPHA, winograd_conv, winograd_conv_adjoint, winograd_scratch,
                       winograd_tile_rows, winograd_weights)
from .workspace import BLOCK_BYTES, Workspace

KERNELS = ("reference", "auto", "winograd", "shifted_gemm")
DEFAULT_KERNEL = "auto"
FAST_KERNELS = KERNELS[1:]  # the kernels of the channels-last path
IM2COL_MAX_CHANNELS = 4  # an image (conv1_1): columns of 9 C_in + 1 rows
WINOGRAD_MIN_TILES = 16  # a 16x16 map; on smaller ones the transforms cost more than they save


def check_kernel(kernel: "str | None") -> str:
    """The kernel name for ``kernel`` (None: ``DEFAULT_KERNEL``); a one-line error for an
    unknown one."""
    kernel = DEFAULT_KERNEL if kernel is None else kernel
    if kernel not in KERNELS:
        raise NstliteError(f"unknown conv kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    return kernel


def use_winograd(c_in: int, c_out: int, h: int, w: int) -> bool:
    """Winograd pays where the 36 GEMMs dominate the tile transforms: both channel counts at
    least 16 (every VGG19 conv but conv1_1) and a map of at least ``WINOGRAD_MIN_TILES``
    tiles (the crossover measured in ``docs/performance.md``)."""
    return c_in >= 16 and c_out >= 16 and tiles(h) * tiles(w) >= WINOGRAD_MIN_TILES


class ConvPlan:
    """One 3x3 conv layer's forward and input-gradient passes on padded channels-last buffers.

    Chooses the kernel per call from the map size and keeps each kernel's form of the
    weights, made on first use. Both directions share one weight form per kernel: the input
    gradients are the adjoints of the forward algorithms.

    Parameters
    ----------
    w : (C_out, C_in, 3, 3) kernel
    b : (C_out,) bias
    kernel : 'auto' (``use_winograd`` decides; im2col for an image), 'winograd' or 'shifted_gemm'
    """

    def __init__(self, w, b, kernel: str = "auto"):
        if kernel not in FAST_KERNELS:
            raise NstliteError(f"unknown fast conv kernel {kernel!r}; choose one of {', '.join(FAST_KERNELS)}")
        self.c_out, self.c_in = w.shape[:2]
        self.w, self.bias, self.kernel = w, b, kernel
        self._weights = {}

    def method_for(self, h: int, w: int) -> str:
        """'winograd' or 'shifted_gemm': the kernel for a map of h x w."""
        if self.kernel == "auto":
            return "winograd" if use_winograd(self.c_in, self.c_out, h, w) else "shifted_gemm"
        return self.kernel

    def reads_image(self) -> bool:
        """True when the layer reads a (C, H, W) image directly by ``im2col_conv`` (a few
        input channels, kernel choice 'auto'): conv1_1."""
        return self.kernel == "auto" and self.c_in <= IM2COL_MAX_CHANNELS

    def form_for(self, h: int, w: int) -> str:
        """The kernel that runs this layer on an h x w map, forward and backward: 'im2col'
        (the image, ``reads_image``), 'winograd' or 'shifted_gemm'."""
        return "im2col" if self.reads_image() else self.method_for(h, w)

    @property
    def forms(self):
        """The weight forms made so far (one per kernel that has run), in order."""
        return tuple(self._weights)

    def weights_shape(self, form: str):
        """Shape of the kernel in ``form``'s form (what ``weights(form)`` returns)."""
        c_in, c_out = self.c_in, self.c_out
        return {"winograd": (ALPHA * ALPHA, c_in, c_out), "shifted_gemm": (3, 3 * c_in, c_out),
                "im2col": (9 * c_in + 1, c_out)}[form]

    def weights(self, form: str):
        """The kernel in ``form``'s form: U (36, C_in, C_out), taps (3, 3*C_in, C_out) or
        im2col rows (9*C_in + 1, C_out)."""
        wk = self._weights.get(form)
        if wk is None:
            if form == "im2col":
                wk = im2col_weights(self.w, self.bias)
            else:
                wk = (winograd_weights if form == "winograd" else gemm_weights)(self.w)
            self._weights[form] = wk
        return wk

    def adjoint_weights(self, form: str):
        """The transposed kernel the input-gradient GEMMs read, in C order, or None.

        On NumPy None: BLAS reads the transposed views of ``weights(form)`` for free. On CuPy,
        whose matmul copies every operand that is not C-contiguous, one transposed copy per
        layer, made on first use, instead of a copy of the kernel in every block:
        Winograd (36, C_out, C_in), shifted GEMM (3, 3, C_out, C_in), im2col (C_out, 9 C_in)."""
        wk = self.weights(form)
        xp = get_array_module(wk)
        if xp is np:
            return None
        key = form + " transposed"
        wt = self._weights.get(key)
        if wt is None:
            if form == "winograd":
                wt = xp.ascontiguousarray(wk.transpose(0, 2, 1))
            elif form == "im2col":  # the taps without the bias row
                wt = xp.ascontiguousarray(wk[:9 * self.c_in].T)
            else:  # (3, 3 C_in, C_out) -> (3, 3, C_in, C_out) -> (3, 3, C_out, C_in)
                wt = xp.ascontiguousarray(wk.reshape(3, 3, self.c_in, self.c_out).transpose(0, 1, 3, 2))
            self._weights[key] = wt
        return wt

    def workspace_shapes(self, h: int, w: int, itemsize: int, block_bytes: int = BLOCK_BYTES):
        """The workspace views (shapes) the forward and the backward pass take on an h x w map
        in blocks of ``block_bytes`` (the workspace's), as two lists (the largest block's; the
        workspace holds the larger of the two sums)."""
        c_in, c_out = self.c_in, self.c_out
        form = self.form_for(h, w)
        wp = padded_shape(h, w, c_in)[1]
        if form == "im2col":
            rows = im2col_rows(h, wp, c_in, c_out, itemsize, block_bytes)
            return im2col_scratch(h, w, c_in, c_out, rows), im2col_adjoint_scratch(h, w, c_in, rows)
        if form == "winograd":
            nb = min(winograd_tile_rows(h, w, c_in, c_out, itemsize, block_bytes), tiles(h))
            return winograd_scratch(nb, w, c_in, c_out), winograd_scratch(nb, w, c_out, c_in)
        m_fwd = min(shifted_gemm_rows(h, wp, c_in, c_out, itemsize, block_bytes), h) * wp
        m_bwd = min(shifted_gemm_adjoint_rows(h, wp, c_in, itemsize, block_bytes), h) * wp
        return shifted_gemm_scratch(m_fwd, c_in, c_out), shifted_gemm_adjoint_scratch(m_bwd, c_in)

    def forward_image(self, x, out, ws, relu=True):
        """out (h, w, C_out) <- relu(conv(x) + b) for a (C_in, h, w) image (``im2col_conv``)."""
        return im2col_conv(x, self.weights("im2col"), out, ws=ws, relu=relu)

    def backward_image(self, dpad, h, w, ws):
        """The image's gradient (C_in, h, w) for the output gradient in padded ``dpad``."""
        return im2col_conv_adjoint(dpad, self.weights("im2col"), h, w, ws=ws, taps_t=self.adjoint_weights("im2col"))

    def forward(self, xpad, out, h, w, ws, relu=True):
        """out (h, w, C_out) <- relu(conv(x) + b), x the map in the padded buffer ``xpad``."""
        method = self.method_for(h, w)
        run = winograd_conv if method == "winograd" else shifted_gemm_conv
        return run(xpad, self.weights(method), out, h, w, bias=self.bias, relu=relu, ws=ws)

    def backward(self, dpad, dx, h, w, ws, mask=None):
        """dx (h, w, C_in) <- the input gradient for the output gradient in the padded buffer
        ``dpad`` (times ``mask > 0`` when a mask is given)."""
        method = self.method_for(h, w)
        transposed = self.adjoint_weights(method)
        if method == "winograd":
            return winograd_conv_adjoint(dpad, self.weights(method), dx, h, w, mask=mask, ws=ws, Ut=transposed)
        return shifted_gemm_conv_adjoint(dpad, self.weights(method), dx, h, w, mask=mask, ws=ws, taps_t=transposed)


# ----------------------------------------------------------------------------- the registry
# The (C, H, W) forward/backward pairs of every kernel: the fast kernels with the layout
# conversion at the edges, so that the gradient checks and the layer tests see them exactly
# like the reference kernel.
def _layer_kernel(kernel):
    def forward(x, w, b):
        xp = get_array_module(x)
        c, h, wd = x.shape
        plan = ConvPlan(w.astype(x.dtype, copy=False), b.astype(x.dtype, copy=False), kernel)
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

    forward.__name__ = f"conv3x3_forward_{kernel}"
    backward.__name__ = f"conv3x3_backward_{kernel}"
    forward.__doc__ = (f"3x3 conv (stride 1, pad 1) + bias by the {kernel!r} kernel of nstlite.fast; "
                       "x (C_in, H, W) -> (out (C_out, H, W), cache).")
    backward.__doc__ = f"Input gradient of the {kernel!r} kernel: dout (C_out, H, W) -> dx (C_in, H, W)."
    return forward, backward


# name -> (forward, backward) on (C, H, W) arrays; "auto" picks per call (``use_winograd``).
CONV_KERNELS = {"reference": (layers.conv3x3_forward_reference, layers.conv3x3_backward_reference),
                **{name: _layer_kernel(name) for name in FAST_KERNELS}}
