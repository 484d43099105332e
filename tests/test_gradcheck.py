"""`nstlite gradcheck`: every row passes on the real code, and every row fails on a wrong gradient.

Each mutation below breaks one hand-written gradient the way such code goes wrong (a sign, a
forgotten factor, a missing transpose) and runs only the rows that must catch it.
"""
import subprocess
import sys

import numpy as np
import pytest

from nstlite import gradcheck, layers, losses
from nstlite.fast import losses as fused
from nstlite.fast import plan
from nstlite.gradient_check import catalogue


def test_gradcheck_passes_every_check():
    results = gradcheck(seed=0)
    assert [c.name for c in results] == [name for name, _ in catalogue()]
    bad = [c for c in results if not c.passed]
    assert not bad, bad


def test_gradcheck_cli_prints_table_and_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "nstlite", "gradcheck"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "max rel error" in proc.stdout and "FAIL" not in proc.stdout
    assert " 0 failed" in proc.stdout


def scaled(fn, factor, index=None):
    """fn with its gradient (its result, or item ``index`` of it) multiplied by ``factor``."""
    def wrong(*args, **kwargs):
        out = fn(*args, **kwargs)
        if index is None:
            return out * factor
        out = list(out)
        out[index] = out[index] * factor
        return tuple(out)
    return wrong


def conv_rows(kernel):
    return [f"conv3x3 [{kernel}] 5x7", f"conv3x3 [{kernel}] 1x4"]


def conv_backward_flipped(kernel):
    fwd, bwd = plan.CONV_KERNELS[kernel]
    return fwd, lambda d, c: np.flip(bwd(d, c), axis=-1).copy()


def break_pool(mp, kind, backward):
    mp.setattr(layers, f"{kind}_pool_backward", backward)
    mp.setitem(layers.POOLING, kind, (layers.POOLING[kind][0], backward))


def rows_starting(prefix):
    return [name for name, _ in catalogue() if name.startswith(prefix)]


def adjoint_doubled(adjoint):
    """A channels-last conv adjoint (writes dx in place) whose dx comes out twice too large."""
    def wrong(dpad, wk, dx, *args, **kwargs):
        out = adjoint(dpad, wk, dx, *args, **kwargs)
        dx *= 2.0
        return out
    return wrong


def style_loss_forgets_w_l(feats, targets, layer_weights, real=losses.style_loss):
    loss, grads, per_layer = real(feats, targets, layer_weights)
    return loss, {n: g / layer_weights[n] for n, g in grads.items()}, per_layer


def total_loss_forgets_beta(content, style, alpha, beta, real=losses.total_loss):
    return real(content, (style[0], {n: g / beta for n, g in style[1].items()}), alpha, beta)


