"""VGG19's forward and input-gradient passes on channels-last buffers: the network's fast path.

Every map lives in a zero-padded (Hp, Wp, C) buffer (``layout.padded_shape``): each conv reads
its input buffer in place and writes bias + ReLU straight into the interior of the next
buffer; pooling reads one interior and writes the next. Only two such buffers exist, sized for
the largest map, used in turn by every layer of the forward pass and again by the backward
pass (one holds a layer's input, the other its output).

What the backward pass needs from the forward is kept compactly: each conv layer's ReLU mask
``out > 0`` as booleans (eqs. 2 and 6: the paper's "if F > 0" factor) and, for max pooling,
each window's winning tap. A gradient arriving at a conv layer's output is already multiplied
by that layer's mask: the kernel or pooling that produced it applied the mask while the block
was in cache, and a loss gradient is masked as it is added.

A crop schedule (``VGG19.forward``'s ``crops``) drops rows and columns of a layer's output
before the next layer reads it: the kept window is copied into a fresh padded buffer (the other
of the two: the layer's input is spent), so the next layer sees ordinary zero padding at the
cropped border. The ReLU masks and the maps handed out are those of the kept windows; the
backward pass scatters a cropped map's gradient back into its layer's whole output, zeros
elsewhere, before running that layer backward.

Pooling is ``nstlite.layers``' own (``pool_forward_into``, ``pool_backward_into``), run on
bands of rows of the (h, w, C) interiors: one implementation for both paths.
"""
import mmap
from math import prod

import numpy as np

from .. import layers
from ..layers import HWC
from ..weights import release_pages
from .layout import interior, padded_shape
from .plan import ConvPlan
from .workspace import Workspace


