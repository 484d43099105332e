"""The engine's fused loss kernels against the plain losses of the paper core (their oracle)."""
import numpy as np
import pytest

from nstlite import losses
from nstlite.backend import to_host
from nstlite.fast import losses as fused


def feature_map(xp, values, layout):
    """(C, H, W) array in channel-major memory, or a (C, H, W) view of channels-last memory (as
    the channels-last VGG19 path hands its maps out)."""
    if layout == "channels_last":
        return xp.array(xp.asarray(values).transpose(1, 2, 0), order="C").transpose(2, 0, 1)  # a copy
    return xp.asarray(values.copy())


def same_layout(a, b):
    return sorted(range(3), key=lambda i: a.strides[i]) == sorted(range(3), key=lambda i: b.strides[i])


@pytest.mark.parametrize("layout", ["channel_major", "channels_last"])
def test_layout_detection_and_matrix_view(xp, rng, layout):
    F = feature_map(xp, rng.standard_normal((5, 3, 7)), layout)
    assert fused.is_channels_last(F) == (layout == "channels_last")
    Fm = fused.as_matrix(F)
    assert Fm.shape == (5, 21) and xp.may_share_memory(Fm, F)
    np.testing.assert_array_equal(to_host(Fm), to_host(F).reshape(5, 21))


@pytest.mark.parametrize("layout", ["channel_major", "channels_last"])
@pytest.mark.parametrize("block_bytes", [None, 64])  # 64 bytes: blocks of one or two positions
def test_fused_style_equals_plain_scaled_and_in_place(xp, rng, monkeypatch, layout, block_bytes):
    """scale multiplies the gradient only; out=F (computed block by block) gives what the
    allocating form gives, in F's memory layout; both equal the plain eqs. (4) and (6)."""
    if block_bytes is not None:
        monkeypatch.setattr(fused, "GRADIENT_BLOCK_BYTES", block_bytes)
    values = rng.standard_normal((5, 3, 7))
    A = losses.gram(xp.asarray(rng.standard_normal((5, 3, 7))))
    E_ref, dF_ref = losses.style_layer_loss(xp.asarray(values), A)
    E, dF = fused.style_layer_loss_into(feature_map(xp, values, layout), A, scale=-2.5)
    F = feature_map(xp, values, layout)
    E_ip, dF_ip = fused.style_layer_loss_into(F, A, scale=-2.5, out=F)
    assert dF_ip is F and same_layout(dF, F)
    for e in (E, E_ip):
        assert float(to_host(e)) == pytest.approx(float(to_host(E_ref)), rel=1e-13)
    for d in (dF, dF_ip):
        np.testing.assert_allclose(to_host(d), -2.5 * to_host(dF_ref), rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("layout", ["channel_major", "channels_last"])
def test_fused_content_equals_plain_scaled_and_in_place(xp, rng, layout):
    values, P_values = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    L_ref, dF_ref = losses.content_loss(xp.asarray(values), xp.asarray(P_values))
    F, P = feature_map(xp, values, layout), feature_map(xp, P_values, layout)
    L, dF = fused.content_loss_into(F, P, scale=3.0, out=F)
    assert dF is F and float(to_host(L)) == pytest.approx(float(to_host(L_ref)), rel=1e-14)
    np.testing.assert_allclose(to_host(F), 3.0 * to_host(dF_ref), rtol=1e-14)


def test_evaluate_uses_the_fused_kernel_for_the_paper_terms(xp, rng, monkeypatch):
    calls = []
    monkeypatch.setitem(fused.FUSED, losses.GramLoss,
                        lambda term, F, target, scale, out, ws: calls.append(term) or (0.0, F))
    term = losses.GramLoss("conv1_1")
    F = xp.asarray(rng.standard_normal((3, 2, 2)))
    fused.evaluate(term, F, term.target(F), 2.0)
    assert calls == [term]


def test_evaluate_falls_back_to_a_terms_own_loss(xp, rng):
    """A user-written term (any class without a fused kernel, subclasses included) is evaluated
    through its own ``loss`` and weighted, into ``out`` when given."""
    class Doubled(losses.GramLoss):
        def loss(self, F, target):
            E, dF = super().loss(F, target)
            return 2 * E, 2 * dF

    F = xp.asarray(rng.standard_normal((3, 2, 2)))
    term = Doubled("conv1_1")
    target = term.target(xp.asarray(rng.standard_normal((3, 2, 2))))
    E_ref, dF_ref = losses.style_layer_loss(F, target["gram"])
    E, dF = fused.evaluate(term, F, target, 0.5)
    assert float(to_host(E)) == pytest.approx(2 * float(to_host(E_ref)))
    np.testing.assert_allclose(to_host(dF), to_host(dF_ref), rtol=1e-12)
    out = xp.empty_like(F)
    _, into = fused.evaluate(term, F, target, 0.5, out=out)
    assert into is out
    np.testing.assert_allclose(to_host(out), to_host(dF_ref), rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 3, 3), (4, 1, 1), (3, 2, 7)])
