"""Style losses beyond the Gram matrix, each against an independent float64 oracle."""
import os
import sys

import numpy as np
import pytest

from nstlite import gradcheck, losses
from nstlite.errors import NstliteError
from nstlite.objective import build_objective
from nstlite.vgg import VGG19
from nstlite.weights import random_params


def prepared(term, *arts, weights=None, positions=None):
    """The target a run would use: the artworks' statistics, blended and prepared."""
    weights = weights or [1.0 / len(arts)] * len(arts)
    positions = positions or arts[0][0].size
    return term.prepare(term.blend([term.target(a) for a in arts], weights, positions))


@pytest.fixture
def maps(rng):
    return np.abs(rng.standard_normal((4, 3, 5))), np.abs(rng.standard_normal((4, 3, 5)))


def test_mean_std_against_numpy_moments(maps):
    F, art = maps
    term = losses.MeanStdLoss("a")
    E, _ = term.loss(F, prepared(term, art))
    eps = losses.MeanStdLoss.STD_EPS
    mu, mu_t = F.reshape(4, -1).mean(1), art.reshape(4, -1).mean(1)
    sd, sd_t = np.sqrt(F.reshape(4, -1).var(1) + eps), np.sqrt(art.reshape(4, -1).var(1) + eps)
    assert E == pytest.approx(np.mean((mu - mu_t) ** 2 + (sd - sd_t) ** 2), rel=1e-12)


def test_gaussian_w2_against_scipy_sqrtm(maps):
    from scipy.linalg import sqrtm

    F, art = maps
    term = losses.GaussianW2Loss("a")
    target = prepared(term, art)
    E, _ = term.loss(F, target)
    Fm, Am = F.reshape(4, -1), art.reshape(4, -1)
    cov, cov_t = np.cov(Fm, bias=True), np.cov(Am, bias=True)
    eps = losses.GaussianW2Loss.W2_EPS * np.trace(cov_t) / 4 + 1e-12
    S1, S2 = cov + eps * np.eye(4), cov_t + eps * np.eye(4)
    root = sqrtm(sqrtm(S2) @ S1 @ sqrtm(S2)).real
    w2 = np.sum((Fm.mean(1) - Am.mean(1)) ** 2) + np.trace(S1 + S2 - 2 * root)
    assert E == pytest.approx(w2 / 4, rel=1e-9)
    assert target["eps"] == pytest.approx(eps)


def test_gaussian_w2_is_zero_between_equal_distributions(maps):
    F, _ = maps
    term = losses.GaussianW2Loss("a")
    E, dF = term.loss(F, prepared(term, F))
    assert abs(E) < 1e-10 and np.abs(dF).max() < 1e-6


def test_histogram_against_sorting_by_hand(maps):
    F, art = maps
    term = losses.HistogramLoss("a")
    E, dF = term.loss(F, prepared(term, art))
    Fm, Am = F.reshape(4, -1), art.reshape(4, -1)
    R = np.empty_like(Fm)
    for i in range(4):  # the value of the same rank in the artwork's channel
        for r, k in enumerate(np.argsort(Fm[i])):
            R[i, k] = np.sort(Am[i])[r]
    assert E == pytest.approx(np.sum((Fm - R) ** 2) / Fm.size, rel=1e-12)
    np.testing.assert_allclose(dF.reshape(4, -1), 2 * (Fm - R) / Fm.size, rtol=1e-12)


def test_histogram_interpolates_an_artwork_of_another_size(rng):
    F, art = np.abs(rng.standard_normal((2, 3, 4))), np.abs(rng.standard_normal((2, 5, 7)))
    term = losses.HistogramLoss("a")
    E, _ = term.loss(F, prepared(term, art, positions=12))
    levels = (np.arange(12) + 0.5) / 12
    grid = (np.arange(35) + 0.5) / 35
    expect = sum(np.sum((np.sort(F[i].ravel()) - np.interp(levels, grid, np.sort(art[i].ravel()))) ** 2)
                 for i in range(2))
    assert E == pytest.approx(expect / 24, rel=1e-12)


def test_histogram_blend_is_the_quantile_barycentre(rng):
    a, b = np.abs(rng.standard_normal((2, 3, 3))), np.abs(rng.standard_normal((2, 3, 3)))
    term = losses.HistogramLoss("a")
    target = prepared(term, a, b, weights=[0.25, 0.75])
    expect = 0.25 * np.sort(a.reshape(2, -1), axis=1) + 0.75 * np.sort(b.reshape(2, -1), axis=1)
    np.testing.assert_allclose(target["sorted"], expect, rtol=1e-14)


def test_sliced_wasserstein_is_histogram_matching_of_projections(maps):
    F, art = maps
    term = losses.SlicedWassersteinLoss("a", directions=6, seed=3)
    E, _ = term.loss(F, prepared(term, art))
    D = term.directions(4, np, np.float64)
    assert D.shape == (4, 6) and np.allclose(np.linalg.norm(D, axis=0), 1)
    P, Q = D.T @ F.reshape(4, -1), D.T @ art.reshape(4, -1)
    expect = sum(np.sum((np.sort(P[j]) - np.sort(Q[j])) ** 2) for j in range(6)) / P.size
    assert E == pytest.approx(expect, rel=1e-12)
    again = losses.SlicedWassersteinLoss("a", directions=6, seed=3)
    np.testing.assert_array_equal(again.directions(4, np, np.float64), D)  # frozen by the seed
    assert not np.allclose(losses.SlicedWassersteinLoss("a", 6, seed=4).directions(4, np, np.float64), D)


