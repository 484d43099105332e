"""The style-transfer objective: image x -> (loss, dloss/dx), eq. (7) plus optional TV.

    L_total(p, a, x) = alpha sum_c L_c(x) + beta sum_l w_l E_l(x) + tv_weight L_tv(x)

composed of loss terms (``nstlite.losses``, "The loss-term protocol"): content terms
(eq. 1 at each content layer), style terms (E_l of eq. 4 by default, each with its w_l of
eq. 5) and terms on the image itself (TV). The gradient is the exact derivative of the
returned loss: one VGG19 forward to the deepest layer used, each term's gradient added at its
layer, one backward to the image, and the image terms' gradients added there.

This is where the paper meets the engine: each term is evaluated by its fused kernel
(``nstlite.fast.losses``) with its weight folded in, writing its gradient over the feature copy
the network handed out when the network allows it and no other term reads that map.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from .errors import NstliteError
from .fast import losses as fused
from .guides import guide_maps
from .losses import INPUT, ContentLoss, GramLoss, GuidedGramLoss, TVLoss, parse_style_losses
from .tiled import TiledObjective, tiled_features, tiled_statistics


class Objective:
    """Callable ``objective(x) -> (loss, dx, parts)`` for network inputs ``x`` of shape (3, H, W).

    Parameters
    ----------
    net : ``nstlite.vgg.VGG19``
    content : sequence of ``(term, target)``: the content terms, weighted by alpha
    style : sequence of ``(term, target, w_l)``: the style terms, weighted by beta w_l
    alpha, beta : content and style weights (eq. 7)
    tv_weight : weight of the total-variation term on the image (0: none, as in the paper)
    extra : sequence of ``(term, target, weight)``: any other terms (user-written ones),
        weighted by ``weight``; their weighted sum is ``parts["extra"]``

    ``parts`` holds the loss terms as 0-d device arrays (no host sync here): ``content``
    (sum of the content terms, eq. 1), ``style`` (sum_l w_l E_l, eq. 5), ``tv`` (already
    multiplied by ``tv_weight``), ``extra``, ``total``, and ``style_layers`` mapping each style
    term's layer to its unweighted value (E_l, eq. 4; the sum of the values when several style
    losses read one layer).
    """

    def __init__(self, net, content=(), style=(), alpha=1.0, beta=1.0, tv_weight=0.0, extra=()):
        self.net = net
        self.alpha, self.beta, self.tv_weight = float(alpha), float(beta), float(tv_weight)
        # (group, term, target, weight within the group, weight in the total)
        self.terms = [("content", t, tg, 1.0, self.alpha) for t, tg in content]
        self.terms += [("style", t, tg, float(w), self.beta * float(w)) for t, tg, w in style]
        if self.tv_weight:
            self.terms.append(("tv", TVLoss(), {}, self.tv_weight, self.tv_weight))
        self.terms += [("extra", t, tg, float(w), float(w)) for t, tg, w in extra]
        if not self.terms:
            raise NstliteError("the objective has no terms: give content or style layers")
        self.layers = list(dict.fromkeys(t.layer for _, t, *_ in self.terms if t.layer != INPUT))
        self._readers = {name: sum(1 for _, t, *_ in self.terms if t.layer == name) for name in self.layers}

    def __call__(self, x):
        xp = self.net.xp
        zero = xp.zeros((), x.dtype)
        parts = {"content": zero, "style": zero, "tv": zero, "extra": zero, "style_layers": {}}
        grads = {}
        feats = self.net.forward(x, self.layers) if self.layers else {}
        for group, term, target, w_group, w_total in self.terms:
            if term.layer == INPUT:
                continue
            F = feats[term.layer]
            # overwrite the handed-out map with this term's gradient when nothing else reads it
            into = F if self.net.features_writable and self._readers[term.layer] == 1 else None
            value, dF = fused.evaluate(term, F, target, w_total, into, self.net.workspace)
            grads[term.layer] = grads[term.layer] + dF if term.layer in grads else dF
            parts[group] = parts[group] + w_group * value  # eq. (1) summed; eq. (5)
            if group == "style":  # E_l (eq. 4); summed when several style losses read the layer
                layer_values = parts["style_layers"]
                layer_values[term.layer] = layer_values[term.layer] + value if term.layer in layer_values else value
        dx = self.net.backward(grads) if grads else xp.zeros_like(x)
        for group, term, target, w_group, w_total in self.terms:
            if term.layer == INPUT:
                value, d = term.loss(x, target)
                parts[group] = parts[group] + w_group * value
                dx = dx + d * w_total
        # eq. (7), plus the terms on the image and any extra terms (already weighted)
        total = self.alpha * parts["content"] + self.beta * parts["style"] + parts["tv"] + parts["extra"]
        parts["total"] = total
        return total, dx, parts


@dataclass
class Region:
    """A region of the photo and the artworks whose style it takes (spatial control).

    mask : (H, W) weights in [0, 1] at the generated image's resolution
    style_xs : preprocessed (3, H_s, W_s) artworks for this region (their whole maps)
    blend_weights : one weight per artwork (default equal)
    name : for messages and reports
    """

    mask: object
    style_xs: list
    blend_weights: list | None = None
    name: str = ""


def build_objective(net, content_x, style_xs, content_layers, style_layer_weights, alpha=1.0, beta=1.0,
                    tv_weight=0.0, style_loss="gram", blend_weights=None, style_loss_options=None, extra=(),
                    regions=None, erode=False, tile=None, margin=None, tile_crops=False):
    """The objective of one problem: its terms and their targets from the photo and the artworks.

    Parameters
    ----------
    net : ``nstlite.vgg.VGG19``
    content_x : (3, H, W) preprocessed photograph; its shape is the generated image's
    style_xs : list of (3, H_s, W_s) preprocessed artworks (may be empty without style layers)
    content_layers : layer names of the content terms (P^l, eq. 1)
    style_layer_weights : dict layer -> w_l (eq. 5)
    alpha, beta, tv_weight : eq. (7) and the TV weight
    style_loss : a style loss name of ``nstlite.losses.STYLE_LOSSES``, ``package.module:Class``,
        or a weighted combination ``"gram:1,histogram:0.5"`` (each term's weight multiplies w_l)
    blend_weights : one weight per artwork (normalised to sum 1; default equal)
    style_loss_options : keyword arguments for the style loss classes (``seed``, ``directions``);
        each class receives those its constructor names
    extra : passed to ``Objective``
    regions : None, or a list of ``Region``: each region takes the style of its own artworks
        through guided Gram matrices (Gatys et al. 2017); ``style_xs`` and ``blend_weights`` are
        then unused
    erode : carry the region guides to deeper layers eroded (``nstlite.guides.guide_maps``)
    tile, margin : evaluate by tiles of this inner size (``nstlite.tiled.TiledObjective``); the
        targets of the photo and the artworks are then computed by tiles too
    tile_crops : crop each layer of a tile to what its inner responses need (faster; float32
        rounding then differs from the untiled evaluation's, ``nstlite.tiled``)

    Returns
    -------
    Objective, or TiledObjective with ``tile``
    """
    content_layers = list(content_layers)
    content = []
    if content_layers:
        feats = (tiled_features(net, content_x, content_layers, tile, margin, crop=tile_crops) if tile
                 else net.forward(content_x, content_layers))
        content = [(term, term.target(feats[term.layer])) for term in map(ContentLoss, content_layers)]
    style = []
    if style_layer_weights and regions:
        style = _region_terms(net, content_x, regions, style_layer_weights, style_loss, erode)
    elif style_layer_weights:
        kinds = parse_style_losses(style_loss)
        terms = [(_make_term(cls, name, style_loss_options or {}), weight * style_layer_weights[name])
                 for cls, weight in kinds for name in style_layer_weights]
        positions = positions_of(net, content_x.shape[1:], list(style_layer_weights))
        targets = style_targets(net, [t for t, _ in terms], style_xs, positions, blend_weights, tile, margin,
                                tile_crops)
        style = [(t, target, w) for (t, w), target in zip(terms, targets)]
    objective = Objective(net, content, style, alpha, beta, tv_weight, extra)
    return TiledObjective(objective, tile, margin, crop=tile_crops) if tile else objective


def _region_terms(net, content_x, regions, style_layer_weights, style_loss, erode):
    """(GuidedGramLoss, target, w_l) for every region and style layer."""
    if parse_style_losses(style_loss) != [(GramLoss, 1.0)]:
        raise NstliteError("spatial control (regions) works with the gram style loss only")
    xp, shape, layers = net.xp, tuple(content_x.shape[1:]), list(style_layer_weights)
    style = []
    for i, region in enumerate(regions):
        name = region.name or f"region {i + 1}"
        if not region.style_xs:
            raise NstliteError(f"{name}: no style image given")
        if tuple(np.shape(region.mask)) != shape:
            raise NstliteError(f"{name}: its map is {np.shape(region.mask)[1]}x{np.shape(region.mask)[0]} "
                               f"but the image is {shape[1]}x{shape[0]}")
        guides = guide_maps(net.layer_names, region.mask, layers, erode)
        terms = [GuidedGramLoss(n, xp.asarray(guides[n], dtype=content_x.dtype), region=name) for n in layers]
        positions = {n: 0 for n in layers}  # unused: a region's targets are rescaled to its own size
        targets = style_targets(net, terms, region.style_xs, positions, region.blend_weights)
        style += [(t, target, style_layer_weights[t.layer]) for t, target in zip(terms, targets)]
    return style


def _make_term(cls, layer, options):
    """cls(layer, **the options its constructor names)."""
    accepted = inspect.signature(cls).parameters
    return cls(layer, **{k: v for k, v in options.items() if k in accepted})


def style_targets(net, terms, style_xs, positions, blend_weights=None, tile=None, margin=None, tile_crops=False):
    """The target of each style term (a list in the terms' order), from one or several artworks.

    With several artworks the targets are blended, A^l = sum_s b_s A_s^l (b_s summing to 1).
    Each term blends its own statistics (``StyleLoss.blend``): a statistic that is a sum over
    positions (a Gram matrix) is rescaled by M_l / M_s, the generated image's positions over
    the artwork's, so that E_l (eq. 4, which normalises by the generated image's M_l) compares
    like with like; the paper uses images of equal size, where the factor is 1.
    ``positions`` maps layer -> M_l of the generated image. With ``tile`` each artwork's
    statistics are summed over tiles (``nstlite.tiled``): a large painting needs the memory of
    one tile.
    """
    n = len(style_xs)
    if n == 0:
        raise NstliteError("no style image given")
    if blend_weights is None:
        blend_weights = [1.0 / n] * n
    if len(blend_weights) != n:
        raise NstliteError(f"{len(blend_weights)} style blend weights for {n} style images")
    total_w = float(sum(blend_weights))
    if total_w <= 0 or any(b < 0 for b in blend_weights):
        raise NstliteError("style blend weights must be non-negative and not all zero")
    weights = [b / total_w for b in blend_weights]
    layers = list(dict.fromkeys(t.layer for t in terms))
    per_artwork = []  # [artwork][term] statistics, made before the next forward reuses the maps
    for sx in style_xs:
        if tile and all(t.tileable for t in terms):
            per_artwork.append(tiled_statistics(net, sx, terms, tile, margin, crop=tile_crops))
            continue
        feats = net.forward(sx, layers)
        per_artwork.append([t.target(feats[t.layer]) for t in terms])
    return [t.prepare(t.blend([stats[i] for stats in per_artwork], weights, positions[t.layer]))
            for i, t in enumerate(terms)]


def positions_of(net, shape, layers):
    """layer -> M_l (height x width of the map) for an input of (height, width) ``shape``."""
    return {name: h * w for name, (h, w) in ((n, net.map_size(n, *shape)) for n in layers)}