class ChannelsLastPath:
    """The channels-last path of a ``VGG19`` (its weights, layer names, pooling, dtype).

    All buffers are allocated for one input size and reused by every evaluation of that size.

    Parameters
    ----------
    net : the ``nstlite.vgg.VGG19`` whose layers this path runs
    kernel : 'auto', 'winograd' or 'shifted_gemm' (``nstlite.fast.plan.ConvPlan``)
    """

    #: ``forward`` hands out copies that nothing else reads: the caller may overwrite them
    #: (e.g. with the loss gradients) until the next forward.
    features_writable = True

    def __init__(self, net, kernel: str = "auto"):
        self.net = net
        self.xp = net.xp
        self.kernel = kernel
        self.plans = {}        # conv name -> ConvPlan, made when the layer first runs
        self.ws = Workspace(self.xp)
        self.size = None       # (H, W) the buffers below are for
        self.maps = {}         # layer name -> (h, w, C) of its map (kept window) in the last forward
        self.outputs = {}      # layer name -> (h, w, C) it computes (maps, before any crop)
        self.crops = {}        # layer name -> (top, bottom, left, right) of the last forward
        self.masks = {}        # conv name -> bool (h, w, C) ReLU mask; max pool name -> int8 winner
        self.features = {}     # layer name -> compact (h, w, C) copy handed out by forward
        self.buffers = []      # the two flat arrays behind every padded map, see padded_buffer
        self.input_buffer = None
        self.last = None       # (layers computed, input shape) of the last forward
        self.reserved = None   # (size, depth) the workspace was last grown for (GPU)

    def plan(self, name):
        """The ConvPlan of conv layer ``name``, made on first use: only layers that run get
        weights in their kernel's form."""
        p = self.plans.get(name)
        if p is None:
            w, b = self.net.weights[name]
            p = self.plans[name] = ConvPlan(w, b, self.kernel)
        return p

    # --------------------------------------------------------------- buffers
    def layout(self, height, width, crops=None, computed=None):
        """layer name -> (h, w, C) of its response for an input of height x width, after the
        ``crops`` of ``forward`` (the kept windows); ``computed``, a dict, receives the sizes
        each layer computes (before its own crop)."""
        out, c, crops = {}, 3, crops or {}
        for name in self.net.layer_names:
            if name.startswith("conv"):
                c = self.net.weights[name][0].shape[0]
            else:
                height, width = height // 2, width // 2
            if computed is not None:
                computed[name] = (height, width, c)
            top, bottom, left, right = crops.get(name, (0, 0, 0, 0))
            height, width = height - top - bottom, width - left - right
            out[name] = (height, width, c)
        return out

    @staticmethod
    def buffer_sizes(height, width, layout):
        """Elements of the input buffer and of each of the two ping-pong buffers (as large as
        the largest padded map)."""
        return (prod(padded_shape(height, width, 3)),
                max(prod(padded_shape(*hwc)) for hwc in layout.values()))

    def _buffers_for(self, height, width):
        if self.size == (height, width):
            return
        xp, dtype = self.xp, self.net.dtype
        self.masks, self.features, self.buffers = {}, {}, []  # drop the old size's buffers first
        self.maps = self.layout(height, width, computed=self.outputs)
        n_input, n_map = self.buffer_sizes(height, width, self.maps)  # uncropped: the largest
        self.input_buffer = xp.zeros(n_input, dtype=dtype).reshape(padded_shape(height, width, 3))
        self.buffers = [xp.zeros(n_map, dtype=dtype) for _ in range(2)]
        self.size = (height, width)

    def padded_buffer(self, name, avoid=None, hwc=None):
        """A padded buffer shaped like layer ``name``'s map (or an (h, w, C) ``hwc``), in the
        flat array that does not hold ``avoid``, with the border around the map zeroed (the
        caller writes the whole interior; the kernels read the border as the convolution's
        zero padding)."""
        xp = self.xp
        h, w, c = self.maps[name] if hwc is None else hwc
        shape = padded_shape(h, w, c)
        first, second = self.buffers
        flat = second if avoid is not None and xp.may_share_memory(avoid, first) else first
        buf = flat[: prod(shape)].reshape(shape)
        buf[0] = 0
        buf[h + 1:] = 0
        buf[:, 0] = 0
        buf[:, w + 1:] = 0
        return buf

    def _mask(self, name, shape, dtype):
        m = self.masks.get(name)
        if m is None or m.shape != shape:  # crops change a layer's size from one forward to the next
            m = self.masks[name] = self.xp.empty(shape, dtype=dtype)
        return m

    # --------------------------------------------------------------- forward
    def forward(self, x, layers, depth, crops=None):
        """Responses (C, h, w) of ``layers`` to x (3, H, W), computing the first depth + 1
        layers; views of channels-last copies (``features_writable``). A layer in ``crops``
        hands only its kept window on (``VGG19.forward``)."""
        height, width = x.shape[1], x.shape[2]
        self._buffers_for(height, width)
        self.crops, self.outputs = crops or {}, {}
        self.maps = self.layout(height, width, self.crops, self.outputs)
        names = self.net.layer_names[: depth + 1]
        if self.reserved != ((height, width), depth):
            self.ws.reserve(self.net.dtype, self.workspace_elements(self.maps, names))
            self.reserved = ((height, width), depth)
        if not self.plan(names[0]).reads_image():  # else conv1_1 reads x itself (im2col)
            interior(self.input_buffer, height, width)[...] = x.transpose(1, 2, 0)
        src, (h, w) = self.input_buffer, (height, width)
        feats = {}
        for name in names:
            hn, wn, _ = self.outputs[name]
            dst = self.padded_buffer(name, avoid=src, hwc=self.outputs[name])
            out = interior(dst, hn, wn)
            if name.startswith("conv"):
                self._conv_forward(name, x, src, out, h, w)
            else:
                self._pool_forward(name, interior(src, h, w), out)
            if name in self.crops:
                dst = self._crop(name, dst)
            h, w, _ = self.maps[name]
            src, out = dst, interior(dst, h, w)
            if name in layers:
                feats[name] = self._hand_out(name, out)
        self.last = (names, x.shape)
        # The layers' kernels now live in their kernels' own forms (Winograd's U, ...): when
        # the network's weights are views of the mapped weights file, hand their pages back
        # rather than hold every kernel twice (read back if ever needed).
        for name in names:
            if name.startswith("conv"):
                release_pages(self.net.weights[name][0])
        return feats

    def _conv_forward(self, name, x, src, out, h, w):
        xp, plan = self.xp, self.plan(name)
        if src is self.input_buffer and plan.reads_image():
            plan.forward_image(x.astype(self.net.dtype, copy=False), out, self.ws, relu=True)
        else:
            plan.forward(src, out, h, w, self.ws, relu=True)
        kept = out[self._window(name)]  # the mask only where the next layer reads
        mask = self._mask(name, kept.shape, bool)
        self.ws.parallel(lambda r: xp.greater(kept[r], 0, out=mask[r]), kept.shape[0])

    def _window(self, name):
        """(rows, cols) slices of layer ``name``'s kept window in its computed output."""
        h, w, _ = self.outputs[name]
        top, bottom, left, right = self.crops.get(name, (0, 0, 0, 0))
        return slice(top, h - bottom), slice(left, w - right)

    def _crop(self, name, buf):
        """Layer ``name``'s kept window of its output ``buf``, copied into a padded buffer of
        its own in the other flat array (which held the layer's spent input)."""
        (h, w, _), kept = self.outputs[name], self.maps[name]
        window = interior(buf, h, w)[self._window(name)]
        dst = self.padded_buffer(name, avoid=buf)
        inner = interior(dst, *kept[:2])
        self.ws.parallel(lambda r: _copy(inner[r], window[r]), kept[0])
        return dst

    def _uncrop(self, name, g):
        """The gradient g of layer ``name``'s kept window, scattered into a padded buffer of its
        whole output (the other flat array) with zeros where nothing read the output."""
        (h, w, c), (hk, wk, _) = self.outputs[name], self.maps[name]
        rows, cols = self._window(name)
        full = self.padded_buffer(name, avoid=g, hwc=(h, w, c))
        whole, kept = interior(full, h, w), interior(g, hk, wk)

        def part(r):
            whole[r] = 0
            lo, hi = max(r.start, rows.start), min(r.stop, rows.stop)
            if lo < hi:
                whole[lo:hi, cols] = kept[lo - rows.start:hi - rows.start]
        self.ws.parallel(part, h)
        return full

    def _pool_forward(self, name, inp, out):
        pooling = self.net.pooling
        # output row i reads input rows 2i, 2i + 1: rows split over the threads
        self.ws.parallel(lambda r: layers.pool_forward_into(pooling, inp[2 * r.start:2 * r.stop], out[r], HWC),
                         out.shape[0])
        if pooling == "max":
            layers.max_pool_winner(inp, out, self._mask(name, out.shape, self.xp.int8), HWC)

    def _hand_out(self, name, out):
        compact = self.features.get(name)
        if compact is None or compact.shape != out.shape:
            compact = self.features[name] = self.xp.empty(out.shape, dtype=self.net.dtype)
        self.ws.parallel(lambda r: _copy(compact[r], out[r]), out.shape[0])
        return compact.transpose(2, 0, 1)  # (C, h, w) view of channels-last memory

    # --------------------------------------------------------------- backward
    def backward(self, grads):
        """dL/dx (3, H, W) for grads {layer: dL/d(response)} of layers of the last forward."""
        names, xshape = self.last
        depth = max(names.index(n) for n in grads)
        g = None  # padded buffer: dL/d(response) of the current layer, ReLU mask applied for convs
        for i in range(depth, -1, -1):
            name = names[i]
            if name in grads:
                g = self._add_loss_gradient(name, g, grads[name])
            if g is None:
                continue
            if name in self.crops:
                g = self._uncrop(name, g)
            below = names[i - 1] if i > 0 else None
            if below is None:
                return self._image_gradient(name, g, xshape[1:])
            dst = self.padded_buffer(below, avoid=g)
            if name.startswith("conv"):
                self._conv_backward(name, below, g, dst)
            else:
                self._pool_backward(name, below, g, dst)
            g = dst
        raise AssertionError("the walk ends at conv1_1")  # pragma: no cover

    def _image_gradient(self, name, g, size):
        """The gradient reaching the image through conv1_1, as a (3, H, W) array."""
        plan, (h, w) = self.plan(name), size
        if plan.reads_image():
            return plan.backward_image(g, h, w, self.ws)
        dx = self.xp.empty((h, w, 3), dtype=self.net.dtype)
        plan.backward(g, dx, h, w, self.ws)
        return self.xp.ascontiguousarray(dx.transpose(2, 0, 1))

    def _conv_backward(self, name, below, g, dst):
        hb, wb, _ = self.maps[below]
        # a conv's input is a pool (no ReLU) or a conv, whose mask is applied here
        mask = self.masks[below] if below.startswith("conv") else None
        self.plan(name).backward(g, interior(dst, hb, wb), hb, wb, self.ws, mask=mask)

    def _pool_backward(self, name, below, g, dst):
        (h, w, _), (hb, wb, _) = self.outputs[name], self.maps[below]
        dout, din = interior(g, h, w), interior(dst, hb, wb)
        relu_mask, winner = self.masks[below], self.masks.get(name)
        pooling = self.net.pooling

        def rows(r):  # output row i feeds input rows 2i, 2i + 1: rows split over the threads
            below_rows = slice(2 * r.start, 2 * r.stop)
            layers.pool_backward_into(pooling, dout[r], din[below_rows], None if winner is None else winner[r],
                                      relu_mask[below_rows], HWC, overwrite_dout=True)
        self.ws.parallel(rows, h)
        if hb > 2 * h:
            din[2 * h:] = 0  # the row the floor-mode pooling dropped

    def _add_loss_gradient(self, name, g, grad):
        """g + grad on the layer's map (masked by the ReLU for a conv layer's response)."""
        xp = self.xp
        h, w, _ = self.maps[name]
        grad_cl = grad.transpose(1, 2, 0)  # (h, w, C) view; contiguous when the loss kept the
        # channels-last layout of the map it was given
        mask = self.masks[name] if name.startswith("conv") else None
        first = g is None
        if first:
            g = self.padded_buffer(name)
        dst = interior(g, h, w)

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

    # --------------------------------------------------------------- memory
    def workspace_elements(self, maps, names):
        """Elements of the workspace an evaluation through ``names`` takes: the largest block
        scratch of their kernels at the sizes in ``maps``, in the workspace's blocks."""
        largest, itemsize = 0, self.net.dtype.itemsize
        for name in names:
            if name.startswith("conv"):
                h, w, _ = maps[name]
                scratch = self.plan(name).workspace_shapes(h, w, itemsize, self.ws.block_bytes)
                largest = max(largest, *(sum(prod(s) for s in shapes) for shapes in scratch))
        return largest

    def memory_bytes(self, height, width, layers, loss_layers):
        """Bytes this path holds for one evaluation (forward to ``layers``, backward) of a
        height x width input, from the shapes it allocates: the kernels in the form that runs
        at each layer's size (on a GPU also their transposed copies, ``ConvPlan.adjoint_weights``),
        the workspace (the largest block scratch of those kernels, in the workspace's blocks), the
        input buffer and the two ping-pong buffers, the ReLU masks (and max pooling's winners),
        the feature copies handed out for ``loss_layers`` and the input gradient. The network's
        own (C_out, C_in, 3, 3) kernels count in full unless they are pages of the mapped
        weights file (``nstlite.weights.release_pages``): then only the largest, resident
        while its kernel form is made."""
        itemsize = self.net.dtype.itemsize
        maps = self.layout(height, width)
        deepest = max(self.net.layer_names.index(n) for n in layers)
        names = self.net.layer_names[: deepest + 1]
        n_input, n_map = self.buffer_sizes(height, width, maps)
        total = (n_input + 2 * n_map + 3 * height * width) * itemsize  # buffers, the image's gradient
        originals = []
        for name in names:
            h, w, c = maps[name]
            if name.startswith("conv"):
                plan = self.plan(name)
                form = plan.form_for(h, w)
                total += prod(plan.weights_shape(form)) * itemsize
                if self.xp is not np:  # the transposed copy, without im2col's bias row
                    total += (prod(plan.weights_shape(form)) - (plan.c_out if form == "im2col" else 0)) * itemsize
                total += h * w * c  # bool ReLU mask
                originals.append(self.net.weights[name][0])
                total += self.net.weights[name][1].nbytes
            elif self.net.pooling == "max":
                total += h * w * c  # int8 winning tap
        total += self.workspace_elements(maps, names) * itemsize
        total += sum(prod(maps[n]) * itemsize for n in set(loss_layers))
        mapped = [w.nbytes for w in originals if _is_file_mapped(w)]
        total += sum(w.nbytes for w in originals if not _is_file_mapped(w)) + max(mapped, default=0)
        return int(total)


def _is_file_mapped(a):
    """True for a view of the mapped weights file (``read_weights(mapped=True)``)."""
    while isinstance(a, np.ndarray):
        a = a.base
    if isinstance(a, memoryview):
        a = a.obj
    return isinstance(a, mmap.mmap)


def _copy(dst, src):
    dst[...] = src
