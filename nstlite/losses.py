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


def content_loss(F, P):
    """Squared-error content loss and its gradient.

    L_content(p, x, l) = 1/2 sum_ij (F_ij^l - P_ij^l)^2                      eq. (1)
    dL/dF_ij^l = F_ij^l - P_ij^l    (the ReLU backward applies "F > 0")        eq. (2)

    F, P : (C, H, W) feature maps of the generated image and of the photograph.
    Returns (loss 0-d array, dF with the shape of F).
    """
    xp = get_array_module(F)
    diff = F - P
    loss = 0.5 * xp.sum(diff * diff)  # eq. (1)
    return loss, diff  # eq. (2)


def gram(F):
    """Gram matrix G^l = F^l F^l^T, i.e. G_ij = sum_k F_ik F_jk.                   eq. (3)

    F : (C, H, W) feature map -> G : (C, C).
    """
    Fm = _as_matrix(F)
    return Fm @ Fm.T


def style_layer_loss(F, A):
    """Style error of one layer and its gradient.

    E_l = 1 / (4 N_l^2 M_l^2) sum_ij (G_ij^l - A_ij^l)^2                       eq. (4)
    dE_l/dF_ij^l = 1 / (N_l^2 M_l^2) ((F^l)^T (G^l - A^l))_ji                  eq. (6)
    (the ReLU backward applies the paper's "F > 0" factor)

    F : (C, H, W) feature map of the generated image; A : (C, C) Gram matrix of the artwork
    (symmetric).
    Returns (E_l 0-d array, dF with the shape of F).
    """
    xp = get_array_module(F)
    Fm = _as_matrix(F)
    n, m = Fm.shape
    norm = float(n) ** 2 * float(m) ** 2  # N_l^2 M_l^2 as a Python float: keeps F's dtype
    G = Fm @ Fm.T  # eq. (3)
    diff = G - A
    loss = xp.sum(diff * diff) / (4.0 * norm)  # eq. (4)
    # Eq. (6) is the exact derivative of eq. (4) when A is symmetric, which every Gram matrix
    # (and every blend of them) is. The product is formed in the orientation of F's memory:
    if _channels_last(F):
        dFt = Fm.T @ diff  # eq. (6) as written: F^T (G - A), M_l x N_l, channels-last like F
        dFt /= norm
        c, h, w = F.shape
        return loss, dFt.reshape(h, w, c).transpose(2, 0, 1)
    dF = diff.T @ Fm  # eq. (6) transposed: (F^T (G - A))^T = (G - A)^T F, N_l x M_l
    dF /= norm
    return loss, dF.reshape(F.shape)


def style_loss(feats, targets, layer_weights):
    """Weighted sum of the layers' style errors.

    L_style(a, x) = sum_l w_l E_l                                             eq. (5)
    dL_style/dF^l = w_l dE_l/dF^l

    feats : dict layer name -> (C, H, W) response of the generated image
    targets : dict layer name -> (C, C) Gram matrix A^l of the artwork
    layer_weights : dict layer name -> w_l (Python float)

    Returns (loss, grads, per_layer): grads maps layer -> dL_style/dF^l,
    per_layer maps layer -> E_l (unweighted), all 0-d device arrays.
    """
    loss, grads, per_layer = 0.0, {}, {}
    for name, w_l in layer_weights.items():
        E_l, dF = style_layer_loss(feats[name], targets[name])
        per_layer[name] = E_l
        loss = loss + w_l * E_l  # eq. (5)
        dF *= w_l  # a fresh array: scaled in place, keeping its layout
        grads[name] = dF
    return loss, grads, per_layer


def total_loss(content, style, alpha, beta, in_place=False):
    """L_total = alpha L_content + beta L_style.                                   eq. (7)

    content, style : (loss, grads) pairs where grads maps layer -> dL/dF^l.
    in_place : scale and sum the given gradient arrays themselves instead of copying them (for
        callers that own them: at conv1_1 of a 512 px image one copy is 64 MB).
    Returns (loss, grads) with the gradients of both terms summed per layer.
    """
    c_loss, c_grads = content
    s_loss, s_grads = style
    grads = {}
    for terms, weight in ((c_grads, alpha), (s_grads, beta)):
        for name, g in terms.items():
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
