"""The losses of Gatys, Ecker & Bethge (2015), each with its analytic gradient, and the
loss-term protocol the objective is composed of.

Reference
---------
L. A. Gatys, A. S. Ecker, M. Bethge. *A Neural Algorithm of Artistic Style*. arXiv:1508.06576, 2015.
Equation numbers below are the paper's.

Symbols
-------
========  =====================================================================
F^l       response of layer l to the generated image, an N_l x M_l matrix:
          N_l filters (channels) by M_l positions (height x width). In code a
          feature map ``F`` of shape (C, H, W) is the matrix ``F.reshape(C, H*W)``.
P^l       response of layer l to the photograph (content target)
G^l       Gram matrix of the generated image, G^l = F^l F^l^T   (eq. 3)
A^l       Gram matrix of the artwork (style target)
E_l       style error of layer l                                 (eq. 4)
w_l       weight of layer l in the style loss                    (eq. 5)
alpha     content weight, beta style weight                      (eq. 7)
========  =====================================================================

Every loss function takes arrays and returns ``(loss, gradient)``; the gradient has the shape
of the input map. Losses are 0-d arrays on the input's device (no host sync): read one with
``nstlite.backend.scalar`` outside hot loops.

Notes
-----
The paper writes the derivatives of eqs. (2) and (6) with a factor "if F_ij^l > 0, else 0".
That factor is the derivative of the ReLU that produced F^l. Here the losses return the
unmasked derivative with respect to the rectified response, and the ReLU backward
(``nstlite.layers.relu_backward``) applies the mask, once, when the gradient travels back
through the network.

These functions are the plain statement of the paper and the oracle of the engine's fused,
in-place kernels (``nstlite.fast.losses``), which the objective uses where they apply.

The loss-term protocol
----------------------
The objective (``nstlite.objective.Objective``) is composed of *terms*. A term is an object with

``layer``
    the VGG19 layer it reads (``"conv4_2"``), or ``INPUT`` for the image itself (TV).
``target(F) -> statistics``
    what it needs of the photograph's or the artwork's (C, H, W) map ``F``, as a dict of arrays.
``loss(F, statistics) -> (value, dF)``
    its value on the generated image's (C, H, W) map and the derivative with respect to ``F``.
``position_sums``
    the names of the statistics that are *sums over positions* (a Gram matrix
    sum_k F_ik F_jk, a sum of F, the count of positions itself). Such statistics can be
    accumulated tile by tile over a large image, and two images of different sizes compare
    after rescaling by their numbers of positions. A term whose ``position_sums`` is empty
    and that has no ``statistics`` method is *local*: its value is a sum over positions of
    something that depends on the position only (the content loss, TV).

A term whose statistics are all position sums (a *global* term, every style loss) splits
``loss`` into three steps, so that an evaluator can compute the statistics of a large image
tile by tile and then each tile's gradient from the global statistics:

``statistics(F)``
    the generated image's statistics (the same dict ``target`` makes of the artwork's map);
``value(statistics, target)``
    the loss from the generated image's statistics;
``gradient(F, statistics, target)``
    dvalue/dF at the positions of ``F``, given the (global) statistics.

Worked example: a style loss that matches the mean response of each channel,
E = 1/(2N) sum_i (mu_i - mu^_i)^2 with mu_i = (1/M) sum_k F_ik, so dE/dF_ik = (mu_i - mu^_i) / (N M)::

    class MeanLoss(StyleLoss):
        position_sums = ("sum", "positions")

        def statistics(self, F):
            c = F.shape[0]
            return {"sum": F.reshape(c, -1).sum(axis=1), "positions": F[0].size}

        def value(self, stats, target):
            d = stats["sum"] / stats["positions"] - target["sum"] / target["positions"]
            return (d * d).sum() / (2 * d.size)

        def gradient(self, F, stats, target):
            xp = get_array_module(F)
            d = stats["sum"] / stats["positions"] - target["sum"] / target["positions"]
            return xp.broadcast_to((d / (d.size * stats["positions"]))[:, None, None], F.shape).copy()

    STYLE_LOSSES["mean"] = MeanLoss     # nstlite.stylize(..., style_loss="mean") now uses it

Its gradient needs a gradcheck row (``check_loss`` on ``lambda F: term.loss(F, target)``) and a
test that the row fails on a wrong gradient (see CONTRIBUTING.md).
"""
from __future__ import annotations

from .backend import get_array_module
from .errors import NstliteError

INPUT = "input"  # the pseudo-layer of a term that reads the image itself (TV)


