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

import importlib
import os
import sys
import zlib

import numpy as np

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
    Fm = as_matrix(F)  # N_l x M_l
    return Fm @ Fm.T


def is_channels_last(F) -> bool:
    """True when the (C, H, W) array is a view of contiguous (H, W, C) memory, as the fast path's
    maps are (and not also channel-major, as a map with one channel or one position is)."""
    return F.transpose(1, 2, 0).flags.c_contiguous and not F.flags.c_contiguous


def as_matrix(F):
    """(C, H, W) map -> the paper's N_l x M_l matrix F^l as a view of F's memory: a reshape for
    channel-major memory, the transpose of the (M_l x N_l) rows of channels-last memory (a
    reshape would copy and transpose the whole map)."""
    if is_channels_last(F):
        return F.transpose(1, 2, 0).reshape(-1, F.shape[0]).T
    return F.reshape(F.shape[0], -1)


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
    """A global term: statistics of the whole map, compared with the artwork's.

    Subclasses define ``statistics``, ``value`` and ``gradient``; ``target`` is the artwork's
    statistics, ``blend`` mixes several artworks' targets, ``prepare`` derives once per run
    what every evaluation would otherwise recompute from the target (a matrix square root),
    and ``loss`` composes the three steps.
    """

    @property
    def tileable(self) -> bool:
        """True when the statistics are sums over positions: a tiled evaluator can add them up."""
        return bool(self.position_sums)

    # beta when the user gives none: each loss has its own scale. The paper's Gram loss takes
    # 1e4 (alpha/beta = 1e-4); the others the beta that puts the same style pressure on
    # Tubingen / The Starry Night at 256 px as Gram's 1e4 (beta E_style equal at the photo).
    default_weight: float = 1.0

    def statistics(self, F) -> dict:
        raise NotImplementedError

    def value(self, stats: dict, target: dict):
        raise NotImplementedError

    def gradient(self, F, stats: dict, target: dict):
        raise NotImplementedError

    def target(self, F):
        return self.statistics(F)

    def blend(self, targets: list, weights: list, positions: int) -> dict:
        """sum_s b_s target_s for weights b_s summing to 1, for a generated image of ``positions``
        positions: a statistic that is a sum over positions is first rescaled by
        positions / M_s, so that images of different sizes compare like with like (the
        paper's images are of equal size: the factor is 1). Other statistics are mixed as they are."""
        out = {}
        for target, b in zip(targets, weights):
            m_s = target["positions"]
            for key, value in target.items():
                scale = b * (positions / m_s if key in self.position_sums else 1.0)
                out[key] = out[key] + value * scale if key in out else value * scale
        return out

    def prepare(self, target: dict) -> dict:
        """The target as ``value`` and ``gradient`` read it (by default the blended statistics)."""
        return target

    def loss(self, F, target):
        stats = self.statistics(F)
        return self.value(stats, target), self.gradient(F, stats, target)


class GramLoss(StyleLoss):
    """The paper's style error E_l of eqs. (3), (4) and (6) at one layer.

    Statistics: ``gram`` (G = F F^T, eq. 3) and ``positions`` (M_l), both sums over positions.
    Equal to ``style_layer_loss(F, A)`` when the statistics are those of F itself.
    """

    default_weight = 1e4

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
        dF = as_matrix(F).T @ (diff / (float(n) ** 2 * float(m) ** 2))  # eq. (6), positions as rows
        if is_channels_last(F):  # in F's layout: (H W, C) rows are channels-last memory
            return dF.reshape(F.shape[1], F.shape[2], n).transpose(2, 0, 1)
        return dF.T.reshape(F.shape)


