"""The losses of Gatys, Ecker & Bethge (2015), each with its analytic gradient.

Reference
---------
L. A. Gatys, A. S. Ecker, M. Bethge. *A Neural Algorithm of Artistic Style*. arXiv:1508.06576, 2015.
Equation numbers below are the paper's.

Symbols
-------
========  =====================================================================
F^l       response of layer l to the generated image, an N_l x M_l matrix:
          N_l filters (channels) by M_l positions (height x width). In code a
          feature map ``feat`` of shape (C, H, W) is ``F = feat.reshape(C, H*W)``.
P^l       response of layer l to the photograph (content target)
G^l       Gram matrix of the generated image, G^l = F^l F^l^T   (eq. 3)
A^l       Gram matrix of the artwork (style target)
E_l       style error of layer l                                 (eq. 4)
w_l       weight of layer l in the style loss                    (eq. 5)
alpha     content weight, beta style weight                      (eq. 7)
========  =====================================================================

Every function takes arrays and returns ``(loss, gradient)``; the gradient has the shape of
the input map. Losses are 0-d arrays on the input's device (no host sync): call
``nstlite.backend.scalar`` outside hot loops to read one.

Notes
-----
The paper writes the derivatives of eqs. (2) and (6) with a factor "if F_ij^l > 0, else 0".
That factor is the derivative of the ReLU that produced F^l. Here the losses return the
unmasked derivative with respect to the rectified response and the ReLU backward
(``nstlite.layers.relu_backward``) applies the mask, once, when the gradient travels back
through the network. Applying it in the loss as well would be harmless but redundant.

A feature map may be stored channel by channel ((C, H, W) memory: F row by row) or position by
position (channels-last (H, W, C) memory seen through ``transpose(2, 0, 1)``, as the fast
VGG19 path hands its maps out: F^T row by row). ``_as_matrix`` returns F as a view in either
case, and eq. (6) is evaluated in the orientation that writes dF in F's own layout, so neither
the loss nor the network backward has to copy a map into the other layout.
"""
from .backend import get_array_module


def _as_matrix(feat):
    """(C, H, W) feature map -> the paper's N_l x M_l matrix F^l, a view of feat's memory.

    Channel-major memory is F row by row (a reshape); channels-last memory is F^T (M_l x N_l)
    row by row, and F is its transpose (a reshape would copy the whole map).
    """
    c = feat.shape[0]
    if _channels_last(feat):
        return feat.transpose(1, 2, 0).reshape(-1, c).T
    return feat.reshape(c, -1)


def _channels_last(feat):
    """True when the (C, H, W) array is a view of contiguous (H, W, C) memory (and not also
    channel-major, as a map with one channel or one position is)."""
    return feat.transpose(1, 2, 0).flags.c_contiguous and not feat.flags.c_contiguous


def content_loss(F, P, grad_scale=1.0, out=None):
    """Squared-error content loss and its gradient.

    L_content(p, x, l) = 1/2 sum_ij (F_ij^l - P_ij^l)^2                      eq. (1)
    dL/dF_ij^l = F_ij^l - P_ij^l    (the ReLU backward applies "F > 0")        eq. (2)

    F, P : (C, H, W) feature maps of the generated image and of the photograph.
    grad_scale : factor on the returned gradient only (alpha of eq. 7, say).
    out : where to write the gradient (an array shaped like F; may be F itself, which is then
        overwritten); None allocates a new one.
    Returns (loss 0-d array, grad_scale * dL/dF with the shape of F).
    """
    xp = get_array_module(F)
    diff = xp.subtract(F, P, out=out)  # eq. (2)
    loss = 0.5 * xp.sum(diff * diff)  # eq. (1)
    if grad_scale != 1.0:
        diff *= grad_scale
    return loss, diff


def gram(F):
    """Gram matrix G^l = F^l F^l^T, i.e. G_ij = sum_k F_ik F_jk.                   eq. (3)

    F : (C, H, W) feature map -> G : (C, C).
    """
    Fm = _as_matrix(F)
    return Fm @ Fm.T


# Rows of F^T (positions) per product of eq. (6) when the gradient overwrites F itself: each
# block's product goes to a small scratch array first, so the block can then replace its rows.
_GRADIENT_BLOCK_BYTES = 4 << 20


