"""VGG19's feature part (16 conv + 5 pooling layers, no fully connected layers) with a
hand-written backward pass to the input image.

Names follow the paper and Gatys' code: ``conv{b}_{i}`` is the *rectified* response of the
i-th convolution of block b (conv followed by ReLU), ``pool{b}`` the pooled map of block b.
The same strings name the groups of the weights file and the CLI options.
"""
from __future__ import annotations

import numpy as np

from . import layers as L
from .backend import to_device, to_host, xp_for
from .errors import NstliteError
from .fast.channels_last import ChannelsLastPath
from .fast.plan import check_kernel
from .weights import VGG19_BLOCKS, VGG19_CONV_LAYERS, preprocessing_attrs, read_weights

# The 21 layers in order: conv1_1, conv1_2, pool1, conv2_1, ..., conv5_4, pool5.
VGG19_LAYERS = tuple(
    name
    for b, n in enumerate(VGG19_BLOCKS)
    for name in [f"conv{b + 1}_{i + 1}" for i in range(n)] + [f"pool{b + 1}"]
)


class VGG19:
    """VGG19 features with frozen weights.

    Parameters
    ----------
    params : dict conv name -> (weight (out, in, 3, 3), bias (out,)); a prefix of VGG19's
        conv layers is enough (the network then ends at the first missing one).
    attrs : preprocessing attributes of the weights file, validated by
        ``nstlite.weights.preprocessing_attrs``; ``None`` (or a missing key) means Caffe's
        convention (BGR, 0..255, ``CAFFE_MEAN``, std 1).
    pooling : 'avg' (the paper's choice) or 'max'.
    device : 'cpu' (NumPy) or 'gpu' (CuPy).
    dtype : 'float32' (default) or 'float64' (gradient checks).
    kernel : 'reference', 'auto' (None: the default), 'winograd' or 'shifted_gemm'.
        ``'reference'`` runs the layer-by-layer path of ``nstlite.layers`` on (C, H, W) arrays
        (``ReferencePath``, the oracle); the others run the channels-last path of
        ``nstlite.fast`` (``ChannelsLastPath``) with that conv kernel.

    The network delegates to its path: ``forward``, ``backward``, ``activation_pattern``,
    ``features_writable`` and ``memory_bytes`` are the path's. ``forward`` returns arrays that
    may live in buffers reused by the next ``forward``: copy what must outlive it.
    """

    def __init__(self, params, attrs=None, pooling: str = "avg", device: str = "cpu", dtype: str = "float32",
                 kernel: str | None = None):
        if pooling not in L.POOLING:
            raise NstliteError(f"unknown pooling {pooling!r}; choose avg or max")
        self.xp = xp_for(device)
        self.device = device
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise NstliteError(f"dtype must be float32 or float64, not {dtype}")
        self.pooling = pooling
        self.kernel = check_kernel(kernel)

        # Keep VGG19's layer order, ending at the first conv layer that has no weights.
        self.layer_names = []
        self.weights = {}
        c_in = 3
        for name in VGG19_LAYERS:
            if name.startswith("conv"):
                if name not in params:
                    break
                w, b = params[name]
                if w.shape[1:] != (c_in, 3, 3) or b.shape != (w.shape[0],):
                    raise NstliteError(f"{name}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not fit "
                                       f"an input of {c_in} channels")
                self.weights[name] = (to_device(w, device, self.dtype), to_device(b, device, self.dtype))
                c_in = w.shape[0]
            self.layer_names.append(name)
        if not self.weights:
            raise NstliteError("no conv layers given")

        self.channel_order, self.input_scale, self.mean, self.std = preprocessing_attrs(attrs)
        self._computed = None  # the layers the last forward ran, in order
        self.path = ReferencePath(self) if self.kernel == "reference" else ChannelsLastPath(self, self.kernel)

    @property
    def workspace(self):
        """The engine's workspace (its threads and scratch) on the fast path, which the fused
        losses may use for their products; None on the reference path."""
        return getattr(self.path, "ws", None)

    @property
    def features_writable(self) -> bool:
        """True when ``forward`` hands out copies that nothing else reads (the channels-last
        path's): the caller may overwrite them, e.g. with the loss gradients, until the next
        forward. The reference path hands out the activations its backward pass reads."""
        return self.path.features_writable

    def memory_bytes(self, height: int, width: int, layers, loss_layers) -> int:
        """The network's own resident bytes for one evaluation (forward to ``layers``, then
        backward) of a height x width input, from the layout of the path that runs it:
        weights in their kernels' forms, buffers and workspace, masks, and the feature maps
        of ``loss_layers`` handed out. The optimiser's memory is the caller's to add."""
        layers = [layers] if isinstance(layers, str) else list(layers)
        loss_layers = [loss_layers] if isinstance(loss_layers, str) else list(loss_layers)
        if not layers:
            raise NstliteError("no layers requested")
        self._depth(layers + loss_layers)  # one-line error for an unknown name
        return self.path.memory_bytes(height, width, layers, loss_layers)

    # ----------------------------------------------------------------- input conversion
    def preprocess(self, rgb):
        """H x W x 3 RGB image (uint8, or floats in 0..255) -> (3, H, W) network input on the
        net's device: scaled to the file's input range, reordered to its channel order, minus
        mean, divided by std."""
        rgb = np.asarray(to_host(rgb))
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise NstliteError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
        x = rgb.astype(np.float64)  # the arithmetic in float64, in place on this one copy
        x *= self.input_scale / 255.0
        if self.channel_order == "BGR":
            x = x[:, :, ::-1]
        x -= self.mean
        x /= self.std
        # cast to the net's dtype in the reordering copy (no second float64 image)
        return to_device(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=self.dtype), self.device)

    def deprocess_float(self, x):
        """(3, H, W) network input -> H x W x 3 RGB float64 host array in 0..255 (unclipped)."""
        x = to_host(x).astype(np.float64).transpose(1, 2, 0)
        x = x * self.std + self.mean
        if self.channel_order == "BGR":
            x = x[:, :, ::-1]
        return x * (255.0 / self.input_scale)

    def deprocess(self, x):
        """(3, H, W) network input -> H x W x 3 uint8 RGB host array (rounded, clipped)."""
        return np.clip(np.rint(self.deprocess_float(x)), 0, 255).astype(np.uint8)

    def input_bounds(self):
        """(low, high), each (3,) float64 in network channel order: the network-input values
        of pixel values 0 and 255, for box-constrained optimisation."""
        low = (0.0 - self.mean) / self.std
        high = (self.input_scale - self.mean) / self.std
        return low, high

    def map_size(self, name, height, width):
        """(H', W') of layer ``name``'s response to an input of height x width (each 2x2 pool
        halves, rounding down)."""
        self._depth([name])
        for n in self.layer_names[: self.layer_names.index(name) + 1]:
            if n.startswith("pool"):
                height, width = height // 2, width // 2
        return height, width

    def channels(self, name) -> int:
        """N_l of layer ``name``'s response: the filters of the last conv at or before it."""
        self._depth([name])
        convs = [n for n in self.layer_names[: self.layer_names.index(name) + 1] if n.startswith("conv")]
        return int(self.weights[convs[-1]][0].shape[0])

    # ----------------------------------------------------------------- forward / backward
    def _depth(self, names):
        unknown = [n for n in names if n not in self.layer_names]
        if unknown:
            raise NstliteError(f"unknown layer(s) {', '.join(unknown)}; this network has "
                               f"{', '.join(self.layer_names)}")
        return max(self.layer_names.index(n) for n in names)

    def _check_size(self, height, width, depth):
        """One-line errors for inputs too small for the requested depth."""
        for name in self.layer_names[: depth + 1]:
            if name.startswith("conv") and min(height, width) < 1:
                raise NstliteError(f"input too small: nothing left at {name}")
            if name.startswith("pool"):
                if min(height, width) < 2:
                    raise NstliteError(f"input too small for {name}: a map of {height}x{width} "
                                       "cannot be pooled 2x2 (VGG19 needs at least 16x16 for pool4)")
                height, width = height // 2, width // 2

    def _check_crops(self, crops, height, width, depth):
        """One-line errors for a crop schedule that names a layer the forward does not run, is
        not four non-negative integers, or leaves a map empty."""
        ran = self.layer_names[: depth + 1]
        for name, crop in crops.items():
            if name not in ran:
                raise NstliteError(f"cannot crop {name}: the forward stops at {ran[-1]}")
            if len(crop) != 4 or any(int(c) != c or c < 0 for c in crop):
                raise NstliteError(f"the crop of {name} must be 4 non-negative integers (top, bottom, left, "
                                   f"right), not {tuple(crop)}")
        for name in ran:
            if name.startswith("pool"):
                height, width = height // 2, width // 2
            top, bottom, left, right = crops.get(name, (0, 0, 0, 0))
            height, width = height - top - bottom, width - left - right
            if min(height, width) < 1:
                raise NstliteError(f"the crop of {name} leaves nothing of its map")

    def forward(self, x, layers, crops=None):
        """Responses of the requested layers to the input ``x`` (3, H, W).

        Computes only up to the deepest requested layer and records what ``backward`` needs.
        Returns dict name -> (C, H', W') array.

        crops : optional schedule {layer: (top, bottom, left, right)}: the rows and columns
            dropped from that layer's response before the next layer reads it (the next layer
            sees ordinary zero padding at the cropped border). The response handed out is the
            cropped one; ``backward`` takes gradients of the cropped maps. ``nstlite.tiled``
            uses it to shrink a tile's maps to what its inner responses need.
        """
        layers = [layers] if isinstance(layers, str) else list(layers)
        if not layers:
            raise NstliteError("no layers requested")
        depth = self._depth(layers)
        if x.ndim != 3 or x.shape[0] != 3:
            raise NstliteError(f"network input must have shape (3, H, W), got {tuple(x.shape)}")
        self._check_size(x.shape[1], x.shape[2], depth)
        crops = {n: tuple(c) for n, c in (crops or {}).items() if any(c)}
        self._check_crops(crops, x.shape[1], x.shape[2], depth)
        feats = self.path.forward(x, layers, depth, crops)
        self._computed = self.layer_names[: depth + 1]
        return feats

    def backward(self, grads):
        """Gradient of a loss with respect to the last forward's input.

        grads : dict layer name -> dL/d(response of that layer), for layers of the last forward.
        Walks the layers in reverse; where a layer has an incoming loss gradient it is *added*
        to the gradient arriving from above, so losses at several layers sum correctly.
        Returns dL/dx, shape (3, H, W).
        """
        if self._computed is None:
            raise NstliteError("backward called before forward")
        if not grads:
            raise NstliteError("no gradients given")
        for n in grads:
            if n not in self._computed:
                raise NstliteError(f"no gradient can flow from {n}: the last forward stopped at {self._computed[-1]}")
        return self.path.backward(grads)

    def activation_pattern(self):
        """The piecewise-linear state of the last forward: every ReLU's on/off mask (and every
        max-pool's winning taps), in layer order, as (C, h, w) arrays. Gradient checks compare
        it at x +- h*d to make sure a finite difference did not cross a kink."""
        return self.path.activation_pattern()