# (rows that must fail, how to break the code)
MUTATIONS = {
    "conv reference: flipped taps": (conv_rows("reference"), lambda mp: mp.setitem(
        plan.CONV_KERNELS, "reference", conv_backward_flipped("reference"))),
    "conv winograd: flipped taps": (conv_rows("winograd"), lambda mp: mp.setitem(
        plan.CONV_KERNELS, "winograd", conv_backward_flipped("winograd"))),
    "conv shifted_gemm: flipped taps": (conv_rows("shifted_gemm"), lambda mp: mp.setitem(
        plan.CONV_KERNELS, "shifted_gemm", conv_backward_flipped("shifted_gemm"))),
    "conv auto: flipped taps": (conv_rows("auto"), lambda mp: mp.setitem(
        plan.CONV_KERNELS, "auto", conv_backward_flipped("auto"))),
    "channels-last path: direct conv adjoint doubled": (
        [f"vgg19 backward ({p} pool) [auto]" for p in ("avg", "max")],
        lambda mp: mp.setattr(plan, "shifted_gemm_conv_adjoint", adjoint_doubled(plan.shifted_gemm_conv_adjoint))),
    "channels-last path: Winograd adjoint doubled": (
        [f"vgg19 backward ({p} pool) [winograd]" for p in ("avg", "max")],
        lambda mp: mp.setattr(plan, "winograd_conv_adjoint", adjoint_doubled(plan.winograd_conv_adjoint))),
    "relu lets every gradient through": (["relu", "vgg19 backward (avg pool)"], lambda mp: mp.setattr(
        layers, "relu_backward", lambda dout, cache: dout)),
    "avg pool: half instead of a quarter": (["avg_pool 2x2", "vgg19 backward (avg pool)"], lambda mp: break_pool(
        mp, "avg", scaled(layers.avg_pool_backward, 2.0))),
    "max pool: doubled": (["max_pool 2x2", "vgg19 backward (max pool)"], lambda mp: break_pool(
        mp, "max", scaled(layers.max_pool_backward, 2.0))),
    "content: P - F": (["content_loss (eqs. 1-2)"], lambda mp: mp.setattr(
        losses, "content_loss", scaled(losses.content_loss, -1.0, index=1))),
    "gram: missing transpose": (["gram (eq. 3)"], lambda mp: mp.setattr(
        losses, "gram_backward", lambda dG, F: (dG @ F.reshape(F.shape[0], -1)).reshape(F.shape))),
    "style layer: off by two": (["style_layer_loss (eqs. 4, 6)"], lambda mp: mp.setattr(
        losses, "style_layer_loss", scaled(losses.style_layer_loss, 2.0, index=1))),
    "style sum: forgets w_l": (["style_loss sum_l w_l E_l (eq. 5)"], lambda mp: mp.setattr(
        losses, "style_loss", style_loss_forgets_w_l)),
    "total: forgets beta": (["total_loss alpha, beta (eq. 7)"], lambda mp: mp.setattr(
        losses, "total_loss", total_loss_forgets_beta)),
    "guided gram: guide applied once": (["guided gram, one region (Gatys 2017)"], lambda mp: mp.setattr(
        losses.GuidedGramLoss, "gradient", lambda self, F, stats, target: losses.GramLoss.gradient(
            self, F * self.guide, stats, target))),
    "tiled: style gradient from the tile's own statistics": (rows_starting("objective: tiled"), lambda mp: mp.setattr(
        losses.GramLoss, "gradient", lambda self, F, stats, target, real=losses.GramLoss.gradient: real(
            self, F, self.statistics(F), target))),
    "tv: half": (["tv_loss"], lambda mp: mp.setattr(losses, "tv_loss", scaled(losses.tv_loss, 0.5, index=1))),
    "objective: fused content kernel doubled": (rows_starting("objective: content only"), lambda mp: mp.setitem(
        fused.FUSED, losses.ContentLoss, scaled(fused.FUSED[losses.ContentLoss], 2.0, 1))),
    "objective: fused style kernel doubled": (rows_starting("objective: style only"), lambda mp: mp.setitem(
        fused.FUSED, losses.GramLoss, scaled(fused.FUSED[losses.GramLoss], 2.0, 1))),
    "objective: tv term halved": (rows_starting("objective: alpha*content + beta*style + tv"), lambda mp: mp.setattr(
        losses.TVLoss, "loss", scaled(losses.TVLoss.loss, 0.5, index=1))),
}
# every registered style loss: its row fails when the gradient is doubled or has the wrong sign
for _name, _cls in losses.STYLE_LOSSES.items():
    for _factor in (2.0, -1.0):
        MUTATIONS[f"style loss {_name}: gradient x {_factor:g}"] = (
            [f"style loss term {_name!r} ({_cls.__name__})"],
            lambda mp, cls=_cls, factor=_factor: mp.setattr(cls, "loss", scaled(cls.loss, factor, index=1)))


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_gradcheck_row_fails_on_a_wrong_gradient(monkeypatch, mutation):
    rows, break_code = MUTATIONS[mutation]
    break_code(monkeypatch)
    results = gradcheck(seed=1, select=rows)
    assert results, f"no row matches {rows}"
    for row in rows:
        selected = [c for c in results if c.name == row]
        assert selected and not any(c.passed for c in selected), (mutation, row, selected)


def test_every_row_has_a_mutation_that_breaks_it():
    """A row is not done until a test shows it fails on a wrong gradient."""
    covered = [row for rows, _ in MUTATIONS.values() for row in rows]
    uncovered = [name for name, _ in catalogue() if name not in covered]
    assert not uncovered, uncovered