def style_layer_loss(F, A, grad_scale=1.0, out=None):
    """Style error of one layer and its gradient.

    E_l = 1 / (4 N_l^2 M_l^2) sum_ij (G_ij^l - A_ij^l)^2                       eq. (4)
    dE_l/dF_ij^l = 1 / (N_l^2 M_l^2) ((F^l)^T (G^l - A^l))_ji                  eq. (6)
    (the ReLU backward applies the paper's "F > 0" factor)

    F : (C, H, W) feature map of the generated image; A : (C, C) Gram matrix of the artwork
    (symmetric).
    grad_scale : factor on the returned gradient only (w_l of eq. 5 times beta of eq. 7, say).
        It and 1 / (N_l^2 M_l^2) multiply the small N_l x N_l matrix G - A before the product
        of eq. (6), so weighting the gradient costs no pass over the map.
    out : where to write the gradient, an array with F's shape and memory layout; it may be F
        itself (F is then overwritten: the product runs over blocks of positions, each read
        before it is replaced). None allocates a new one.
    Returns (E_l 0-d array, grad_scale * dE_l/dF with the shape of F).
    """
    xp = get_array_module(F)
    Fm = _as_matrix(F)
    n, m = Fm.shape
    norm = float(n) ** 2 * float(m) ** 2  # N_l^2 M_l^2 as a Python float: keeps F's dtype
    G = Fm @ Fm.T  # eq. (3)
    diff = G - A
    loss = xp.sum(diff * diff) / (4.0 * norm)  # eq. (4)
    # Eq. (6) is the exact derivative of eq. (4) when A is symmetric, which every Gram matrix
    # (and every blend of them) is.
    diff *= grad_scale / norm
    if out is None:
        out = xp.empty_like(F)  # in F's memory layout: empty_like keeps the order of the strides
    in_place = xp.may_share_memory(out, F)
    # When out is F, the product runs over blocks of positions: each block's product goes to
    # scratch first, then replaces the block of F it was computed from.
    step = max(1, _GRADIENT_BLOCK_BYTES // (n * F.itemsize)) if in_place else m
    scratch = xp.empty(min(step, m) * n, dtype=F.dtype) if in_place else None
    # The product is formed in the orientation of F's memory, so that it writes whole rows:
    # channels-last, eq. (6) as written, F^T (G - A) (M_l x N_l, positions are rows);
    # channel-major, its transpose (G - A)^T F (N_l x M_l, positions are columns).
    if _channels_last(F):
        def positions(a, k0, k1):  # positions k0 .. k1 of an N_l x M_l matrix, as F^T's rows
            return a.T[k0:k1]

        def product(k0, k1, into):
            return xp.matmul(Fm.T[k0:k1], diff, out=into)
    else:
        def positions(a, k0, k1):
            return a[:, k0:k1]

        def product(k0, k1, into):
            return xp.matmul(diff.T, Fm[:, k0:k1], out=into)
    dF = _as_matrix(out)
    for k0 in range(0, m, step):
        k1 = min(k0 + step, m)
        block = positions(dF, k0, k1)
        if in_place:
            block[...] = product(k0, k1, scratch[:block.size].reshape(block.shape))
        else:
            product(k0, k1, block)
    return loss, out


def style_loss(feats, targets, layer_weights, grad_scale=1.0, out=None):
    """Weighted sum of the layers' style errors.

    L_style(a, x) = sum_l w_l E_l                                             eq. (5)
    dL_style/dF^l = w_l dE_l/dF^l

    feats : dict layer name -> (C, H, W) response of the generated image
    targets : dict layer name -> (C, C) Gram matrix A^l of the artwork
    layer_weights : dict layer name -> w_l (Python float)
    grad_scale : factor on the returned gradients only (beta of eq. 7, say)
    out : optional dict layer name -> array to write that layer's gradient into (may be the
        feature map itself, see ``style_layer_loss``); other layers get new arrays.

    Returns (loss, grads, per_layer): grads maps layer -> grad_scale * dL_style/dF^l,
    per_layer maps layer -> E_l (unweighted), all 0-d device arrays.
    """
    out = out or {}
    loss, grads, per_layer = 0.0, {}, {}
    for name, w_l in layer_weights.items():
        E_l, dF = style_layer_loss(feats[name], targets[name], grad_scale * w_l, out.get(name))
        per_layer[name] = E_l
        loss = loss + w_l * E_l  # eq. (5)
        grads[name] = dF
    return loss, grads, per_layer


def total_loss(content, style, alpha, beta, in_place=False, weighted=False):
    """L_total = alpha L_content + beta L_style.                                   eq. (7)

    content, style : (loss, grads) pairs where grads maps layer -> dL/dF^l.
    in_place : scale and sum the given gradient arrays themselves instead of copying them (for
        callers that own them: at conv1_1 of a 512 px image one copy is 64 MB).
    weighted : the gradients already carry alpha and beta (the losses were called with
        ``grad_scale=alpha`` and ``grad_scale=beta``): they are only summed.
    Returns (loss, grads) with the gradients of both terms summed per layer.
    """
    c_loss, c_grads = content
    s_loss, s_grads = style
    grads = {}
    for terms, weight in ((c_grads, alpha), (s_grads, beta)):
        for name, g in terms.items():
            if not weighted:
                if in_place:
                    g *= weight
                else:
                    g = g * weight
            if name not in grads:
                grads[name] = g
            elif in_place:
                grads[name] += g
            else:
                grads[name] = grads[name] + g
    return alpha * c_loss + beta * s_loss, grads


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