class GuidedGramLoss(GramLoss):
    """The Gram loss of one region (Gatys et al. 2017, spatial control by guided Gram matrices).

    The positions of F are weighted by the region's guide g at this layer (``nstlite.guides``):
    F_r = F diag(g), G_r = F_r F_r^T, and the region's size M_r = sum_k g_k^2 replaces M_l:

    E_r = 1 / (4 N^2 M_r^2) sum_ij (G_r - A_r)_ij^2
    dE_r/dF = ((G_r - A_r) F_r) diag(g) / (N^2 M_r^2)     (eq. 6 through F_r = F diag(g))

    With g = 1 everywhere this is ``GramLoss``. The target A_r is the Gram matrix of the
    artwork's map weighted by ``target_guide`` (its own region), or of the whole artwork (None),
    rescaled to M_r positions.
    """

    tileable = False  # the guide covers the whole map (a tiled evaluator would need its crops)

    def __init__(self, layer: str, guide, target_guide=None, region: str = ""):
        super().__init__(layer)
        self.guide, self.target_guide, self.region = guide, target_guide, region
        self.region_positions = float((guide * guide).sum())
        if not self.region_positions > 0:
            raise NstliteError(f"region {region!r} covers no position at {layer}: make it larger or leave "
                               f"{layer} out of the style layers")

    @staticmethod
    def _guided(F, g):
        return F if g is None else F * g  # (C, H, W) times (H, W)

    def statistics(self, F):
        return {"gram": gram(self._guided(F, self.guide)), "positions": self.region_positions}

    def target(self, F):
        g = self.target_guide
        return {"gram": gram(self._guided(F, g)), "positions": float((g * g).sum()) if g is not None else F[0].size}

    def blend(self, targets, weights, positions):
        return super().blend(targets, weights, self.region_positions)  # the region's size, not M_l

    def gradient(self, F, stats, target):
        return super().gradient(self._guided(F, self.guide), stats, target) * self.guide


class TVLoss(LossTerm):
    """The total-variation regulariser on the image: a local term without a target."""

    def __init__(self, layer: str = INPUT):
        super().__init__(layer)

    def target(self, F):
        return {}

    def loss(self, x, target):
        return tv_loss(x)


# --------------------------------------------------------------------------- beyond the paper
class MeanStdLoss(StyleLoss):
    """Matching each channel's mean and standard deviation (Li et al. 2017, *Demystifying
    Neural Style Transfer*, IJCAI).

    E = (1/N) sum_i [(mu_i - mu^_i)^2 + (sigma_i - sigma^_i)^2], over positions k:
    mu_i = (1/M) sum_k F_ik, sigma_i = sqrt((1/M) sum_k F_ik^2 - mu_i^2 + eps)  (population std)

    dE/dF_ik = 2 / (N M) [(mu_i - mu^_i) + (sigma_i - sigma^_i) (F_ik - mu_i) / sigma_i]
    (dmu_i/dF_ik = 1/M, dsigma_i/dF_ik = (F_ik - mu_i) / (M sigma_i)).

    eps = STD_EPS keeps dsigma/dF finite on a constant channel (a dead ReLU). The statistics
    are the sums of F and F^2 over positions, so the loss is exact under tiling; the variance
    is formed from them, which costs float32 digits when a channel's mean is much larger than
    its spread.
    """

    default_weight = 2e8

    position_sums = ("sum", "sum_sq", "positions")
    STD_EPS = 1e-5

    def statistics(self, F):
        Fm = F.reshape(F.shape[0], -1)
        return {"sum": Fm.sum(axis=1), "sum_sq": (Fm * Fm).sum(axis=1), "positions": Fm.shape[1]}

    def moments(self, stats):
        """(mu, sigma) per channel from the position sums, in float64 (the variance cancels digits)."""
        xp = get_array_module(stats["sum"])
        m = stats["positions"]
        mu = stats["sum"].astype(xp.float64) / m
        var = stats["sum_sq"].astype(xp.float64) / m - mu * mu
        return mu, xp.sqrt(xp.maximum(var, 0.0) + self.STD_EPS)

    def value(self, stats, target):
        (mu, sd), (mu_t, sd_t) = self.moments(stats), self.moments(target)
        return ((((mu - mu_t) ** 2).sum() + ((sd - sd_t) ** 2).sum()) / mu.shape[0]).astype(stats["sum"].dtype)

    def gradient(self, F, stats, target):
        (mu, sd), (mu_t, sd_t) = self.moments(stats), self.moments(target)
        n, m = mu.shape[0], stats["positions"]
        Fm = F.reshape(n, -1)
        mu, shift, scale = (v.astype(F.dtype) for v in (mu, mu - mu_t, (sd - sd_t) / sd))
        dF = shift[:, None] + scale[:, None] * (Fm - mu[:, None])
        return (dF * (2.0 / (n * m))).reshape(F.shape)


