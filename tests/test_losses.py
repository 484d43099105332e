"""Losses: values computed by hand, gradients against finite differences."""
import numpy as np
import pytest

from nstlite import losses
from nstlite.backend import to_host
from nstlite.gradient_check import PER_OP_TOL, check_loss


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
    c_loss, c_grad = losses.content_loss(Fa, P)
    total, tgrads = losses.total_loss((c_loss, {"a": c_grad}), (loss, grads), 2.0, 3.0)
    assert float(to_host(total)) == pytest.approx(2.0 * c_loss + 3.0 * float(to_host(loss)))
    np.testing.assert_allclose(to_host(tgrads["a"]), 2.0 * c_grad + 3.0 * to_host(grads["a"]))
    np.testing.assert_allclose(to_host(tgrads["b"]), 3.0 * to_host(grads["b"]))


def test_tv_loss_by_hand(xp):
    x = xp.asarray(np.array([[[0.0, 1.0], [3.0, 3.0]]]))
    loss, dx = losses.tv_loss(x)
    # vertical: (3-0)^2 + (3-1)^2 = 13; horizontal: 1 + 0 = 1
    assert float(to_host(loss)) == pytest.approx(14.0)
    # d/dx00: -2*3 (vert) - 2*1 (horiz) = -8
    assert float(to_host(dx)[0, 0, 0]) == pytest.approx(-8.0)


@pytest.mark.parametrize("name", ["content", "style", "tv", "gram"])
def test_loss_gradients_finite_differences(xp, rng, name):
    F = xp.asarray(rng.standard_normal((4, 3, 5)))
    if name == "content":
        P = xp.asarray(rng.standard_normal((4, 3, 5)))
        fn = lambda z: losses.content_loss(z, P)  # noqa: E731
    elif name == "style":
        A = xp.asarray(losses.gram(rng.standard_normal((4, 3, 5))))
        fn = lambda z: losses.style_layer_loss(z, A)  # noqa: E731
    elif name == "tv":
        fn = losses.tv_loss
    else:
        dG = xp.asarray(rng.standard_normal((4, 4)))
        fn = lambda z: (xp.sum(losses.gram(z) * dG), ((dG + dG.T) @ z.reshape(4, -1)).reshape(z.shape))  # noqa: E731
    c = check_loss(name, fn, F)
    assert c.error < PER_OP_TOL, c


def test_losses_keep_float32(rng):
    F = rng.standard_normal((3, 4, 4)).astype(np.float32)
    A = losses.gram(rng.standard_normal((3, 4, 4)).astype(np.float32))
    for loss, d in (losses.content_loss(F, F * 0.5), losses.style_layer_loss(F, A), losses.tv_loss(F)):
        assert d.dtype == np.float32 and np.asarray(loss).dtype == np.float32


def test_total_loss_in_place_equals_copying(rng):
    c = {"a": rng.standard_normal((2, 3, 3))}
    s = {"a": rng.standard_normal((2, 3, 3)), "b": rng.standard_normal((4, 1, 2))}
    keep_c, keep_s = {k: v.copy() for k, v in c.items()}, {k: v.copy() for k, v in s.items()}
    loss, grads = losses.total_loss((1.5, c), (2.5, s), 0.3, 7.0)
    for k in c:
        np.testing.assert_array_equal(c[k], keep_c[k])  # the copying form leaves its inputs alone
    loss_ip, grads_ip = losses.total_loss((1.5, c), (2.5, s), 0.3, 7.0, in_place=True)
    assert loss_ip == pytest.approx(loss) and set(grads_ip) == {"a", "b"}
    for k in grads:
        np.testing.assert_allclose(grads_ip[k], grads[k], rtol=1e-15)
    np.testing.assert_allclose(grads["a"], 0.3 * keep_c["a"] + 7.0 * keep_s["a"])


@pytest.mark.parametrize("layout", ["channel_major", "channels_last"])
@pytest.mark.parametrize("block_bytes", [None, 64])  # 64 bytes: blocks of one or two positions
def test_style_gradient_scaled_and_in_place_equals_plain(xp, rng, monkeypatch, layout, block_bytes):
    """grad_scale multiplies the gradient only, and out=F (the fast path's in-place gradient,
    computed block by block) gives what the allocating form gives, in F's memory layout."""
    if block_bytes is not None:
        monkeypatch.setattr(losses, "_GRADIENT_BLOCK_BYTES", block_bytes)
    Fh = rng.standard_normal((5, 3, 7))
    A = xp.asarray(losses.gram(rng.standard_normal((5, 3, 7))))

    def feat():
        if layout == "channels_last":
            return xp.ascontiguousarray(xp.asarray(Fh).transpose(1, 2, 0)).transpose(2, 0, 1)
        return xp.asarray(Fh.copy())
    E, dF = losses.style_layer_loss(feat(), A)
    E2, dF2 = losses.style_layer_loss(feat(), A, grad_scale=-2.5)
    F = feat()
    E3, dF3 = losses.style_layer_loss(F, A, grad_scale=-2.5, out=F)
    assert dF3 is F and F.strides == feat().strides
    assert float(to_host(E2)) == float(to_host(E3)) == pytest.approx(float(to_host(E)), rel=1e-14)
    np.testing.assert_allclose(to_host(dF2), -2.5 * to_host(dF), rtol=1e-12)
    np.testing.assert_allclose(to_host(dF3), to_host(dF2), rtol=1e-12, atol=1e-18)
    assert _same_layout(dF, feat()) and _same_layout(dF2, feat())


def _same_layout(a, b):
    return sorted(range(3), key=lambda i: a.strides[i]) == sorted(range(3), key=lambda i: b.strides[i])


def test_content_gradient_scaled_and_in_place(xp, rng):
    F, P = xp.asarray(rng.standard_normal((2, 3, 4))), xp.asarray(rng.standard_normal((2, 3, 4)))
    expect = 3.0 * (to_host(F) - to_host(P))
    loss, _ = losses.content_loss(F, P)
    loss2, dF = losses.content_loss(F, P, grad_scale=3.0, out=F)
    assert dF is F and float(to_host(loss2)) == pytest.approx(float(to_host(loss)))
    np.testing.assert_allclose(to_host(F), expect, rtol=1e-14)


def test_total_loss_weighted_only_sums(rng):
    c = {"a": rng.standard_normal((2, 3, 3))}
    s = {"a": rng.standard_normal((2, 3, 3)), "b": rng.standard_normal((4, 1, 2))}
    expect_a = c["a"] + s["a"]
    loss, grads = losses.total_loss((1.5, c), (2.5, s), 0.3, 7.0, in_place=True, weighted=True)
    assert loss == pytest.approx(0.3 * 1.5 + 7.0 * 2.5)
    np.testing.assert_allclose(grads["a"], expect_a)
    np.testing.assert_array_equal(grads["b"], s["b"])
