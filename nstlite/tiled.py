"""Exact tiled evaluation of the objective: any image size in the memory of one tile.

The Gram matrices of the paper are global (sums over every position of a layer), so the
image cannot be stylised tile by tile. It can be *evaluated* tile by tile without changing the
objective (Galerne et al., *Scaling Painting Style Transfer*, CGF 2024):

pass 1  forward each tile and add up, over the tile's inner positions, the statistics of every
        style term (``StyleLoss.position_sums``: the Gram matrix, the number of positions);
        each style term's value then comes from the global statistics;
pass 2  forward each tile again, give each layer's inner positions their loss derivative (a
        style term's from the *global* statistics, a content term's from its own target
        crop), back-propagate through the tile, and add the tile's input gradient into the
        image's.

Why it is exact. A response at layer l and output row q depends on the input rows
[q s - R, q s + s - 1 + R], s the layer's stride (2 per pooling) and R its receptive radius
(each 3x3 conv at stride s adds s; VGG19: R = 70 at conv5_1, 38 at conv4_2, i.e. receptive
fields of s + 2R = 156 and 84 pixels). A tile's inner rows [r0, r1) are padded by a margin
M >= R on each side (clipped at the image), so every response at an inner position, and its
whole dependency cone, is computed on the tile exactly as on the whole image; the network is
linear in the loss derivatives given its activations, so the sum over tiles of each tile's
input gradient (of the derivatives at its inner positions) is the whole image's. Tile origins
and margins are multiples of the deepest layer's stride, so every pooling window of a tile is
a pooling window of the image.

Crops. The whole padded tile is needed only at the input: after layer l (receptive radius
R_l) only the positions within m_l = R_D - R_l input pixels of the inner box can still reach
an inner response of the deepest layer D (``crop_margins``). So each layer's map is cropped to
the inner box grown by m_l (clipped to what it computed: at an image edge nothing is dropped,
the zero padding there is the image's) before the next layer reads it, with ordinary zero
padding at the cropped border (``tile_crops``; ``VGG19.forward``'s ``crops``). This stays
exact: the kept map of l is exactly the positions that the kept map of D needs, which is the
kept map of l - 1 less one position (one stride) on each cropped side for a conv, and the same
pixels for a pooling; a conv's responses are wrong only within one position of a cropped
border, which the next crop drops, so every kept value is the image's (keeping more is exact
too). The m_l are multiples of the strides after l, so pooling windows stay the image's. The
backward pass gives the dropped positions a zero gradient: nothing read them. With T = 192 and
the least margin, conv4_4's map is 28 positions (224 pixels) wide instead of 44, conv5_1's
12 (the inner box): 30 % fewer conv multiplies for a tile away from the image's edges. In
float32 a cropped tile rounds differently from the whole image near its cropped borders (a
Winograd output mixes its whole 6x6 input window, and a small cropped map may get another
kernel), so tiled and untiled float32 gradients then agree only to the float32 noise floor
(ReLUs within rounding of 0): 3.6e-4 relative L2 at 512 x 384, tiles of 128, against 9.2e-7
without crops, whose tiles round like the whole image. Crops are therefore asked for
(``crop=True``, ``stylize(tile_crops=True)``, ``--tile-crops``): about 20 % faster by tiles
(2048 x 1536, tiles of 192: 3.54x untiled against 4.38x), not the default.

Per tile. ``tile_statistics`` (pass 1) and ``tile_gradient`` (pass 2) are plain functions of
the tile's pixels, the network, the terms (and for pass 2 the global statistics) and the
tile's boxes: an evaluation can fan them out (e.g. over Dask workers) and add up what they
return, as ``TiledObjective`` does in a loop.

Cost: two forwards and one backward per tile and evaluation (an untiled evaluation is one of
each), on tiles enlarged by their margins (shrunk layer by layer with crops).
"""
from __future__ import annotations

import numpy as np

from .errors import NstliteError
from .losses import INPUT, StyleLoss, is_channels_last