class GaussianW2Loss(StyleLoss):
    """Squared Wasserstein-2 distance between Gaussians fitted to the features, per channel.

    With mu, Sigma the mean and covariance of F's columns (positions) and mu^, Sigma^ the
    artwork's, S = Sigma^^(1/2) and C = S Sigma S:

    E = (1/N) [ |mu - mu^|^2 + tr Sigma + tr Sigma^ - 2 tr C^(1/2) ]
    dE/dSigma = (1/N) (I - S C^(-1/2) S)      (d tr C^(1/2) = 1/2 tr(C^(-1/2) S dSigma S))
    dE/dF = 2 / (N M) [ (I - S C^(-1/2) S)(F - mu 1^T) + (mu - mu^) 1^T ]
    (Sigma = F F^T / M - mu mu^T, so d tr(B Sigma)/dF = 2/M B (F - mu 1^T) for symmetric B).

    C^(1/2) and C^(-1/2) come from one C x C symmetric eigendecomposition per evaluation (also by
    tiles); S once per run (``prepare``). Regularisation: eps I is added to both covariances, with
    eps = W2_EPS times the artwork's mean channel variance (fixed for the run), so C is positive
    definite and the regularised distance is one smooth function whose gradient is exact.
    The statistics (sums of F and of F F^T over positions) are exact under tiling.
    """

    default_weight = 1e8

    position_sums = ("sum", "outer", "positions")
    W2_EPS = 1e-5

    def statistics(self, F):
        Fm = F.reshape(F.shape[0], -1)
        return {"sum": Fm.sum(axis=1), "outer": Fm @ Fm.T, "positions": Fm.shape[1]}

    @staticmethod
    def moments(stats):
        """(mu, Sigma) in float64: the N x N algebra is cheap, and Sigma = F F^T / M - mu mu^T
        cancels digits that float32 does not have to spare."""
        xp = get_array_module(stats["sum"])
        mu = stats["sum"].astype(xp.float64) / stats["positions"]
        return mu, stats["outer"].astype(xp.float64) / stats["positions"] - mu[:, None] * mu[None, :]

    def prepare(self, target):
        xp = get_array_module(target["sum"])
        mu_t, cov_t = self.moments(target)
        n = mu_t.shape[0]
        eps = self.W2_EPS * float(xp.trace(cov_t)) / n + 1e-12
        lam, V = xp.linalg.eigh(cov_t + eps * xp.eye(n))
        sqrt_t = (V * xp.sqrt(xp.maximum(lam, 0.0))) @ V.T
        return {**target, "mean": mu_t, "eps": eps, "sqrt": sqrt_t, "trace": float(xp.trace(cov_t)) + n * eps}

    def _transport(self, stats, target):
        """(mu - mu^, the value, I - S C^(-1/2) S) from one eigendecomposition of C (float64;
        the value and B come back in the features' dtype). Kept for the statistics it was made
        from: a tiled evaluation asks for the value once and for the gradient on every tile, all
        with the same global statistics (the memo holds them, so their identity cannot be reused)."""
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] is stats and memo[1] is target:
            return memo[2]
        self._memo = (stats, target, self._transport_of(stats, target))
        return self._memo[2]

    def _transport_of(self, stats, target):
        xp = get_array_module(stats["sum"])
        dtype = stats["sum"].dtype
        mu, cov = self.moments(stats)
        n, S = mu.shape[0], target["sqrt"]
        cov = cov + target["eps"] * xp.eye(n)
        lam, V = xp.linalg.eigh(S @ cov @ S)
        # C is positive definite (eps I in both covariances); the floor only absorbs rounding
        root = xp.sqrt(xp.maximum(lam, float(lam.max()) * 1e-14))
        dmu = mu - target["mean"]
        value = ((dmu * dmu).sum() + xp.trace(cov) + target["trace"] - 2.0 * root.sum()) / n
        B = xp.eye(n) - S @ ((V / root) @ V.T) @ S
        return dmu.astype(dtype), value.astype(dtype), B.astype(dtype)

    def value(self, stats, target):
        return self._transport(stats, target)[1]

    def gradient(self, F, stats, target):
        return self._gradient(F, stats, *self._transport(stats, target)[::2])

    def _gradient(self, F, stats, dmu, B):
        n, m = dmu.shape[0], stats["positions"]
        Fm = F.reshape(n, -1)
        mu = stats["sum"] / m
        return ((B @ (Fm - mu[:, None]) + dmu[:, None]) * (2.0 / (n * m))).reshape(F.shape)

    def loss(self, F, target):
        stats = self.statistics(F)
        dmu, value, B = self._transport(stats, target)
        return value, self._gradient(F, stats, dmu, B)