class ReferencePath:
    """VGG19 layer by layer with ``nstlite.layers`` on (C, H, W) arrays: the oracle.

    The forward keeps each layer's cache (a tape, in order); the backward walks it in reverse.
    """

    #: ``forward`` hands out the activations that the backward pass reads: not to be overwritten.
    features_writable = False

    def __init__(self, net):
        self.net = net
        self.tape = []  # (name, cache, keep) of the last forward, in order; keep: see forward

    def forward(self, x, layers, depth, crops=None):
        """Responses (C, h, w) of ``layers`` to x (3, H, W), computing the first depth + 1
        layers; a layer in ``crops`` hands its kept window on to the next (``VGG19.forward``)."""
        h = x.astype(self.net.dtype, copy=False)
        pool_forward, _ = L.POOLING[self.net.pooling]
        tape, feats, crops = [], {}, crops or {}
        for name in self.net.layer_names[: depth + 1]:
            if name.startswith("conv"):
                w, b = self.net.weights[name]
                pre, conv_cache = L.conv3x3_forward_reference(h, w, b)
                h, relu_cache = L.relu_forward(pre)
                cache = (conv_cache, relu_cache)
            else:
                h, cache = pool_forward(h)
            keep = None  # or (the uncropped map's shape, the kept window's slices)
            if name in crops:
                top, bottom, left, right = crops[name]
                keep = (h.shape, (slice(None), slice(top, h.shape[1] - bottom), slice(left, h.shape[2] - right)))
                h = h[keep[1]]  # the next layer zero-pads this window as it would a whole map
            tape.append((name, cache, keep))
            if name in layers:
                feats[name] = h
        self.tape = tape
        return feats

    def backward(self, grads):
        """dL/dx (3, H, W) for grads {layer: dL/d(response)} of layers of the last forward."""
        names = [n for n, *_ in self.tape]
        depth = max(names.index(n) for n in grads)
        _, pool_backward = L.POOLING[self.net.pooling]
        g = None
        for name, cache, keep in reversed(self.tape[: depth + 1]):
            if name in grads:
                g = grads[name] if g is None else g + grads[name]
            if g is None:
                continue
            if keep is not None:  # nothing read the dropped positions: their gradient is 0
                full = self.net.xp.zeros(keep[0], dtype=g.dtype)
                full[keep[1]] = g
                g = full
            if name.startswith("conv"):
                conv_cache, relu_cache = cache
                g = L.conv3x3_backward_reference(L.relu_backward(g, relu_cache), conv_cache)
            else:
                g = pool_backward(g, cache)
        return g

    def activation_pattern(self):
        """Every ReLU's mask ``out > 0`` (on the kept window of a cropped layer, as the
        channels-last path keeps it) and, for max pooling, every window's winner."""
        pattern = []
        for name, cache, keep in self.tape:
            if name.startswith("conv"):
                mask = cache[1] > 0
                pattern.append(mask if keep is None else mask[keep[1]])
            elif self.net.pooling == "max":
                pattern.append(cache[1])
        return pattern

    def memory_bytes(self, height, width, layers, loss_layers):
        """Bytes of one evaluation: every layer's output (kept on the tape; the ReLU output is
        its mask, and the feature maps handed out are these same arrays), max pooling's int8
        winners, the network kernels of the layers that run, and at the peak the temporaries of
        one layer: the zero-padded input, the output and one product (forward), or the masked
        gradient, the padded input gradient and its products (backward)."""
        net, itemsize = self.net, self.net.dtype.itemsize
        deepest = max(net.layer_names.index(n) for n in layers)
        total, peak, h, w, c = 3 * height * width * itemsize, 0, height, width, 3
        for name in net.layer_names[: deepest + 1]:
            if name.startswith("conv"):
                c_in, c = c, net.weights[name][0].shape[0]
                total += net.weights[name][0].nbytes + net.weights[name][1].nbytes
                forward = c_in * (h + 2) * (w + 2) + 2 * c * h * w
                backward = 3 * c * h * w + c_in * (h + 2) * (w + 2) + 2 * c_in * h * w
                peak = max(peak, forward * itemsize, backward * itemsize)
            else:
                h, w = h // 2, w // 2
                if net.pooling == "max":
                    total += c * h * w  # int8 winner
            total += c * h * w * itemsize
        return int(total + peak)


