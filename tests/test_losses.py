"""Losses: values computed by hand, gradients against finite differences."""
import numpy as np
import pytest

from nstlite import losses
from nstlite.backend import to_host
from nstlite.errors import NstliteError


def test_content_loss_by_hand(xp):
    F = xp.asarray(np.array([[[1.0, 2.0], [3.0, 4.0]]]))  # (1, 2, 2)
    P = xp.asarray(np.array([[[0.0, 2.0], [1.0, 7.0]]]))
    loss, dF = losses.content_loss(F, P)
    # 1/2 (1 + 0 + 4 + 9) = 7
    assert float(to_host(loss)) == pytest.approx(7.0)
    np.testing.assert_array_equal(to_host(dF), [[[1.0, 0.0], [2.0, -3.0]]])


def test_content_gradient_is_not_masked(xp):
    """The ReLU mask of eq. (2) belongs to the ReLU backward; the loss gradient is plain F - P."""
    F = xp.asarray(np.zeros((1, 1, 2)))
    P = xp.asarray(np.array([[[1.0, -1.0]]]))
    _, dF = losses.content_loss(F, P)
    np.testing.assert_array_equal(to_host(dF), [[[-1.0, 1.0]]])


def test_gram_by_hand(xp):
    F = xp.asarray(np.array([[[1.0, 2.0]], [[3.0, -1.0]]]))  # (2, 1, 2): rows (1,2), (3,-1)
    np.testing.assert_array_equal(to_host(losses.gram(F)), [[5.0, 1.0], [1.0, 10.0]])


def test_style_layer_loss_by_hand(xp):
    F = xp.asarray(np.array([[[1.0, 2.0]], [[3.0, -1.0]]]))  # N = 2, M = 2, F = [[1, 2], [3, -1]]
    A = xp.asarray(np.array([[4.0, 1.0], [1.0, 10.0]]))  # symmetric, like every Gram matrix
    loss, dF = losses.style_layer_loss(F, A)
    # G = [[5, 1], [1, 10]], G - A = [[1, 0], [0, 0]]: sum of squares 1, / (4 N^2 M^2 = 64)
    assert float(to_host(loss)) == pytest.approx(1.0 / 64.0)
    # eq. (6): (F^T (G - A))^T / (N^2 M^2) = [[1, 2], [0, 0]] / 16
    np.testing.assert_allclose(to_host(dF).reshape(2, 2), [[1 / 16, 2 / 16], [0.0, 0.0]])


def test_style_layer_gradient_matches_eq6_for_gram_targets(xp, rng):
    """For a Gram target (symmetric A, as in the algorithm) the code equals eq. (6) literally."""
    F = rng.standard_normal((3, 2, 4))
    A = losses.gram(rng.standard_normal((3, 2, 4)))
    _, dF = losses.style_layer_loss(xp.asarray(F), xp.asarray(A))
    Fm = F.reshape(3, 8)
    G = Fm @ Fm.T
    eq6 = (Fm.T @ (G - A)).T / (3 ** 2 * 8 ** 2)
    np.testing.assert_allclose(to_host(dF).reshape(3, 8), eq6, rtol=1e-12)


def test_style_loss_weights_and_total(xp, rng):
    Fa, Fb = rng.standard_normal((3, 2, 2)), rng.standard_normal((4, 1, 3))
    Aa, Ab = losses.gram(rng.standard_normal((3, 2, 2))), losses.gram(rng.standard_normal((4, 1, 3)))
    feats = {"a": xp.asarray(Fa), "b": xp.asarray(Fb)}
    targets = {"a": xp.asarray(Aa), "b": xp.asarray(Ab)}
    loss, grads, per = losses.style_loss(feats, targets, {"a": 0.25, "b": 0.75})
    Ea = losses.style_layer_loss(Fa, Aa)[0]
    Eb = losses.style_layer_loss(Fb, Ab)[0]
    assert float(to_host(loss)) == pytest.approx(0.25 * Ea + 0.75 * Eb)
    assert float(to_host(per["a"])) == pytest.approx(Ea)
    np.testing.assert_allclose(to_host(grads["b"]), 0.75 * losses.style_layer_loss(Fb, Ab)[1])
    P = rng.standard_normal((3, 2, 2))
    c_loss, c_grad = losses.content_loss(feats["a"], xp.asarray(P))  # every array on the device
    total, tgrads = losses.total_loss((c_loss, {"a": c_grad}), (loss, grads), 2.0, 3.0)
    assert float(to_host(total)) == pytest.approx(2.0 * float(to_host(c_loss)) + 3.0 * float(to_host(loss)))
    np.testing.assert_allclose(to_host(tgrads["a"]), 2.0 * to_host(c_grad) + 3.0 * to_host(grads["a"]))
    np.testing.assert_allclose(to_host(tgrads["b"]), 3.0 * to_host(grads["b"]))


def test_tv_loss_by_hand(xp):
    x = xp.asarray(np.array([[[0.0, 1.0], [3.0, 3.0]]]))
    loss, dx = losses.tv_loss(x)
    # vertical: (3-0)^2 + (3-1)^2 = 13; horizontal: 1 + 0 = 1
    assert float(to_host(loss)) == pytest.approx(14.0)
    # d/dx00: -2*3 (vert) - 2*1 (horiz) = -8
    assert float(to_host(dx)[0, 0, 0]) == pytest.approx(-8.0)


