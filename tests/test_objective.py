"""The objective composed of loss terms, against the plain losses of the paper (eq. 7 by hand)."""
import os
import sys

import numpy as np
import pytest

from nstlite import losses
from nstlite.backend import to_host
from nstlite.errors import NstliteError
from nstlite.gradient_check import check_directional
from nstlite.objective import Objective, build_objective, style_targets
from nstlite.vgg import VGG19
from nstlite.weights import random_params

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "docs", "examples"))
from mean_loss import MeanLoss  # noqa: E402  (the documented example of a user-written loss)

STYLE = {"conv1_1": 0.5, "conv2_1": 0.3, "conv3_1": 0.2}


def tiny_net(kernel, pooling="avg"):
    params = random_params(3, widths=(4, 5, 6, 6, 8), dtype=np.float64)
    return VGG19(params, None, pooling=pooling, dtype="float64", kernel=kernel)


def images(rng, h=32, w=36):
    return rng.standard_normal((3, h, w)) * 20.0, rng.standard_normal((3, h + 4, w - 4)) * 20.0


def by_hand(net, x, photo, art, alpha, beta, tv_weight):
    """Eq. (7) from the plain functions of nstlite.losses, through the reference network."""
    layers = ["conv4_2"] + list(STYLE)
    P = {"conv4_2": net.forward(photo, ["conv4_2"])["conv4_2"].copy()}
    fa = net.forward(art, list(STYLE))
    m = {n: np.prod(net.map_size(n, *x.shape[1:])) for n in STYLE}
    A = {n: losses.gram(fa[n]) * (m[n] / fa[n][0].size) for n in STYLE}
    feats = net.forward(x, layers)
    c_loss, c_grad = losses.content_loss(feats["conv4_2"], P["conv4_2"])
    s_loss, s_grads, per_layer = losses.style_loss(feats, A, STYLE)
    total, grads = losses.total_loss((c_loss, {"conv4_2": c_grad}), (s_loss, s_grads), alpha, beta)
    dx = net.backward(grads)
    tv, dtv = losses.tv_loss(x)
    return total + tv_weight * tv, dx + tv_weight * dtv, per_layer


@pytest.mark.parametrize("kernel", ["reference", "auto"])
def test_objective_equals_eq7_by_hand(rng, kernel):
    photo, art = images(rng)
    x = rng.standard_normal(photo.shape) * 20.0
    ref_net = tiny_net("reference")
    total_ref, dx_ref, per_layer_ref = by_hand(ref_net, x, photo, art, 0.7, 1e3, 1e-2)
    net = tiny_net(kernel)
    obj = build_objective(net, photo, [art], ["conv4_2"], STYLE, alpha=0.7, beta=1e3, tv_weight=1e-2)
    total, dx, parts = obj(x)
    assert float(total) == pytest.approx(float(total_ref), rel=1e-10)
    np.testing.assert_allclose(to_host(dx), to_host(dx_ref), rtol=1e-9, atol=1e-9 * np.abs(dx_ref).max())
    assert set(parts) == {"total", "content", "style", "tv", "extra", "style_layers"}
    for n in STYLE:
        assert float(parts["style_layers"][n]) == pytest.approx(float(per_layer_ref[n]), rel=1e-10)
    assert float(parts["total"]) == pytest.approx(
        0.7 * float(parts["content"]) + 1e3 * float(parts["style"]) + float(parts["tv"]), rel=1e-12)


def test_a_layer_read_by_two_terms_gets_both_gradients(rng):
    """Content and style at the same layer: the fast path must not overwrite a map another term reads."""
    photo, art = images(rng)
    x = rng.standard_normal(photo.shape) * 20.0
    results = []
    for kernel in ("reference", "auto"):
        obj = build_objective(tiny_net(kernel), photo, [art], ["conv2_1"], {"conv2_1": 1.0}, alpha=1.0, beta=1e3)
        total, dx, _ = obj(x)
        results.append((float(total), to_host(dx)))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-10)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-9, atol=1e-9 * np.abs(results[0][1]).max())