def load_vgg19(path=None, pooling: str = "avg", device: str = "cpu", dtype: str = "float32",
               kernel: str | None = None, layers=None) -> VGG19:
    """VGG19 from an nstlite weights file (``path=None``: ``$NSTLITE_WEIGHTS``, else
    ``~/.cache/nstlite/vgg19.h5``). A missing file raises a one-line error saying how to get it.

    layers : the layer names the network will be asked for (None: all). Only the conv layers
    up to the deepest of them are read, so deeper weights take no memory.
    """
    last = _last_conv_for(layers) if layers else None
    params, attrs = read_weights(path, last=last, mapped=True)
    needed = VGG19_CONV_LAYERS if last is None else VGG19_CONV_LAYERS[: VGG19_CONV_LAYERS.index(last) + 1]
    missing = [n for n in needed if n not in params]
    net = VGG19(params, attrs, pooling=pooling, device=device, dtype=dtype, kernel=kernel)
    net.missing_layers = missing
    return net


def _last_conv_for(layers):
    """The deepest conv layer a forward to ``layers`` runs (None if a name is not VGG19's: the
    network is then built whole and reports the unknown name itself)."""
    if any(n not in VGG19_LAYERS for n in layers):
        return None
    deepest = max(VGG19_LAYERS.index(n) for n in layers)
    return [n for n in VGG19_LAYERS[: deepest + 1] if n.startswith("conv")][-1]