def test_degenerate_maps_are_both_layouts(xp, rng, shape):
    """One channel or one position is channel-major and channels-last at once: it is read as
    channel-major and the kernels still equal the plain losses."""
    values = rng.standard_normal(shape)
    A = losses.gram(xp.asarray(rng.standard_normal(shape)))
    F = feature_map(xp, values, "channels_last")
    E, dF = fused.style_layer_loss_into(F, A, scale=1.0, out=F)
    E_ref, dF_ref = losses.style_layer_loss(xp.asarray(values), A)
    assert float(to_host(E)) == pytest.approx(float(to_host(E_ref)), rel=1e-13)
    np.testing.assert_allclose(to_host(dF), to_host(dF_ref), rtol=1e-12, atol=1e-15)


def test_content_target_keeps_the_layout_of_its_map(xp, rng):
    """P^l is copied in the layout of the map it came from, so F - P runs on like-laid-out arrays
    and the gradient reaches the network channels-last."""
    F = feature_map(xp, rng.standard_normal((4, 3, 5)), "channels_last")
    P = losses.ContentLoss("conv4_2").target(F)["P"]
    assert same_layout(P, F) and not xp.may_share_memory(P, F)


@pytest.mark.parametrize("layout", ["channel_major", "channels_last"])
@pytest.mark.parametrize("in_place", [False, True])
def test_style_products_split_over_the_workspace_threads(rng, monkeypatch, layout, in_place):
    """With a workspace whose threads run one-thread GEMMs, the Gram matrix and eq. (6) are the
    sums / row blocks of per-thread products: the plain eqs. (4) and (6) to rounding."""
    from nstlite.fast.workspace import Workspace

    ws = Workspace(np, threads=2)
    if ws._blas_local is None:
        pytest.skip("this OpenBLAS cannot set a per-thread thread count: the products are not split")
    ranges = []
    real = ws.parallel_gemms
    monkeypatch.setattr(ws, "parallel_gemms", lambda fn, n: ranges.append(n) or real(fn, n))
    monkeypatch.setattr(fused, "GRADIENT_BLOCK_BYTES", 8 * 1024)  # several blocks per thread
    values = np.abs(rng.standard_normal((8, 64, 80)))  # 5120 positions: split
    A = losses.gram(np.abs(rng.standard_normal((8, 64, 80))))
    E_ref, dF_ref = losses.style_layer_loss(values, A)
    F = feature_map(np, values, layout)
    E, dF = fused.style_layer_loss_into(F, A, scale=0.5, out=F if in_place else None, ws=ws)
    # the Gram matrix, then (in place: block by block) eq. (6)'s blocks
    assert ranges[0] == fused.GRAM_PARTS and len(ranges) == (2 if in_place else 1)
    assert float(E) == pytest.approx(float(E_ref), rel=1e-12) and same_layout(dF, F)
    np.testing.assert_allclose(dF, 0.5 * dF_ref, rtol=1e-11, atol=1e-20)
    # the same numbers, bit for bit, with one thread: the split does not depend on the threads
    for one in (Workspace(np, threads=1), None):
        F1 = feature_map(np, values, layout)
        E1, dF1 = fused.style_layer_loss_into(F1, A, scale=0.5, out=F1 if in_place else None, ws=one)
        assert float(E1) == float(E) and np.array_equal(dF1, dF)