@pytest.mark.parametrize("kernel", ["reference", "auto"])
def test_a_user_written_term_plugs_in_and_its_gradient_is_exact(rng, monkeypatch, kernel):
    """A term registered in STYLE_LOSSES is used by name, through the generic (unfused) path,
    and the whole objective's gradient stays exact (directional finite differences)."""
    monkeypatch.setitem(losses.STYLE_LOSSES, "mean", MeanLoss)
    photo, art = images(rng)
    net = tiny_net(kernel)
    obj = build_objective(net, photo, [art], ["conv4_2"], {"conv1_1": 0.5, "conv3_1": 0.5}, alpha=1.0, beta=1e2,
                          style_loss="mean")
    assert all(type(t) is MeanLoss for _, t, *_ in obj.terms if _ == "style")
    for _ in range(10):  # resample inputs whose finite difference crosses a ReLU kink
        check = check_directional("mean", lambda z: obj(z)[:2], net.activation_pattern,
                                  rng.standard_normal(photo.shape) * 20.0, rng)
        if check is not None:
            break
    assert check is not None and check.error < 1e-6, check


def test_extra_terms_are_weighted_and_reported(rng):
    photo, _ = images(rng)
    x = rng.standard_normal(photo.shape) * 20.0
    net = tiny_net("reference")
    term = losses.ContentLoss("conv3_1")
    target = term.target(net.forward(photo, ["conv3_1"])["conv3_1"])
    plain = Objective(net, content=[(term, target)])
    extra = Objective(net, extra=[(term, target, 0.25)])
    (t1, dx1, _), (t2, dx2, p2) = plain(x), extra(x)
    assert float(t2) == pytest.approx(0.25 * float(t1)) and float(p2["extra"]) == pytest.approx(float(t2))
    np.testing.assert_allclose(dx2, 0.25 * dx1, rtol=1e-12)


def test_style_targets_blend_and_rescale_position_sums(rng):
    """A^l = sum_s b_s A_s^l M_l / M_s for a Gram matrix (a sum over positions)."""
    net = tiny_net("reference")
    arts = [rng.standard_normal((3, 32, 32)), rng.standard_normal((3, 48, 40))]
    terms = [losses.GramLoss("conv1_1")]
    positions = {"conv1_1": 36 * 20}
    [target] = style_targets(net, terms, arts, positions, blend_weights=[1.0, 3.0])
    expect = sum(b * losses.gram(net.forward(a, ["conv1_1"])["conv1_1"]) * (720 / (a.shape[1] * a.shape[2]))
                 for a, b in zip(arts, (0.25, 0.75)))
    np.testing.assert_allclose(target["gram"], expect, rtol=1e-12)
    assert target["positions"] == pytest.approx(720)


@pytest.mark.parametrize("call, message", [
    (lambda net, x: Objective(net), "the objective has no terms"),
    (lambda net, x: build_objective(net, x, [], [], {"conv1_1": 1.0}), "no style image given"),
    (lambda net, x: build_objective(net, x, [x], [], {"conv1_1": 1.0}, blend_weights=[1, 2]),
     "2 style blend weights for 1 style images"),
    (lambda net, x: build_objective(net, x, [x], [], {"conv1_1": 1.0}, blend_weights=[0.0]),
     "must be non-negative and not all zero"),
    (lambda net, x: build_objective(net, x, [x], [], {"conv1_1": 1.0}, style_loss="nope"), "unknown style loss"),
])
def test_bad_objectives_are_one_line_errors(rng, call, message):
    with pytest.raises(NstliteError, match=message):
        call(tiny_net("reference"), rng.standard_normal((3, 32, 32)))


def test_blended_targets_survive_the_fast_paths_buffer_reuse(rng):
    """The channels-last path reuses its buffers at every forward: each artwork's statistics
    must be taken before the next artwork's forward (a regression test)."""
    arts = [rng.standard_normal((3, 32, 32)), rng.standard_normal((3, 32, 32))]
    terms = [losses.GramLoss("conv2_1")]
    ref, fast = (style_targets(tiny_net(k), terms, arts, {"conv2_1": 256}, [1.0, 0.0])[0]["gram"]
                 for k in ("reference", "auto"))
    alone = style_targets(tiny_net("reference"), terms, arts[:1], {"conv2_1": 256})[0]["gram"]
    np.testing.assert_allclose(fast, ref, rtol=1e-10)
    np.testing.assert_allclose(ref, alone, rtol=1e-12)