def receptive_radius(layer_names, layer):
    """(R, s): the receptive radius R of ``layer``'s responses in input pixels, and its stride s."""
    radius, stride = 0, 1
    for name in layer_names[: layer_names.index(layer) + 1]:
        if name.startswith("conv"):
            radius += stride  # a 3x3 conv reaches one position further at the current stride
        else:
            stride *= 2  # a 2x2 / stride-2 pooling adds no reach beyond its own window
    return radius, stride


def tile_plan(layer_names, layers, tile, margin=None):
    """(tile, margin, align) checked for exactness: tile and margin multiples of align (the
    deepest layer's stride), margin at least the deepest receptive radius."""
    radius, align = max(receptive_radius(layer_names, n) for n in layers)
    tile = int(tile)
    if tile <= 0 or tile % align:
        raise NstliteError(f"the tile size must be a positive multiple of {align} (the stride of "
                           f"{_deepest(layer_names, layers)}), not {tile}")
    least = -(-radius // align) * align
    margin = least if margin is None else int(margin)
    if margin < radius or margin % align:
        raise NstliteError(f"the tile margin must be a multiple of {align} and at least {radius} (the receptive "
                           f"radius of {_deepest(layer_names, layers)}), e.g. {least}; not {margin}")
    return tile, margin, align


def _deepest(layer_names, layers):
    return max(layers, key=layer_names.index)


def tile_boxes(height, width, tile, margin):
    """Each tile as ((r0, r1, c0, c1) inner box, (p0, p1, q0, q1) padded box) in image pixels."""
    boxes = []
    for r0 in range(0, height, tile):
        for c0 in range(0, width, tile):
            r1, c1 = min(r0 + tile, height), min(c0 + tile, width)
            padded = (max(0, r0 - margin), min(height, r1 + margin), max(0, c0 - margin), min(width, c1 + margin))
            boxes.append(((r0, r1, c0, c1), padded))
    return boxes


def crop_margins(layer_names, layers):
    """layer -> m_l, for every layer up to the deepest of ``layers``: how far (input pixels)
    beyond a tile's inner box that layer's map can still reach an inner response of the
    deepest layer, R_deepest - R_l (a multiple of the layer's stride)."""
    names = layer_names[: layer_names.index(_deepest(layer_names, layers)) + 1]
    reach, _ = receptive_radius(layer_names, names[-1])
    return {n: reach - receptive_radius(layer_names, n)[0] for n in names}


def tile_crops(net, layers, inner, padded, image_shape, crop=True):
    """(crops, origins) of a tile's forward to ``layers``: crops[name] = (top, bottom, left,
    right) positions dropped from that layer's output before the next layer reads it (the
    ``crops`` of ``VGG19.forward``; only layers that drop any), origins[name] = (row, col) of
    the first position of the tile's (kept) map of that layer in the image's map of it.

    Each layer keeps the tile's inner box grown by its ``crop_margins`` and clipped to what it
    computed: at an image edge the padded box ends there and nothing is dropped on that side.
    ``crop=False``: nothing is dropped (each map is the whole padded tile's)."""
    (r0, r1, c0, c1), (p0, p1, q0, q1) = inner, padded
    _, align = receptive_radius(net.layer_names, _deepest(net.layer_names, layers))
    # A last tile narrower than the deepest stride has no position there (floor mode): its
    # crops are those of a box starting one deepest position earlier, so that no map is empty
    # (keeping more than the inner responses need is exact too, the module docstring says why).
    r0, c0 = min(r0, (image_shape[0] // align - 1) * align), min(c0, (image_shape[1] // align - 1) * align)
    rows, cols, stride = (p0, p1), (q0, q1), 1  # the current map's window, in the image's map
    crops, origins = {}, {}
    for name, m in crop_margins(net.layer_names, layers).items():
        if name.startswith("pool"):
            rows, cols, stride = _pooled(rows), _pooled(cols), 2 * stride
        if crop:  # rounded outwards to the stride (they are multiples of it: a no-op, kept for safety)
            kept_rows = (max(rows[0], (r0 - m) // stride), min(rows[1], -(-(r1 + m) // stride)))
            kept_cols = (max(cols[0], (c0 - m) // stride), min(cols[1], -(-(c1 + m) // stride)))
            drop = (kept_rows[0] - rows[0], rows[1] - kept_rows[1], kept_cols[0] - cols[0], cols[1] - kept_cols[1])
            if any(drop):
                crops[name] = drop
            rows, cols = kept_rows, kept_cols
        origins[name] = (rows[0], cols[0])
    return crops, origins


def _pooled(window):
    """The window (in the image's map) of a 2x2 pooling of the map window [a, b)."""
    a, b = window
    # a tile's windows start on even positions before every pooling (inner boxes, margins and
    # crop margins are multiples of the strides after it): its pooling windows are the image's
    assert a % 2 == 0, window
    return a // 2, a // 2 + (b - a) // 2


def _inner_slices(net, layer, inner, origin, image_shape):
    """The slices of a map of ``layer`` whose first position is the image map's ``origin``
    (row, col) that hold the tile's inner positions."""
    _, stride = receptive_radius(net.layer_names, layer)
    r0, r1, c0, c1 = inner
    h, w = net.map_size(layer, *image_shape)
    row_end = h if r1 == image_shape[0] else r1 // stride  # the last tile takes the floor-mode remainder
    col_end = w if c1 == image_shape[1] else c1 // stride
    o_r, o_c = origin
    return slice(None), slice(r0 // stride - o_r, row_end - o_r), slice(c0 // stride - o_c, col_end - o_c)


def _global_slices(net, layer, inner, image_shape):
    """The same positions in the whole image's map of ``layer``."""
    return _inner_slices(net, layer, inner, (0, 0), image_shape)


def _crop(target, full_shape, where):
    """A local term's target restricted to a tile: every array shaped like the whole image's map
    (a content target P^l) is cropped to the tile's inner positions (one already cropped to the
    tile passes as it is)."""
    return {k: v[where] if tuple(getattr(v, "shape", ())) == full_shape else v for k, v in target.items()}


def _inner(F, where, xp):
    """F's inner positions F[where]; for a channels-last map (the fast path's) as contiguous
    channels-last memory, which the Gram products read in place (a block copy, or none)."""
    Fi = F[where]
    if is_channels_last(F):
        return xp.ascontiguousarray(Fi.transpose(1, 2, 0)).transpose(2, 0, 1)
    return Fi


def _tile_forward(net, x_tile, layers, inner, padded, image_shape, crop):
    crops, origins = tile_crops(net, layers, inner, padded, image_shape, crop)
    return net.forward(x_tile, layers, crops=crops), origins


def tile_statistics(net, x_tile, terms, inner, padded, image_shape, crop=False):
    """Pass 1 on one tile: each style term's statistics (``StyleLoss.statistics``, sums over
    positions) of the tile's inner positions, a list in the order of ``terms``.

    x_tile : the image's pixels in the tile's ``padded`` box (``tile_boxes``), (3, h, w)
    inner, padded : the tile's boxes in image pixels; image_shape : the image's (H, W)
    """
    feats, origins = _tile_forward(net, x_tile, list(dict.fromkeys(t.layer for t in terms)), inner, padded,
                                   image_shape, crop)
    return [term.statistics(_inner(feats[term.layer], _inner_slices(net, term.layer, inner, origins[term.layer],
                                                                    image_shape), net.xp)) for term in terms]


def tile_gradient(net, x_tile, terms, stats, inner, padded, image_shape, crop=False):
    """Pass 2 on one tile: (values, dx_tile).

    terms : an ``Objective``'s terms, (group, term, target, w_group, w_total); terms on the
        image itself (``INPUT``) are the caller's (they need no network)
    stats : {index in terms: the whole image's statistics} of every style term (pass 1 summed)
    values : {index: the term's value on the tile's inner positions} of every local (content)
        term; a target shaped like the whole image's map is cropped to the tile here
    dx_tile : the gradient, with respect to x_tile, of the weighted terms at the tile's inner
        positions (style terms' derivatives from the global ``stats``); None when no term
        reads the network
    """
    layers = list(dict.fromkeys(t.layer for _, t, *_ in terms if t.layer != INPUT))
    if not layers:
        return {}, None
    feats, origins = _tile_forward(net, x_tile, layers, inner, padded, image_shape, crop)
    xp, grads, values = net.xp, {}, {}
    for i, (_, term, target, _, w_total) in enumerate(terms):
        if term.layer == INPUT:
            continue
        F = feats[term.layer]
        where = _inner_slices(net, term.layer, inner, origins[term.layer], image_shape)
        if i in stats:
            dF = term.gradient(_inner(F, where, xp), stats[i], target)
        else:
            full_shape = (F.shape[0],) + tuple(net.map_size(term.layer, *image_shape))
            values[i], dF = term.loss(F[where], _crop(target, full_shape,
                                                      _global_slices(net, term.layer, inner, image_shape)))
        g = grads.get(term.layer)
        if g is None:  # in F's memory layout, which the network's backward reads in place
            g = grads[term.layer] = xp.zeros_like(F)
        g[where] += w_total * dF
    return values, net.backward(grads)


def tiled_statistics(net, x, terms, tile, margin=None, crop=False):
    """Each style term's statistics of the whole image x, summed over tiles (pass 1)."""
    tile, margin, _ = tile_plan(net.layer_names, [t.layer for t in terms], tile, margin)
    return _summed_statistics(net, x, terms, tile_boxes(*x.shape[1:], tile, margin), crop)


def _summed_statistics(net, x, terms, boxes, crop=False):
    shape = tuple(x.shape[1:])
    totals = [None] * len(terms)
    for inner, padded in boxes:
        p0, p1, q0, q1 = padded
        for i, stats in enumerate(tile_statistics(net, x[:, p0:p1, q0:q1], terms, inner, padded, shape, crop)):
            totals[i] = stats if totals[i] is None else {k: totals[i][k] + v for k, v in stats.items()}
    return totals


def tiled_features(net, x, layers, tile, margin=None, crop=False):
    """The whole image's responses at ``layers``, assembled from tiles (content targets of large photos)."""
    tile, margin, _ = tile_plan(net.layer_names, layers, tile, margin)
    shape, xp = tuple(x.shape[1:]), net.xp
    out = {}
    for inner, padded in tile_boxes(*shape, tile, margin):
        p0, p1, q0, q1 = padded
        feats, origins = _tile_forward(net, x[:, p0:p1, q0:q1], layers, inner, padded, shape, crop)
        for name in layers:
            F = feats[name]
            if name not in out:
                out[name] = xp.empty((F.shape[0],) + tuple(net.map_size(name, *shape)), dtype=F.dtype)
            out[name][_global_slices(net, name, inner, shape)] = F[_inner_slices(net, name, inner, origins[name],
                                                                                 shape)]
    return out


class TiledObjective:
    """``objective(x) -> (loss, dx, parts)`` of an ``nstlite.objective.Objective``, evaluated by tiles.

    Equal to the untiled objective up to floating-point rounding (the module docstring says
    why). Style terms must be tileable (statistics that are sums over positions); content and
    image terms are local. Each evaluation is ``tile_statistics`` over the tiles, summed, then
    ``tile_gradient`` over the tiles, summed.

    Parameters
    ----------
    objective : the ``Objective`` to evaluate
    tile : inner tile size in pixels, a multiple of the deepest layer's stride (16 to conv5_1)
    margin : pixels added on each side of a tile (default: the least exact one, 80 to conv5_1)
    record_pattern : keep every tile's activation pattern for ``activation_pattern`` (gradient checks)
    crop : shrink each layer's map to what the inner responses need (``tile_crops``): the same
        values in exact arithmetic, about 20 % less work at 2048 px, float32 rounding like a different
        kernel's (see the module docstring); False (the default) runs every layer on the whole
        padded tile
    """

    def __init__(self, objective, tile, margin=None, record_pattern=False, crop=False):
        self.objective, self.net = objective, objective.net
        self.record_pattern, self._pattern, self.crop = record_pattern, [], crop
        self.tile, self.margin, self.align = tile_plan(self.net.layer_names, objective.layers, tile, margin)
        for _, term, *_ in objective.terms:
            if isinstance(term, StyleLoss) and not term.tileable:
                raise NstliteError(f"the {type(term).__name__} of {term.layer} needs the whole image at once "
                                   "(its statistics are not sums over positions): use it without tiles")

    def __call__(self, x):
        obj, xp = self.objective, self.net.xp
        shape = tuple(x.shape[1:])
        zero = xp.zeros((), x.dtype)
        parts = {"content": zero, "style": zero, "tv": zero, "extra": zero, "style_layers": {}}
        boxes = tile_boxes(*shape, self.tile, self.margin)
        global_terms = [i for i, (_, t, *_) in enumerate(obj.terms) if isinstance(t, StyleLoss)]
        stats = {}
        if global_terms:
            stats = dict(zip(global_terms, _summed_statistics(self.net, x, [obj.terms[i][1] for i in global_terms],
                                                              boxes, self.crop)))
        for i in global_terms:  # pass 1 done: the global terms' values
            group, term, target, w_group, _ = obj.terms[i]
            self._add_value(parts, group, term, w_group, term.value(stats[i], target))
        dx, pattern = xp.zeros_like(x), []
        for inner, padded in boxes:  # pass 2
            p0, p1, q0, q1 = padded
            values, dx_tile = tile_gradient(self.net, x[:, p0:p1, q0:q1], obj.terms, stats, inner, padded, shape,
                                            self.crop)
            for i, value in values.items():
                group, term, _, w_group, _ = obj.terms[i]
                self._add_value(parts, group, term, w_group, value)
            if dx_tile is not None:
                dx[:, p0:p1, q0:q1] += dx_tile
                if self.record_pattern:
                    pattern += self.net.activation_pattern()
        for group, term, target, w_group, w_total in obj.terms:
            if term.layer == INPUT:
                value, d = term.loss(x, target)
                parts[group] = parts[group] + w_group * value
                dx += w_total * d
        total = obj.alpha * parts["content"] + obj.beta * parts["style"] + parts["tv"] + parts["extra"]
        parts["total"] = total
        self._pattern = pattern
        return total, dx, parts

    @staticmethod
    def _add_value(parts, group, term, w_group, value):
        parts[group] = parts[group] + w_group * value
        if group == "style":
            layer_values = parts["style_layers"]
            layer_values[term.layer] = layer_values[term.layer] + value if term.layer in layer_values else value

    def activation_pattern(self):
        """Every tile's activation pattern in the last evaluation (with ``record_pattern=True``):
        a gradient check compares it at x +- h d, as ``VGG19.activation_pattern``."""
        return self._pattern


def tiled_bytes(net, height, width, layers, loss_layers, tile, margin=None):
    """Resident bytes of a tiled evaluation: one padded tile through the network, plus what
    lives at the image's size (the input gradient and, per loss layer, its global maps are not
    kept: content targets are the whole image's maps at the content layers). The tile's crops
    shrink the deeper maps but not the first layers' (the peak): the uncropped tile is an upper
    bound."""
    tile, margin, _ = tile_plan(net.layer_names, layers, tile, margin)
    side_h, side_w = min(height, tile + 2 * margin), min(width, tile + 2 * margin)
    per_tile = net.memory_bytes(side_h, side_w, layers, loss_layers)
    per_tile += sum(net.channels(n) * int(np.prod(net.map_size(n, side_h, side_w)))
                    * net.dtype.itemsize for n in loss_layers)  # the tile's gradient maps of the loss layers
    return per_tile + 3 * height * width * net.dtype.itemsize


def choose_tile(net, height, width, layers, loss_layers, budget_bytes, margin=None):
    """The largest tile (a multiple of the deepest stride, at most the image's longest side
    rounded up) whose tiled evaluation fits in ``budget_bytes``; a one-line error when none does."""
    _, stride = max(receptive_radius(net.layer_names, n) for n in layers)
    best = None
    for tile in range(stride, -(-max(height, width) // stride) * stride + 1, stride):
        if tiled_bytes(net, height, width, layers, loss_layers, tile, margin) > budget_bytes:
            break
        best = tile
    if best is None:
        raise NstliteError(f"{width}x{height} does not fit in {budget_bytes / 2**30:.1f} GiB even by tiles; "
                           "use a smaller --size")
    return best