class HistogramLoss(StyleLoss):
    """Exact per-channel histogram matching (Risser, Wilmot & Barnes 2017).

    R(F) gives each F_ik the artwork's channel-i value of the same rank (its quantile
    (r + 1/2)/M, interpolated linearly between the artwork's sorted values when M differs
    from the artwork's M_s). E = (1/(N M)) sum_ik (F_ik - R(F)_ik)^2 and
    dE/dF = 2 (F - R(F)) / (N M): R is constant between rank changes, and the value is the 1-D
    squared Wasserstein-2 distance of each channel's distributions, whose gradient this is
    (exact almost everywhere: not where two values of a channel tie).

    Not exact under tiling: R needs each channel's ranks over the whole image (a global sort).
    Several artworks blend as the average of their quantile functions (the 1-D W2 barycentre).
    """

    default_weight = 1e8

    def project(self, Fm):
        """The rows whose distributions are matched: the channels themselves."""
        return Fm

    def back_project(self, dP, n):
        return dP

    def statistics(self, F):
        P = self.project(F.reshape(F.shape[0], -1))
        xp = get_array_module(P)
        return {"sorted": xp.sort(P, axis=1), "positions": P.shape[1]}

    def blend(self, targets, weights, positions):
        length = max(t["sorted"].shape[1] for t in targets)
        mixed = sum(b * self.quantiles(t["sorted"], length) for t, b in zip(targets, weights))
        return {"sorted": mixed, "positions": positions}

    @staticmethod
    def quantiles(sorted_values, m):
        """The sorted rows resampled at the m levels (r + 1/2)/m, r = 0 .. m-1 (linear interpolation)."""
        xp = get_array_module(sorted_values)
        m_t = sorted_values.shape[1]
        if m == m_t:
            return sorted_values
        pos = xp.clip((xp.arange(m) + 0.5) * (m_t / m) - 0.5, 0.0, m_t - 1.0)
        lo = xp.minimum(xp.floor(pos).astype(xp.int64), m_t - 2) if m_t > 1 else xp.zeros(m, dtype=xp.int64)
        frac = (pos - lo).astype(sorted_values.dtype)
        hi = xp.minimum(lo + 1, m_t - 1)
        return sorted_values[:, lo] * (1 - frac) + sorted_values[:, hi] * frac

    def value(self, stats, target):
        d = stats["sorted"] - self.quantiles(target["sorted"], stats["positions"])
        return (d * d).sum() / d.size

    def gradient(self, F, stats, target):
        xp = get_array_module(F)
        n = F.shape[0]
        P = self.project(F.reshape(n, -1))
        order = xp.argsort(P, axis=1)
        R = xp.empty_like(P)  # the matched values, R[i, order[i, r]] = quantile r of row i
        R[xp.arange(P.shape[0])[:, None], order] = self.quantiles(target["sorted"], P.shape[1])
        return self.back_project((P - R) * (2.0 / P.size), n).reshape(F.shape)


