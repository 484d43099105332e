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

Cost: two forwards and one backward per tile and evaluation (an untiled evaluation is one of
each), on tiles enlarged by their margins.
"""
from __future__ import annotations

import numpy as np

from .errors import NstliteError
from .losses import INPUT, StyleLoss


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


def _inner_slices(net, layer, inner, padded, image_shape):
    """The slices of a tile's map of ``layer`` that hold the tile's inner positions."""
    _, stride = receptive_radius(net.layer_names, layer)
    (r0, r1, c0, c1), (p0, _, q0, _) = inner, padded
    h, w = net.map_size(layer, *image_shape)
    row_end = h if r1 == image_shape[0] else r1 // stride  # the last tile takes the floor-mode remainder
    col_end = w if c1 == image_shape[1] else c1 // stride
    return (slice(None), slice(r0 // stride - p0 // stride, row_end - p0 // stride),
            slice(c0 // stride - q0 // stride, col_end - q0 // stride))


def _global_slices(net, layer, inner, image_shape):
    """The same positions in the whole image's map of ``layer``."""
    return _inner_slices(net, layer, inner, ((0, 0, 0, 0)), image_shape)


def _crop(target, full_shape, where):
    """A local term's target restricted to a tile: every array shaped like the whole image's map
    (a content target P^l) is cropped to the tile's inner positions."""
    return {k: v[where] if tuple(getattr(v, "shape", ())) == full_shape else v for k, v in target.items()}


def tiled_statistics(net, x, terms, tile, margin=None):
    """Each style term's statistics of the whole image x, summed over tiles (pass 1)."""
    tile, margin, _ = tile_plan(net.layer_names, [t.layer for t in terms], tile, margin)
    return _summed_statistics(net, x, terms, tile_boxes(*x.shape[1:], tile, margin))


def _summed_statistics(net, x, terms, boxes):
    layers = list(dict.fromkeys(t.layer for t in terms))
    shape = tuple(x.shape[1:])
    totals = [None] * len(terms)
    for inner, padded in boxes:
        p0, p1, q0, q1 = padded
        feats = net.forward(x[:, p0:p1, q0:q1], layers)
        for i, term in enumerate(terms):
            stats = term.statistics(feats[term.layer][_inner_slices(net, term.layer, inner, padded, shape)])
            totals[i] = stats if totals[i] is None else {k: totals[i][k] + v for k, v in stats.items()}
    return totals


def tiled_features(net, x, layers, tile, margin=None):
    """The whole image's responses at ``layers``, assembled from tiles (content targets of large photos)."""
    tile, margin, _ = tile_plan(net.layer_names, layers, tile, margin)
    shape, xp = tuple(x.shape[1:]), net.xp
    out = {}
    for inner, padded in tile_boxes(*shape, tile, margin):
        p0, p1, q0, q1 = padded
        feats = net.forward(x[:, p0:p1, q0:q1], layers)
        for name in layers:
            F = feats[name]
            if name not in out:
                out[name] = xp.empty((F.shape[0],) + tuple(net.map_size(name, *shape)), dtype=F.dtype)
            out[name][_global_slices(net, name, inner, shape)] = F[_inner_slices(net, name, inner, padded, shape)]
    return out


class TiledObjective:
    """``objective(x) -> (loss, dx, parts)`` of an ``nstlite.objective.Objective``, evaluated by tiles.

    Equal to the untiled objective up to floating-point rounding (the module docstring says
    why). Style terms must be tileable (statistics that are sums over positions); content and
    image terms are local.

    Parameters
    ----------
    objective : the ``Objective`` to evaluate
    tile : inner tile size in pixels, a multiple of the deepest layer's stride (16 to conv5_1)
    margin : pixels added on each side of a tile (default: the least exact one, 80 to conv5_1)
    record_pattern : keep every tile's activation pattern for ``activation_pattern`` (gradient checks)
    """

    def __init__(self, objective, tile, margin=None, record_pattern=False):
        self.objective, self.net = objective, objective.net
        self.record_pattern, self._pattern = record_pattern, []
        self.tile, self.margin, self.align = tile_plan(self.net.layer_names, objective.layers, tile, margin)
        for _, term, *_ in objective.terms:
            if isinstance(term, StyleLoss) and not term.tileable:
                raise NstliteError(f"the {type(term).__name__} of {term.layer} needs the whole image at once "
                                   "(its statistics are not sums over positions): use it without tiles")

    def __call__(self, x):
        obj, net, xp = self.objective, self.net, self.net.xp
        shape = tuple(x.shape[1:])
        zero = xp.zeros((), x.dtype)
        parts = {"content": zero, "style": zero, "tv": zero, "extra": zero, "style_layers": {}}
        boxes = tile_boxes(*shape, self.tile, self.margin)
        global_terms = [(i, t) for i, (_, t, *_) in enumerate(obj.terms) if isinstance(t, StyleLoss)]
        stats = {}
        if global_terms:
            stats = dict(zip((i for i, _ in global_terms),
                             _summed_statistics(net, x, [t for _, t in global_terms], boxes)))
        for i, _ in global_terms:  # pass 1 done: the global terms' values
            group, term, target, w_group, _ = obj.terms[i]
            self._add_value(parts, group, term, w_group, term.value(stats[i], target))
        dx, pattern = xp.zeros_like(x), []
        for inner, padded in boxes:  # pass 2
            p0, p1, q0, q1 = padded
            feats = net.forward(x[:, p0:p1, q0:q1], obj.layers)
            grads = {}
            for i, (group, term, target, w_group, w_total) in enumerate(obj.terms):
                if term.layer == INPUT:
                    continue
                F = feats[term.layer]
                where = _inner_slices(net, term.layer, inner, padded, shape)
                if i in stats:
                    dF = term.gradient(F[where], stats[i], target)
                else:
                    full_shape = (F.shape[0],) + tuple(net.map_size(term.layer, *shape))
                    value, dF = term.loss(F[where], _crop(target, full_shape, _global_slices(
                        net, term.layer, inner, shape)))
                    self._add_value(parts, group, term, w_group, value)
                g = grads.get(term.layer)
                if g is None:
                    g = grads[term.layer] = xp.zeros(F.shape, dtype=F.dtype)
                g[where] += w_total * dF
            if grads:
                dx[:, p0:p1, q0:q1] += net.backward(grads)
            if self.record_pattern:
                pattern += net.activation_pattern()
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
    kept: content targets are the whole image's maps at the content layers)."""
    tile, margin, _ = tile_plan(net.layer_names, layers, tile, margin)
    side_h, side_w = min(height, tile + 2 * margin), min(width, tile + 2 * margin)
    per_tile = net.memory_bytes(side_h, side_w, layers, loss_layers)
    per_tile += sum(net.weights[_last_conv(net, n)][0].shape[0] * int(np.prod(net.map_size(n, side_h, side_w)))
                    * net.dtype.itemsize for n in loss_layers)  # the tile's gradient maps of the loss layers
    return per_tile + 3 * height * width * net.dtype.itemsize


def _last_conv(net, layer):
    return [n for n in net.layer_names[: net.layer_names.index(layer) + 1] if n.startswith("conv")][-1]


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
