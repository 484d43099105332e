"""VGG19's feature part (16 conv + 5 pooling layers, no fully connected layers) with a
hand-written backward pass to the input image.

Names follow the paper and Gatys' code: ``conv{b}_{i}`` is the *rectified* response of the
i-th convolution of block b (conv followed by ReLU), ``pool{b}`` the pooled map of block b.
The same strings name the groups of the weights file and the CLI options.
"""
import numpy as np

from . import conv_fast as CF
from . import layers as L
from .backend import to_device, to_host, xp_for
from .errors import NstliteError
from .weights import VGG19_BLOCKS, VGG19_CONV_LAYERS, read_weights, release_pages

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
    attrs : preprocessing attributes of the weights file (see ``nstlite.weights``); ``None``
        means Caffe's convention (BGR, 0..255, ImageNet mean, std 1).
    pooling : 'avg' (the paper's choice) or 'max'.
    device : 'cpu' (NumPy) or 'gpu' (CuPy).
    dtype : 'float32' (default) or 'float64' (gradient checks).
    conv_kernel : name of a kernel in ``nstlite.layers.CONV_KERNELS`` (None: the default).
        ``'reference'`` runs the layer-by-layer path of ``nstlite.layers`` on (C, H, W) arrays
        (the oracle); the kernels of ``nstlite.conv_fast`` ('fast', 'winograd',
        'shifted_gemm') run the channels-last path (``_ChannelsLastPath``).

    ``forward`` returns arrays that may live in buffers reused by the next ``forward``: copy
    what must outlive it.
    """

    def __init__(self, params, attrs=None, pooling="avg", device="cpu", dtype="float32", conv_kernel=None):
        if pooling not in L.POOLING:
            raise NstliteError(f"unknown pooling {pooling!r}; choose avg or max")
        self.xp = xp_for(device)
        self.device = device
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise NstliteError(f"dtype must be float32 or float64, not {dtype}")
        self.pooling = pooling
        self.conv_kernel = conv_kernel
        L.get_conv_kernel(conv_kernel)  # fail early on an unknown kernel name

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

        attrs = attrs or {}
        self.channel_order = str(attrs.get("channel_order", "BGR")).upper()
        self.input_scale = float(attrs.get("input_scale", 255.0))
        self.mean = np.asarray(attrs.get("mean", (103.939, 116.779, 123.68)), dtype=np.float64).reshape(3)
        self.std = np.asarray(attrs.get("std", (1.0, 1.0, 1.0)), dtype=np.float64).reshape(3)
        self._tape = []  # (name, caches) of the last forward, in order
        kernel_name = L.DEFAULT_CONV_KERNEL if conv_kernel is None else conv_kernel
        self._fast = None
        if kernel_name in CF.METHODS:
            self._fast = _ChannelsLastPath(self, CF.METHODS[kernel_name])
        # True when ``forward`` hands out copies that nothing else reads (the channels-last
        # path's): the caller may overwrite them, e.g. with the loss gradients, until the next
        # forward. The reference path hands out the activations its backward pass reads.
        self._features_writable = self._fast is not None

    @property
    def features_writable(self):
        """True when ``forward`` hands out copies that nothing else reads: the caller may
        overwrite them (with the loss gradients, say) until the next ``forward``."""
        return self._features_writable

    def memory_bytes(self, height, width, layers, loss_layers):
        """The network's own resident bytes for one evaluation (forward to ``layers``, then
        backward) of a height x width input, from the layout of the path that runs it:
        weights in their kernels' forms, buffers and workspace, masks, and the feature maps
        of ``loss_layers`` handed out. The optimiser's memory is the caller's to add."""
        if self._fast is not None:
            return self._fast.memory_bytes(height, width, layers, loss_layers)
        return self._reference_memory_bytes(height, width, layers)

    def _reference_memory_bytes(self, height, width, layers):
        """The reference path keeps every layer's output (the ReLU output is the mask;
        max pooling adds its winners, int64) and its network kernels, and at its peak the
        temporaries of one layer: the zero-padded input, the output and one product."""
        itemsize = self.dtype.itemsize
        names = self.layer_names[: self._depth(list(layers)) + 1]
        total, peak, h, w, c = 3 * height * width * itemsize, 0, height, width, 3
        for name in names:
            if name.startswith("conv"):
                c_in, c = c, self.weights[name][0].shape[0]
                total += self.weights[name][0].nbytes + self.weights[name][1].nbytes
                forward = c_in * (h + 2) * (w + 2) + 2 * c * h * w
                backward = 3 * c * h * w + c_in * (h + 2) * (w + 2) + 2 * c_in * h * w
                peak = max(peak, forward * itemsize, backward * itemsize)
            else:
                h, w = h // 2, w // 2
                if self.pooling == "max":
                    total += 8 * c * h * w
            total += c * h * w * itemsize
        return int(total + peak)

    # ----------------------------------------------------------------- input conversion
    def preprocess(self, rgb):
        """H x W x 3 RGB image (uint8, or floats in 0..255) -> (3, H, W) network input on the
        net's device: scaled to the file's input range, reordered to its channel order, minus
        mean, divided by std."""
        rgb = np.asarray(to_host(rgb))
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise NstliteError(f"expected an H x W x 3 RGB image, got shape {rgb.shape}")
        x = rgb.astype(np.float64) * (self.input_scale / 255.0)
        if self.channel_order == "BGR":
            x = x[:, :, ::-1]
        x = (x - self.mean) / self.std
        return to_device(np.ascontiguousarray(x.transpose(2, 0, 1)), self.device, self.dtype)

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

    def forward(self, x, layers):
        """Responses of the requested layers to the input ``x`` (3, H, W).

        Computes only up to the deepest requested layer and records what ``backward`` needs.
        Returns dict name -> (C, H', W') array.
        """
        layers = [layers] if isinstance(layers, str) else list(layers)
        if not layers:
            raise NstliteError("no layers requested")
        depth = self._depth(layers)
        if x.ndim != 3 or x.shape[0] != 3:
            raise NstliteError(f"network input must have shape (3, H, W), got {tuple(x.shape)}")
        self._check_size(x.shape[1], x.shape[2], depth)
        if self._fast is not None:
            feats = self._fast.forward(x, layers, depth)
            self._tape = [(name, None) for name in self.layer_names[: depth + 1]]  # the layers computed
            return feats
        h = x.astype(self.dtype, copy=False)
        pool_forward, _ = L.POOLING[self.pooling]
        tape, feats = [], {}
        for name in self.layer_names[: depth + 1]:
            if name.startswith("conv"):
                w, b = self.weights[name]
                pre, conv_cache = L.conv3x3_forward(h, w, b, kernel=self.conv_kernel)
                h, relu_cache = L.relu_forward(pre)
                tape.append((name, (conv_cache, relu_cache)))
            else:
                h, pool_cache = pool_forward(h)
                tape.append((name, pool_cache))
            if name in layers:
                feats[name] = h
        self._tape = tape
        return feats

    def backward(self, grads):
        """Gradient of a loss with respect to the last forward's input.

        grads : dict layer name -> dL/d(response of that layer), for layers of the last forward.
        Walks the layers in reverse; where a layer has an incoming loss gradient it is *added*
        to the gradient arriving from above, so losses at several layers sum correctly.
        Returns dL/dx, shape (3, H, W).
        """
        if self._fast is not None:
            return self._fast.backward(grads)
        if not self._tape:
            raise NstliteError("backward called before forward")
        names = [n for n, _ in self._tape]
        for n, g in grads.items():
            if n not in names:
                raise NstliteError(f"no gradient can flow from {n}: the last forward stopped at {names[-1]}")
        depth = max(names.index(n) for n in grads)
        _, pool_backward = L.POOLING[self.pooling]
        g = None
        for name, cache in reversed(self._tape[: depth + 1]):
            if name in grads:
                g = grads[name] if g is None else g + grads[name]
            if g is None:
                continue
            if name.startswith("conv"):
                conv_cache, relu_cache = cache
                g = L.conv3x3_backward(L.relu_backward(g, relu_cache), conv_cache)
            else:
                g = pool_backward(g, cache)
        return g


    def activation_pattern(self):
        """The piecewise-linear state of the last forward: every ReLU's on/off mask (and every
        max-pool's winning taps). Gradient checks compare it at x +- h*d to make sure a finite
        difference did not cross a kink."""
        if self._fast is not None:
            return self._fast.activation_pattern()
        pattern = []
        for name, cache in self._tape:
            if name.startswith("conv"):
                pattern.append(cache[1] > 0)
            elif self.pooling == "max":
                pattern.append(cache[1])
        return pattern


class _ChannelsLastPath:
    """VGG19's forward and input-gradient passes on channels-last buffers.

    Every map lives in a zero-padded (Hp, Wp, C) buffer (``conv_fast.padded_shape``): each
    conv reads its input buffer in place and writes bias + ReLU straight into the interior of
    the next buffer; pooling reads one interior and writes the next. Only two such buffers
    exist, sized for the largest map, used in turn by every layer of the forward pass and
    again by the backward pass (one holds a layer's input, the other its output).

    What the backward pass needs from the forward is kept compactly: each conv layer's ReLU
    mask ``out > 0`` as booleans (eqs. 2 and 6: the paper's "if F > 0" factor) and, for max
    pooling, each window's winning tap. A gradient arriving at a conv layer's output is
    already multiplied by that layer's mask: the kernel or pooling that produced it applied
    the mask while the block was in cache, and a loss gradient is masked as it is added.

    All buffers are allocated for one input size and reused by every evaluation of that size.
    """

    def __init__(self, net, method):
        self.net = net
        self.xp = net.xp
        self.method = method
        self._plans = {}       # conv name -> conv_fast.ConvPlan, made when the layer first runs
        self.ws = CF.Workspace(self.xp)
        self.size = None       # (H, W) the buffers below are for
        self.masks = {}        # conv name -> bool (h, w, C) ReLU mask; max pool name -> int8 winner
        self.features = {}     # layer name -> compact (h, w, C) copy handed out by forward
        self.buffers = []      # the two flat arrays behind every padded map, see _buffer
        self.input_buffer = None
        self.last = None       # (layers computed, input shape) of the last forward

    def plan(self, name):
        """The ConvPlan of conv layer ``name``, made on first use: only layers that run get
        weights in their kernel's form."""
        p = self._plans.get(name)
        if p is None:
            w, b = self.net.weights[name]
            p = self._plans[name] = CF.ConvPlan(w, b, self.method)
        return p

    # --------------------------------------------------------------- buffers
    def _layout(self, height, width):
        """layer name -> (h, w, C) of its response for an input of height x width."""
        out, c = {}, 3
        for name in self.net.layer_names:
            if name.startswith("conv"):
                c = self.net.weights[name][0].shape[0]
            else:
                height, width = height // 2, width // 2
            out[name] = (height, width, c)
        return out

    @staticmethod
    def _buffer_sizes(height, width, layout):
        """Elements of the input buffer and of each of the two ping-pong buffers (as large as
        the largest padded map)."""
        return (int(np.prod(CF.padded_shape(height, width, 3))),
                max(int(np.prod(CF.padded_shape(*hwc))) for hwc in layout.values()))

    def _buffers_for(self, height, width):
        if self.size == (height, width):
            return
        xp, dtype = self.xp, self.net.dtype
        self.masks, self.features, self.buffers = {}, {}, []  # drop the old size's buffers first
        self.layout = self._layout(height, width)
        n_input, n_map = self._buffer_sizes(height, width, self.layout)
        self.input_buffer = xp.zeros(n_input, dtype=dtype).reshape(CF.padded_shape(height, width, 3))
        self.buffers = [xp.zeros(n_map, dtype=dtype) for _ in range(2)]
        self.size = (height, width)

    def memory_bytes(self, height, width, layers, loss_layers):
        """Bytes this path holds for one evaluation (forward to ``layers``, backward) of a
        height x width input: the kernels in the form that runs at each layer's size, the
        workspace (the largest block scratch of any of those kernels), the input buffer and the
        two ping-pong buffers, the ReLU masks (and max pooling's winners), the feature copies
        handed out for ``loss_layers`` and the input gradient. The network's own (C_out, C_in,
        3, 3) kernels count in full unless they are pages of the mapped weights file
        (``nstlite.weights.release_pages``): then only the largest, resident while its kernel
        form is made."""
        itemsize = self.net.dtype.itemsize
        layout = self._layout(height, width)
        names = self.net.layer_names[: self.net._depth(list(layers)) + 1]
        n_input, n_map = self._buffer_sizes(height, width, layout)
        total = (n_input + 2 * n_map + 3 * height * width) * itemsize
        workspace, originals = 0, []
        for name in names:
            h, w, c = layout[name]
            if name.startswith("conv"):
                plan = self.plan(name)
                total += int(np.prod(plan.weights_shape(plan.form_for(h, w)))) * itemsize
                forward, backward = plan.workspace_shapes(h, w, itemsize)
                workspace = max(workspace, *(sum(int(np.prod(s)) for s in shapes) for shapes in (forward, backward)))
                total += h * w * c  # bool ReLU mask
                originals.append(self.net.weights[name][0])
                total += self.net.weights[name][1].nbytes
            elif self.net.pooling == "max":
                total += h * w * c  # int8 winning tap
        total += workspace * itemsize
        total += sum(int(np.prod(layout[n])) * itemsize for n in set(loss_layers))
        mapped = [w.nbytes for w in originals if _is_file_mapped(w)]
        total += sum(w.nbytes for w in originals if not _is_file_mapped(w)) + max(mapped, default=0)
        return int(total)

    def _buffer(self, name, avoid=None):
        """A padded buffer shaped like layer ``name``'s map, in the flat array that does not
        hold ``avoid``, with the border around the map zeroed (the caller writes the whole
        interior; the kernels read the border as the convolution's zero padding)."""
        xp = self.xp
        h, w, c = self.layout[name]
        shape = CF.padded_shape(h, w, c)
        first, second = self.buffers
        flat = second if avoid is not None and xp.may_share_memory(avoid, first) else first
        buf = flat[: int(np.prod(shape))].reshape(shape)
        buf[0] = 0
        buf[h + 1:] = 0
        buf[:, 0] = 0
        buf[:, w + 1:] = 0
        return buf

    def _mask(self, name, shape, dtype):
        m = self.masks.get(name)
        if m is None:
            m = self.masks[name] = self.xp.empty(shape, dtype=dtype)
        return m

    # --------------------------------------------------------------- forward
    def forward(self, x, layers, depth):
        xp = self.xp
        height, width = x.shape[1], x.shape[2]
        self._buffers_for(height, width)
        names = self.net.layer_names[: depth + 1]
        if not self.plan(names[0]).reads_image():  # else conv1_1 reads x itself (im2col)
            CF.interior(self.input_buffer, height, width)[...] = x.transpose(1, 2, 0)
        src, (h, w) = self.input_buffer, (height, width)
        feats = {}
        for name in names:
            hn, wn, c = self.layout[name]
            dst = self._buffer(name, avoid=src)
            out = CF.interior(dst, hn, wn)
            if name.startswith("conv"):
                plan = self.plan(name)
                if src is self.input_buffer and plan.reads_image():
                    plan.forward_image(x.astype(self.net.dtype, copy=False), out, self.ws, relu=True)
                else:
                    plan.forward(src, out, h, w, self.ws, relu=True)
                mask = self._mask(name, out.shape, bool)
                self.ws.parallel(lambda r: xp.greater(out[r], 0, out=mask[r]), hn)
            else:
                inp = CF.interior(src, h, w)
                # output row i reads input rows 2i, 2i + 1: rows split over the threads
                self.ws.parallel(lambda r: _pool_forward(xp, self.net.pooling, inp[2 * r.start:2 * r.stop], out[r]), hn)
                if self.net.pooling == "max":
                    _max_pool_winner(xp, CF.interior(src, h, w), out, self._mask(name, out.shape, xp.int8))
            src, h, w = dst, hn, wn
            if name in layers:
                compact = self.features.get(name)
                if compact is None:
                    compact = self.features[name] = xp.empty((h, w, c), dtype=self.net.dtype)
                self.ws.parallel(lambda r: _copy(compact[r], out[r]), h)
                feats[name] = compact.transpose(2, 0, 1)  # (C, h, w) view of channels-last memory
        self.last = (names, x.shape)
        # The layers' kernels now live in their kernels' own forms (Winograd's U, ...): when
        # the network's weights are views of the mapped weights file, hand their pages back
        # rather than hold every kernel twice (49 MB to conv5_1; read back if ever needed).
        for name in names:
            if name.startswith("conv"):
                release_pages(self.net.weights[name][0])
        return feats

    # --------------------------------------------------------------- backward
    def backward(self, grads):
        if self.last is None:
            raise NstliteError("backward called before forward")
        names, xshape = self.last
        for n in grads:
            if n not in names:
                raise NstliteError(f"no gradient can flow from {n}: the last forward stopped at {names[-1]}")
        xp = self.xp
        depth = max(names.index(n) for n in grads)
        g = None  # padded buffer: dL/d(response) of the current layer, ReLU mask applied for convs
        for i in range(depth, -1, -1):
            name = names[i]
            h, w, _ = self.layout[name]
            below = names[i - 1] if i > 0 else None
            if name in grads:
                g = self._add_loss_gradient(name, g, grads[name])
            if g is None:
                continue
            hb, wb = (self.layout[below][:2] if below else xshape[1:])
            if name.startswith("conv"):
                if below is None:
                    if self.plan(name).reads_image():
                        return self.plan(name).backward_image(g, hb, wb, self.ws)
                    dx = xp.empty((hb, wb, 3), dtype=self.net.dtype)
                    self.plan(name).backward(g, dx, hb, wb, self.ws)
                    return xp.ascontiguousarray(dx.transpose(2, 0, 1))
                dst = self._buffer(below, avoid=g)
                # a conv's input is a pool (no ReLU) or a conv, whose mask is applied here
                mask = self.masks[below] if below.startswith("conv") else None
                self.plan(name).backward(g, CF.interior(dst, hb, wb), hb, wb, self.ws, mask=mask)
            else:
                dst = self._buffer(below, avoid=g)
                dout, din = CF.interior(g, h, w), CF.interior(dst, hb, wb)
                relu_mask, winner = self.masks[below], self.masks.get(name)
                # output row i feeds input rows 2i, 2i + 1: rows split over the threads
                self.ws.parallel(lambda r: _pool_backward(
                    xp, self.net.pooling, dout[r], din[2 * r.start:2 * r.stop], relu_mask[2 * r.start:2 * r.stop],
                    None if winner is None else winner[r]), h)
                if hb > 2 * h:
                    din[2 * h:] = 0  # the row the floor-mode pooling dropped
            g = dst
        raise AssertionError("the walk ends at conv1_1")  # pragma: no cover

    def _add_loss_gradient(self, name, g, grad):
        """g + grad on the layer's map (masked by the ReLU for a conv layer's response)."""
        xp = self.xp
        h, w, _ = self.layout[name]
        grad_cl = grad.transpose(1, 2, 0)  # (h, w, C) view; contiguous when the loss kept the
        # channels-last layout of the map it was given (``nstlite.losses``)
        mask = self.masks[name] if name.startswith("conv") else None
        first = g is None
        if first:
            g = self._buffer(name)
        dst = CF.interior(g, h, w)

        def rows(r):
            if first:
                if mask is None:
                    dst[r] = grad_cl[r]
                else:
                    xp.multiply(grad_cl[r], mask[r], out=dst[r])
            else:
                # the gradient from above is already masked, so masking the sum masks the new term
                xp.add(dst[r], grad_cl[r], out=dst[r])
                if mask is not None:
                    xp.multiply(dst[r], mask[r], out=dst[r])
        self.ws.parallel(rows, h)  # rows split over the threads
        return g

    def activation_pattern(self):
        """As ``VGG19.activation_pattern``, in the same (C, h, w) layout (copies)."""
        if self.last is None:
            return []
        names, _ = self.last
        return [self.masks[n].transpose(2, 0, 1).copy() for n in names
                if n.startswith("conv") or self.net.pooling == "max"]


def _is_file_mapped(a):
    """True for a view of the mapped weights file (``read_weights(mapped=True)``)."""
    import mmap
    while isinstance(a, np.ndarray):
        a = a.base
    if isinstance(a, memoryview):
        a = a.obj
    return isinstance(a, mmap.mmap)


def _copy(dst, src):
    dst[...] = src


def _pool_taps(x, ho, wo):
    """The four (ho, wo, C) views of a 2x2/stride-2 window grid over x (h, w, C), row-major."""
    return [x[i:2 * ho:2, j:2 * wo:2] for i in range(2) for j in range(2)]


def _pool_forward(xp, pooling, x, out):
    """2x2 pooling of the interior x (h, w, C) into out (h//2, w//2, C), in place."""
    a, b, c, d = _pool_taps(x, out.shape[0], out.shape[1])
    if pooling == "avg":
        xp.add(a, b, out=out)
        xp.add(out, c, out=out)
        xp.add(out, d, out=out)
        xp.multiply(out, 0.25, out=out)
    else:
        xp.maximum(a, b, out=out)
        xp.maximum(out, c, out=out)
        xp.maximum(out, d, out=out)


def _max_pool_winner(xp, x, out, winner):
    """winner <- index 0..3 of each window's first maximal tap (ties to the first, as
    ``layers.max_pool_forward``)."""
    winner[...] = 3
    for k, tap in reversed(list(enumerate(_pool_taps(x, out.shape[0], out.shape[1])[:3]))):
        winner[tap == out] = k
    return winner


def _pool_backward(xp, pooling, dout, dx, relu_mask, winner):
    """Gradient of 2x2 pooling: dout (ho, wo, C) -> dx (h, w, C), times the ReLU mask of the
    conv layer below (bool (h, w, C)); ``winner`` is max pooling's winning tap per window. A
    row or column that the floor-mode pooling dropped gets zero. Average pooling scales
    ``dout`` in place (it is the backward pass's own buffer)."""
    ho, wo = dout.shape[:2]
    taps = _pool_taps(dx, ho, wo)
    mtaps = _pool_taps(relu_mask, ho, wo)
    if pooling == "avg":
        xp.multiply(dout, 0.25, out=dout)  # dout is the caller's scratch: scaled once, not per tap
    for k, (t, m) in enumerate(zip(taps, mtaps)):
        if pooling == "avg":
            xp.multiply(dout, m, out=t)
        else:
            xp.multiply(dout, (winner == k) & m, out=t)
    if dx.shape[0] > 2 * ho:
        dx[2 * ho:] = 0
    if dx.shape[1] > 2 * wo:
        dx[:, 2 * wo:] = 0


def load_vgg19(path=None, pooling="avg", device="cpu", dtype="float32", conv_kernel=None, layers=None):
    """VGG19 from an nstlite weights file (``path=None``: ``$NSTLITE_WEIGHTS``, else
    ``~/.cache/nstlite/vgg19.h5``). A missing file raises a one-line error saying how to get it.

    layers : the layer names the network will be asked for (None: all). Only the conv layers
    up to the deepest of them are read, so deeper weights take no memory.
    """
    last = _last_conv_for(layers) if layers else None
    params, attrs = read_weights(path, last=last, mapped=True)
    needed = VGG19_CONV_LAYERS if last is None else VGG19_CONV_LAYERS[: VGG19_CONV_LAYERS.index(last) + 1]
    missing = [n for n in needed if n not in params]
    net = VGG19(params, attrs, pooling=pooling, device=device, dtype=dtype, conv_kernel=conv_kernel)
    net.missing_layers = missing
    return net


def _last_conv_for(layers):
    """The deepest conv layer a forward to ``layers`` runs (None if a name is not VGG19's: the
    network is then built whole and reports the unknown name itself)."""
    if any(n not in VGG19_LAYERS for n in layers):
        return None
    deepest = max(VGG19_LAYERS.index(n) for n in layers)
    return [n for n in VGG19_LAYERS[: deepest + 1] if n.startswith("conv")][-1]