# --------------------------------------------------------------------------- eqs. (1)-(2)
def content_loss(F, P):
    """Squared-error content loss and its gradient.

    L_content(p, x, l) = 1/2 sum_ij (F_ij^l - P_ij^l)^2                      eq. (1)
    dL/dF_ij^l = F_ij^l - P_ij^l    (the ReLU backward applies "F > 0")        eq. (2)

    Parameters
    ----------
    F, P : (C, H, W) feature maps of the generated image and of the photograph.

    Returns
    -------
    (loss, dF) : a 0-d array and an array shaped like F.
    """
    xp = get_array_module(F)
    dF = F - P  # eq. (2)
    return 0.5 * xp.sum(dF * dF), dF  # eq. (1)


# --------------------------------------------------------------------------- eq. (3)
def gram(F):
    """Gram matrix G^l = F^l F^l^T, i.e. G_ij = sum_k F_ik F_jk.                   eq. (3)

    F : (C, H, W) feature map -> G : (C, C).
    """
    Fm = F.reshape(F.shape[0], -1)  # N_l x M_l
    return Fm @ Fm.T


def gram_backward(dG, F):
    """Gradient of a function of G = F F^T with respect to F, given dG = d/dG.

    d/dF_ik sum_ab dG_ab G_ab = ((dG + dG^T) F)_ik: each entry of F enters row i and column i of G.
    With dG = (G - A) / (2 N^2 M^2), the derivative of eq. (4), and symmetric G - A this is
    eq. (6).

    dG : (C, C); F : (C, H, W) -> dF : (C, H, W).
    """
    Fm = F.reshape(F.shape[0], -1)
    return ((dG + dG.T) @ Fm).reshape(F.shape)


# --------------------------------------------------------------------------- eqs. (4), (6)
def style_layer_loss(F, A):
    """Style error of one layer and its gradient.

    E_l = 1 / (4 N_l^2 M_l^2) sum_ij (G_ij^l - A_ij^l)^2                       eq. (4)
    dE_l/dF_ij^l = 1 / (N_l^2 M_l^2) ((F^l)^T (G^l - A^l))_ji                  eq. (6)
    (the ReLU backward applies the paper's "F > 0" factor)

    Parameters
    ----------
    F : (C, H, W) feature map of the generated image.
    A : (C, C) Gram matrix of the artwork. Eq. (6) is the derivative of eq. (4) when A is
        symmetric, as every Gram matrix (and every blend of them) is.

    Returns
    -------
    (E_l, dF) : a 0-d array and an array shaped like F.
    """
    xp = get_array_module(F)
    n, m = F.shape[0], F.shape[1] * F.shape[2]
    norm = float(n) ** 2 * float(m) ** 2  # N_l^2 M_l^2 as a Python float: keeps F's dtype
    Fm = F.reshape(n, m)
    G = Fm @ Fm.T  # eq. (3)
    E = xp.sum((G - A) ** 2) / (4.0 * norm)  # eq. (4)
    dF = (Fm.T @ (G - A)).T / norm  # eq. (6)
    return E, dF.reshape(F.shape)


# --------------------------------------------------------------------------- eq. (5)
def style_loss(feats, targets, layer_weights):
    """Weighted sum of the layers' style errors.

    L_style(a, x) = sum_l w_l E_l                                             eq. (5)
    dL_style/dF^l = w_l dE_l/dF^l

    Parameters
    ----------
    feats : dict layer name -> (C, H, W) response of the generated image
    targets : dict layer name -> (C, C) Gram matrix A^l of the artwork
    layer_weights : dict layer name -> w_l

    Returns
    -------
    (loss, grads, per_layer) : grads maps layer -> dL_style/dF^l, per_layer maps layer -> E_l.
    """
    loss, grads, per_layer = 0.0, {}, {}
    for name, w_l in layer_weights.items():
        E_l, dF = style_layer_loss(feats[name], targets[name])
        loss = loss + w_l * E_l  # eq. (5)
        grads[name], per_layer[name] = w_l * dF, E_l
    return loss, grads, per_layer


# --------------------------------------------------------------------------- eq. (7)
def total_loss(content, style, alpha, beta):
    """L_total = alpha L_content + beta L_style.                                   eq. (7)

    Parameters
    ----------
    content, style : (loss, grads) pairs, grads a dict layer -> dL/dF^l.
    alpha, beta : the content and style weights.

    Returns
    -------
    (loss, grads) : grads maps every layer of either term to alpha dL_content/dF^l + beta dL_style/dF^l.
    """
    (c_loss, c_grads), (s_loss, s_grads) = content, style
    grads = {name: alpha * g for name, g in c_grads.items()}
    for name, g in s_grads.items():
        grads[name] = grads[name] + beta * g if name in grads else beta * g
    return alpha * c_loss + beta * s_loss, grads


