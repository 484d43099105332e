"""Fused loss kernels: a term's value and its *weighted* gradient, written over the feature map.

The paper's losses are stated plainly in ``nstlite.losses``; these kernels compute the same
numbers with what the evaluation loop needs folded in, and are tested against them:

* the term's weight (alpha, beta w_l of eq. 7) scales the gradient inside the kernel - for the
  style loss it multiplies the small N_l x N_l matrix G - A, not the map;
* the gradient may overwrite the map it was computed from (``out=F``): the channels-last VGG19
  path hands out copies that nothing else reads, so no map-sized array is allocated per
  evaluation (64 MB at conv1_1 of a 512 px image);
* the map may be channel-major (C, H, W) memory or a (C, H, W) view of channels-last (H, W, C)
  memory; F is used as a view in either case and the gradient is written in F's own layout.

``evaluate`` picks the fused kernel of a term's class, or falls back to the term's own
``loss`` (so a user-written term works unchanged).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..losses import ContentLoss, GramLoss, as_matrix, is_channels_last
from .workspace import block_bytes_for

# Positions per product of eq. (6) when the gradient overwrites F itself: each block's product
# goes to a small scratch array first, so that the block can then replace its rows of F. On the
# CPU a cache-sized block; on a GPU the device-sized blocks of the conv kernels
# (``workspace.block_bytes_for``): usually the whole map, one product.
GRADIENT_BLOCK_BYTES = 4 << 20


def content_loss_into(F, P, scale=1.0, out=None):
    """``losses.content_loss(F, P)`` as (value, scale * dF), dF written into ``out`` (may be F)."""
    xp = get_array_module(F)
    diff = xp.subtract(F, P, out=out)  # eq. (2)
    loss = 0.5 * xp.sum(diff * diff)  # eq. (1)
    if scale != 1.0:
        diff *= scale
    return loss, diff


GRAM_PARTS = 8  # position ranges of a split Gram product: fixed, so the sum does not depend on the threads


def gram_split(Fm, ws=None):
    """F F^T (eq. 3) of an N x M matrix. On the CPU (M >= 4096) the sum of the products of
    GRAM_PARTS fixed position ranges, added in order, so the numbers are the same with any
    number of threads; a workspace (``Workspace.parallel_gemms``) shares the products out over
    its threads, each on one BLAS thread. OpenBLAS's own threading of one call waits for its
    second thread at every call, which on a contended machine cost 50x a quiet call
    (``docs/performance.md``)."""
    xp, m = get_array_module(Fm), Fm.shape[1]
    if xp is not np or m < 4096:
        return Fm @ Fm.T
    bounds = [m * i // GRAM_PARTS for i in range(GRAM_PARTS + 1)]
    parts = [None] * GRAM_PARTS

    def products(r):
        for i in range(r.start, r.stop):
            cols = slice(bounds[i], bounds[i + 1])
            parts[i] = Fm[:, cols] @ Fm[:, cols].T

    if ws is None:
        products(slice(0, GRAM_PARTS))
    else:
        ws.parallel_gemms(products, GRAM_PARTS)
    total = parts[0]
    for part in parts[1:]:
        xp.add(total, part, out=total)
    return total


def style_layer_loss_into(F, A, scale=1.0, out=None, ws=None):
    """``losses.style_layer_loss(F, A)`` as (E_l, scale * dE_l/dF), written into ``out``.

    ``out`` has F's shape and memory layout and may be F itself: eq. (6) then runs over blocks
    of positions, each block's product going to scratch before it replaces the block of F it
    was computed from. None allocates a new array in F's layout. ``ws``: the network's
    workspace, whose threads then share the products (each on one BLAS thread).
    """
    xp = get_array_module(F)
    Fm = as_matrix(F)
    n, m = Fm.shape
    norm = float(n) ** 2 * float(m) ** 2
    diff = gram_split(Fm, ws) - A  # eq. (3): G - A
    loss = xp.sum(diff * diff) / (4.0 * norm)  # eq. (4)
    diff *= scale / norm  # the weight and 1 / (N^2 M^2) on the N x N matrix, not on the map
    if out is None:
        out = xp.empty_like(F)  # empty_like keeps the order of F's strides
    in_place = xp.may_share_memory(out, F)
    block_bytes = GRADIENT_BLOCK_BYTES if xp is np else block_bytes_for(xp)
    step = max(1, block_bytes // (n * F.itemsize)) if in_place else m
    dF = as_matrix(out)
    # The product is formed in the orientation of F's memory so that it writes whole rows:
    # channels-last, eq. (6) as written, F^T (G - A) with positions as rows; channel-major its
    # transpose (G - A)^T F with positions as columns.
    last = is_channels_last(F)

    n_blocks = -(-m // step)

    def blocks(r):  # blocks r of the fixed grid of ``step`` positions, each through scratch
        scratch = xp.empty(min(step, m) * n, dtype=F.dtype) if in_place else None
        for b in range(r.start, r.stop):
            k0, k1 = b * step, min((b + 1) * step, m)
            block = dF.T[k0:k1] if last else dF[:, k0:k1]
            into = scratch[:block.size].reshape(block.shape) if in_place else block
            if last:
                xp.matmul(Fm.T[k0:k1], diff, out=into)  # eq. (6)
            else:
                xp.matmul(diff.T, Fm[:, k0:k1], out=into)
            if in_place:
                block[...] = into

    if ws is not None and ws._blas_local is not None and n_blocks > 1:
        ws.parallel_gemms(blocks, n_blocks)  # blocks write disjoint rows of dF
    else:
        blocks(slice(0, n_blocks))
    return loss, out


def _content_term(term, F, target, scale, out, ws):
    return content_loss_into(F, target["P"], scale, out)


def _gram_term(term, F, target, scale, out, ws):
    return style_layer_loss_into(F, target["gram"], scale, out, ws)


# term class -> fused kernel (exact classes only: a subclass may redefine its loss)
FUSED = {ContentLoss: _content_term, GramLoss: _gram_term}


def evaluate(term, F, target, scale=1.0, out=None, ws=None):
    """(value, scale * dvalue/dF) of a loss term, the gradient written into ``out`` when given
    (``out`` may be F). Uses the fused kernel of the term's class, else the term's own ``loss``;
    ``ws`` (the network's workspace, or None) lends its threads to the kernel's products."""
    kernel = FUSED.get(type(term))
    if kernel is not None:
        return kernel(term, F, target, scale, out, ws)
    xp = get_array_module(F)
    value, dF = term.loss(F, target)
    if out is None:
        return value, dF * scale
    xp.multiply(dF, scale, out=out)
    return value, out