class SlicedWassersteinLoss(HistogramLoss):
    """Sliced Wasserstein distance of the features (Heitz et al. 2021, CVPR).

    Histogram matching (as ``HistogramLoss``) of the projections P = D^T F along K unit
    directions in channel space, the columns of D (N x K; K = N by default):
    E = (1/(K M)) sum (P - R(P))^2, dE/dF = D dE/dP = 2 D (P - R(P)) / (K M).

    The directions are drawn once per layer from ``seed`` and frozen, so that the line search
    sees one deterministic function. Not exact under tiling (a global sort per direction).
    """

    default_weight = 2e8

    def __init__(self, layer: str, directions: int | None = None, seed: int = 0):
        super().__init__(layer)
        if directions is not None and int(directions) < 1:
            raise NstliteError(f"sliced Wasserstein needs at least one direction, not {directions}")
        self.count, self.seed, self._D = directions, seed, {}

    def directions(self, n, xp, dtype):
        """The frozen N x K matrix of unit directions (columns) for maps of n channels, drawn on
        the host from (seed, layer name) and kept on the device."""
        key = (n, xp.__name__, np.dtype(dtype).str)
        if key not in self._D:
            rng = np.random.default_rng([self.seed, zlib.crc32(self.layer.encode())])
            D = rng.standard_normal((n, int(self.count or n)))
            self._D[key] = xp.asarray(D / np.linalg.norm(D, axis=0), dtype=dtype)
        return self._D[key]

    def project(self, Fm):
        xp = get_array_module(Fm)
        return self.directions(Fm.shape[0], xp, Fm.dtype).T @ Fm

    def back_project(self, dP, n):
        xp = get_array_module(dP)
        return self.directions(n, xp, dP.dtype) @ dP


# Style losses by name (``stylize(..., style_loss=name)``, ``--style-loss``).
STYLE_LOSSES = {"gram": GramLoss, "mean_std": MeanStdLoss, "gaussian_w2": GaussianW2Loss,
                "histogram": HistogramLoss, "sliced_wasserstein": SlicedWassersteinLoss}


def style_loss_class(name: str):
    """The StyleLoss subclass registered as ``name``, or named ``package.module:Class`` (a
    user-written loss); a one-line error otherwise."""
    if name in STYLE_LOSSES:
        return STYLE_LOSSES[name]
    if ":" not in name:
        raise NstliteError(f"unknown style loss {name!r}; choose one of {', '.join(sorted(STYLE_LOSSES))}, "
                           "or give package.module:Class")
    module_name, _, class_name = name.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # a module in the current folder resolves from the console script too
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise NstliteError(f"cannot load style loss {name!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, StyleLoss)):
        raise NstliteError(f"{name} is not a subclass of nstlite.losses.StyleLoss")
    return cls


def parse_style_losses(spec: str) -> list:
    """``"gram"``, ``"gram:1,histogram:0.5"`` or ``"mypkg.mod:MyLoss:2"`` -> [(class, weight)]."""
    out = []
    for item in (part.strip() for part in str(spec).split(",")):
        name, weight = item, 1.0
        head, sep, tail = item.rpartition(":")
        if sep:
            try:
                name, weight = head, float(tail)
            except ValueError:
                pass  # "package.module:Class" without a weight
        if not name:
            raise NstliteError(f"empty style loss name in {spec!r}")
        if not weight >= 0 or weight == float("inf"):
            raise NstliteError(f"style loss weight must be finite and >= 0, not {tail!r} in {spec!r}")
        out.append((style_loss_class(name), weight))
    return out