@pytest.mark.parametrize("name", ["gram", "mean_std", "gaussian_w2"])
def test_position_sum_losses_are_exact_under_tiling(rng, name):
    """Statistics accumulated over two pieces of a map give the whole map's value and gradient."""
    term = losses.STYLE_LOSSES[name]("a")
    F = np.abs(rng.standard_normal((4, 6, 5)))
    target = prepared(term, np.abs(rng.standard_normal((4, 6, 5))))
    top, bottom = term.statistics(F[:, :2]), term.statistics(F[:, 2:])
    summed = {k: top[k] + bottom[k] for k in term.position_sums}
    E, dF = term.loss(F, target)
    assert term.value(summed, target) == pytest.approx(E, rel=1e-12)
    pieces = np.concatenate([term.gradient(F[:, :2], summed, target), term.gradient(F[:, 2:], summed, target)], 1)
    np.testing.assert_allclose(pieces, dF, rtol=1e-10, atol=1e-14)


def test_combinations_and_names_parse():
    assert losses.parse_style_losses("gram") == [(losses.GramLoss, 1.0)]
    assert losses.parse_style_losses("gram:1, histogram:0.5") == [(losses.GramLoss, 1.0), (losses.HistogramLoss, 0.5)]


@pytest.mark.parametrize("spec, message", [
    ("grm", "unknown style loss 'grm'; choose one of gaussian_w2, gram, histogram"),
    ("gram:-1", "must be finite and >= 0"),
    ("gram,,histogram", "empty style loss name"),
    ("no_such_module_xyz:Loss", "cannot load style loss 'no_such_module_xyz:Loss'"),
    ("numpy:ndarray", "is not a subclass of nstlite.losses.StyleLoss"),
])
def test_bad_style_loss_specs_are_one_line_errors(spec, message):
    with pytest.raises(NstliteError, match=message):
        losses.parse_style_losses(spec)


def test_a_combination_is_the_weighted_sum_of_its_losses(rng):
    net = VGG19(random_params(3, widths=(4, 5, 6, 6, 8), dtype=np.float64), None, dtype="float64")
    photo, art = rng.standard_normal((3, 32, 32)) * 20, rng.standard_normal((3, 40, 36)) * 20
    x = rng.standard_normal((3, 32, 32)) * 20
    weights = {"conv1_1": 0.5, "conv3_1": 0.5}

    def run(spec):
        total, dx, _ = build_objective(net, photo, [art], [], weights, style_loss=spec)(x)
        return float(total), dx.copy()
    (t_a, dx_a), (t_b, dx_b) = run("gram"), run("sliced_wasserstein")
    t_ab, dx_ab = run("gram:1,sliced_wasserstein:0.5")
    assert t_ab == pytest.approx(t_a + 0.5 * t_b, rel=1e-10)
    np.testing.assert_allclose(dx_ab, dx_a + 0.5 * dx_b, rtol=1e-8, atol=1e-10 * np.abs(dx_ab).max())


EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "docs", "examples")
# the documented example (docs/examples/mean_loss.py) with its gradient scaled by FACTOR
USER_LOSS = """
import mean_loss

FACTOR = {factor}


class MeanLoss(mean_loss.MeanLoss):
    def gradient(self, F, stats, target):
        return super().gradient(F, stats, target) * FACTOR
"""


@pytest.mark.parametrize("factor, passes", [(1.0, True), (2.0, False)])
def test_gradcheck_checks_a_user_written_loss(tmp_path, monkeypatch, factor, passes):
    module = f"my_losses_{int(factor)}"
    (tmp_path / f"{module}.py").write_text(USER_LOSS.replace("{factor}", str(factor)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(EXAMPLES)
    try:
        [check] = gradcheck(select=module, style_losses=[f"{module}:MeanLoss"])
    finally:
        sys.modules.pop(module, None)
        sys.modules.pop("mean_loss", None)
    assert check.name == f"style loss term '{module}:MeanLoss' (MeanLoss)" and check.passed == passes


def test_gaussian_w2_decomposes_once_per_evaluation_under_tiling(rng, monkeypatch):
    """The value and every piece's gradient share one eigendecomposition of the same statistics;
    new statistics (the next evaluation) get their own."""
    term = losses.GaussianW2Loss("a")
    target = prepared(term, np.abs(rng.standard_normal((4, 6, 5))))
    calls = []
    real_eigh = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda a: calls.append(1) or real_eigh(a))
    for step in range(2):
        F = np.abs(rng.standard_normal((4, 6, 5)))
        top, bottom = term.statistics(F[:, :2]), term.statistics(F[:, 2:])
        summed = {k: top[k] + bottom[k] for k in term.position_sums}
        E = term.value(summed, target)
        pieces = np.concatenate([term.gradient(F[:, :2], summed, target),
                                 term.gradient(F[:, 2:], summed, target)], 1)
        assert len(calls) == step + 1
        expect_E, expect_dF = term.loss(F, target)  # fresh statistics: decomposed anew
        assert len(calls) == step + 2
        calls.pop()
        assert E == pytest.approx(expect_E, rel=1e-12)
        np.testing.assert_allclose(pieces, expect_dF, rtol=1e-10, atol=1e-14)
