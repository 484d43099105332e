"""The style-transfer objective: image x -> (loss, dloss/dx), eq. (7) plus optional TV.

    L_total(p, a, x) = alpha L_content(p, x) + beta L_style(a, x) + tv_weight L_tv(x)

with L_content summed over the content layers (eq. 1 per layer) and L_style = sum_l w_l E_l
(eq. 5). The gradient is the exact derivative of the returned loss: one VGG forward to the
deepest layer used, one backward to the image, and the TV term's gradient added on the image.
"""
from . import losses
from .errors import NstliteError


class Objective:
    """Callable ``objective(x) -> (loss, dx, parts)`` for network inputs ``x`` of shape (3, H, W).

    Parameters
    ----------
    net : ``nstlite.vgg.VGG19``
    content_targets : dict layer -> P^l, the photograph's responses (C, H, W); may be empty
    style_targets : dict layer -> A^l, the artwork's Gram matrices (C, C); may be empty
    style_layer_weights : dict layer -> w_l (eq. 5); keys must match ``style_targets``
    alpha, beta : content and style weights (eq. 7)
    tv_weight : weight of the total-variation term (0 disables it)

    ``parts`` holds the loss terms as 0-d device arrays (no host sync here): ``content``
    (sum over content layers of eq. 1), ``style`` (eq. 5), ``tv`` (already multiplied by
    ``tv_weight``), ``total``, and ``style_layers`` mapping layer -> E_l (eq. 4, unweighted).
    """

    def __init__(self, net, content_targets, style_targets, style_layer_weights, alpha=1.0, beta=1.0,
                 tv_weight=0.0):
        if set(style_targets) != set(style_layer_weights):
            raise NstliteError("style targets and style layer weights name different layers")
        self.net = net
        self.content_targets = dict(content_targets)
        self.style_targets = dict(style_targets)
        self.style_layer_weights = {k: float(v) for k, v in style_layer_weights.items()}
        self.alpha, self.beta, self.tv_weight = float(alpha), float(beta), float(tv_weight)
        self.layers = list(dict.fromkeys(list(self.content_targets) + list(self.style_targets)))
        if not self.layers and self.tv_weight == 0:
            raise NstliteError("the objective has no terms: give content or style layers")

    def __call__(self, x):
        xp = self.net.xp
        grads, c_loss, s_loss, per_layer = {}, xp.zeros((), x.dtype), xp.zeros((), x.dtype), {}
        if self.layers:
            feats = self.net.forward(x, self.layers)
            # Each loss writes its gradient over the map it was computed from when the network
            # allows it (its fast path hands out copies it will overwrite on the next forward
            # anyway) and no other term reads that map: no map-sized array per evaluation.
            # alpha and beta (eq. 7) travel into the losses as gradient scales, applied to a
            # small matrix (style) or once (content) instead of in passes over every map.
            reuse = getattr(self.net, "features_writable", False)
            c_grads = {}
            for name, P in self.content_targets.items():
                into = feats[name] if reuse and name not in self.style_targets else None
                loss_l, dF = losses.content_loss(feats[name], P, self.alpha, into)  # eqs. (1), (2)
                c_loss = c_loss + loss_l
                c_grads[name] = dF
            if self.style_targets:
                into = {n: feats[n] for n in self.style_targets if reuse and n not in self.content_targets}
                s_loss, s_grads, per_layer = losses.style_loss(feats, self.style_targets, self.style_layer_weights,
                                                               self.beta, into)  # eqs. (4)-(6)
            else:
                s_grads = {}
            total, grads = losses.total_loss((c_loss, c_grads), (s_loss, s_grads), self.alpha, self.beta,
                                              in_place=True, weighted=True)  # eq. (7)
            dx = self.net.backward(grads)
        else:
            total, dx = xp.zeros((), x.dtype), xp.zeros_like(x)
        tv = xp.zeros((), x.dtype)
        if self.tv_weight:
            tv_l, dtv = losses.tv_loss(x)
            tv = self.tv_weight * tv_l
            total = total + tv
            dx = dx + dtv * self.tv_weight
        parts = {"total": total, "content": c_loss, "style": s_loss, "tv": tv, "style_layers": per_layer}
        return total, dx, parts


def content_targets(net, x, layers):
    """P^l for each content layer: the photograph's responses (copied, so later forwards cannot
    change them, in the maps' own memory layout so that F - P runs on like-laid-out arrays)."""
    feats = net.forward(x, layers)
    return {name: feats[name].copy(order="K") for name in layers}


def style_targets(net, style_xs, layers, blend_weights=None, positions=None):
    """A^l for each style layer: the Gram matrix (eq. 3) of the artwork's responses.

    With several artworks the targets are blended, A^l = sum_s b_s A_s^l (b_s summing to 1).
    ``positions`` maps layer -> M_l of the *generated* image: when an artwork's map has a
    different size M_s, its Gram matrix is rescaled by M_l / M_s so that E_l (eq. 4, which
    normalises by the generated image's M_l) compares like with like. The paper uses images of
    equal size, where the factor is 1.
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
    targets = {}
    for sx, b in zip(style_xs, blend_weights):
        feats = net.forward(sx, layers)
        for name in layers:
            F = feats[name]
            A = losses.gram(F)  # eq. (3)
            m_s = F.shape[1] * F.shape[2]
            scale = (b / total_w) * ((positions[name] / m_s) if positions else 1.0)
            targets[name] = targets[name] + A * scale if name in targets else A * scale
    return targets


def positions_of(net, x, layers):
    """layer -> M_l (height x width of the map) for an input of x's shape."""
    sizes = {name: net.map_size(name, x.shape[1], x.shape[2]) for name in layers}
    return {name: h * w for name, (h, w) in sizes.items()}