def test_gram_backward_is_the_chain_rule_of_eq6(xp, rng):
    """Eq. (6) is gram_backward applied to dE/dG = (G - A) / (2 N^2 M^2), the derivative of eq. (4)."""
    F = xp.asarray(rng.standard_normal((3, 2, 4)))
    A = losses.gram(xp.asarray(rng.standard_normal((3, 2, 4))))
    _, dF = losses.style_layer_loss(F, A)
    dE_dG = (losses.gram(F) - A) / (2.0 * 3 ** 2 * 8 ** 2)
    np.testing.assert_allclose(to_host(losses.gram_backward(dE_dG, F)), to_host(dF), rtol=1e-12)


def test_losses_keep_float32(rng):
    F = rng.standard_normal((3, 4, 4)).astype(np.float32)
    A = losses.gram(rng.standard_normal((3, 4, 4)).astype(np.float32))
    for loss, d in (losses.content_loss(F, F * 0.5), losses.style_layer_loss(F, A), losses.tv_loss(F)):
        assert d.dtype == np.float32 and np.asarray(loss).dtype == np.float32


def test_total_loss_leaves_its_inputs_alone(rng):
    c = {"a": rng.standard_normal((2, 3, 3))}
    s = {"a": rng.standard_normal((2, 3, 3)), "b": rng.standard_normal((4, 1, 2))}
    keep_c, keep_s = {k: v.copy() for k, v in c.items()}, {k: v.copy() for k, v in s.items()}
    loss, grads = losses.total_loss((1.5, c), (2.5, s), 0.3, 7.0)
    assert loss == pytest.approx(0.3 * 1.5 + 7.0 * 2.5) and set(grads) == {"a", "b"}
    np.testing.assert_allclose(grads["a"], 0.3 * keep_c["a"] + 7.0 * keep_s["a"])
    for mine, kept in ((c, keep_c), (s, keep_s)):
        for k in mine:
            np.testing.assert_array_equal(mine[k], kept[k])


# ----------------------------------------------------------------------------- loss terms
def test_gram_term_equals_style_layer_loss(xp, rng):
    F, Fa = xp.asarray(rng.standard_normal((4, 3, 5))), xp.asarray(rng.standard_normal((4, 3, 5)))
    term = losses.STYLE_LOSSES["gram"]("conv1_1")
    target = term.target(Fa)
    assert set(term.position_sums) <= set(target) and target["positions"] == 15
    E, dF = term.loss(F, target)
    E_ref, dF_ref = losses.style_layer_loss(F, losses.gram(Fa))
    assert float(to_host(E)) == pytest.approx(float(to_host(E_ref)), rel=1e-13)
    np.testing.assert_allclose(to_host(dF), to_host(dF_ref), rtol=1e-12)


def test_position_sums_add_up_over_tiles(xp, rng):
    """What the protocol promises a tiled evaluator: statistics named in position_sums, computed
    on disjoint pieces of a map, add up to the whole map's; the whole-map gradient is the pieces'
    gradients given the global statistics."""
    F = xp.asarray(rng.standard_normal((4, 6, 5)))
    term = losses.GramLoss("conv1_1")
    target = term.target(xp.asarray(rng.standard_normal((4, 6, 5))))
    whole = term.statistics(F)
    top, bottom = term.statistics(F[:, :2]), term.statistics(F[:, 2:])
    for key in term.position_sums:
        np.testing.assert_allclose(to_host(whole[key]), to_host(top[key] + bottom[key]), rtol=1e-12)
    dF = term.gradient(F, whole, target)
    pieces = xp.concatenate([term.gradient(F[:, :2], whole, target), term.gradient(F[:, 2:], whole, target)], axis=1)
    np.testing.assert_allclose(to_host(pieces), to_host(dF), rtol=1e-12)


def test_content_term_copies_its_target(xp, rng):
    F = xp.asarray(rng.standard_normal((2, 3, 3)))
    term = losses.ContentLoss("conv4_2")
    target = term.target(F)
    F[...] = 0  # the network reuses its buffers: the target must not follow
    value, dF = term.loss(F, target)
    assert float(to_host(value)) > 0
    np.testing.assert_array_equal(to_host(dF), -to_host(target["P"]))


def test_unknown_style_loss_is_one_line():
    with pytest.raises(NstliteError, match="unknown style loss .nope.; choose one of gaussian_w2, gram"):
        losses.style_loss_class("nope")


def test_gram_loss_reads_channels_last_maps_in_place(rng):
    """A (C, H, W) view of channels-last memory (the fast path's maps, a tile's inner positions):
    the same Gram matrix and gradient as channel-major memory, the gradient in the map's layout."""
    F = rng.standard_normal((5, 7, 6))
    F_last = np.ascontiguousarray(F.transpose(1, 2, 0)).transpose(2, 0, 1)
    term = losses.GramLoss("conv1_1")
    target = term.target(rng.standard_normal((5, 4, 4)))
    stats, stats_last = term.statistics(F), term.statistics(F_last)
    np.testing.assert_allclose(stats_last["gram"], stats["gram"], rtol=1e-13)
    dF, dF_last = term.gradient(F, stats, target), term.gradient(F_last, stats_last, target)
    np.testing.assert_allclose(dF_last, dF, rtol=1e-13)
    assert dF_last.transpose(1, 2, 0).flags.c_contiguous