# --------------------------------------------------------------------------- TV
def tv_loss(x):
    """Total-variation regulariser with squared differences (not in the 2015 paper; a common
    smoothness prior, e.g. Mahendran & Vedaldi 2015, jcjohnson/neural-style).

    L_tv = sum_{c,i,j} (x[c,i+1,j] - x[c,i,j])^2 + (x[c,i,j+1] - x[c,i,j])^2

    x : (C, H, W) image -> (loss 0-d array, dx with the shape of x).
    Each difference d = x[b] - x[a] adds 2d to dx[b] and -2d to dx[a].
    """
    xp = get_array_module(x)
    dv = x[:, 1:, :] - x[:, :-1, :]  # vertical neighbours
    dh = x[:, :, 1:] - x[:, :, :-1]  # horizontal neighbours
    loss = xp.sum(dv * dv) + xp.sum(dh * dh)
    dx = xp.zeros_like(x)
    dx[:, 1:, :] += 2 * dv
    dx[:, :-1, :] -= 2 * dv
    dx[:, :, 1:] += 2 * dh
    dx[:, :, :-1] -= 2 * dh
    return loss, dx


# --------------------------------------------------------------------------- loss terms
class LossTerm:
    """A term of the objective: see "The loss-term protocol" in the module docstring.

    Parameters
    ----------
    layer : the layer the term reads (``INPUT`` for the image).
    """

    position_sums: tuple = ()

    def __init__(self, layer: str):
        self.layer = layer

    def target(self, F) -> dict:
        """The statistics of the photograph's or artwork's (C, H, W) map that ``loss`` compares with."""
        raise NotImplementedError

    def loss(self, F, target: dict):
        """(value, dvalue/dF) on the generated image's (C, H, W) map ``F``."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.layer!r})"


class ContentLoss(LossTerm):
    """The content loss of eqs. (1)-(2) at one layer: a local term, its target the map P^l itself."""

    def target(self, F):
        xp = get_array_module(F)
        return {"P": xp.array(F, copy=True)}  # a copy: the network reuses its buffers

    def loss(self, F, target):
        return content_loss(F, target["P"])


class StyleLoss(LossTerm):
    """A global term: statistics of the whole map (sums over positions), compared with the artwork's.

    Subclasses define ``statistics``, ``value`` and ``gradient``; ``target`` is the artwork's
    statistics and ``loss`` composes the three steps.
    """

    def statistics(self, F) -> dict:
        raise NotImplementedError

    def value(self, stats: dict, target: dict):
        raise NotImplementedError

    def gradient(self, F, stats: dict, target: dict):
        raise NotImplementedError

    def target(self, F):
        return self.statistics(F)

    def loss(self, F, target):
        stats = self.statistics(F)
        return self.value(stats, target), self.gradient(F, stats, target)


class GramLoss(StyleLoss):
    """The paper's style error E_l of eqs. (3), (4) and (6) at one layer.

    Statistics: ``gram`` (G = F F^T, eq. 3) and ``positions`` (M_l), both sums over positions.
    Equal to ``style_layer_loss(F, A)`` when the statistics are those of F itself.
    """

    position_sums = ("gram", "positions")

    def statistics(self, F):
        return {"gram": gram(F), "positions": F.shape[1] * F.shape[2]}  # eq. (3)

    def value(self, stats, target):
        xp = get_array_module(stats["gram"])
        diff = stats["gram"] - target["gram"]
        n, m = diff.shape[0], stats["positions"]
        return xp.sum(diff * diff) / (4.0 * float(n) ** 2 * float(m) ** 2)  # eq. (4)

    def gradient(self, F, stats, target):
        diff = stats["gram"] - target["gram"]
        n, m = diff.shape[0], stats["positions"]
        Fm = F.reshape(n, -1)
        return ((Fm.T @ diff).T / (float(n) ** 2 * float(m) ** 2)).reshape(F.shape)  # eq. (6)


class TVLoss(LossTerm):
    """The total-variation regulariser on the image: a local term without a target."""

    def __init__(self, layer: str = INPUT):
        super().__init__(layer)

    def target(self, F):
        return {}

    def loss(self, x, target):
        return tv_loss(x)


# Style losses by name (``stylize(..., style_loss=name)``, ``--style-loss``).
STYLE_LOSSES = {"gram": GramLoss}


def style_loss_class(name: str):
    """The StyleLoss subclass registered as ``name``; a one-line error for an unknown name."""
    try:
        return STYLE_LOSSES[name]
    except KeyError:
        raise NstliteError(f"unknown style loss {name!r}; choose one of {', '.join(sorted(STYLE_LOSSES))}") from None
