"""`nstlite gradcheck`: passes on the real code, fails on a deliberately wrong gradient."""
import subprocess
import sys

import numpy as np

from nstlite import gradcheck, layers, losses
from nstlite.fast import plan
from nstlite.cli import main


def test_gradcheck_passes_every_check():
    results = gradcheck(seed=0)
    names = " ".join(c.name for c in results)
    for expected in ("conv3x3", "relu", "avg_pool", "max_pool", "content_loss", "gram", "style_layer_loss",
                     "style_loss", "tv_loss", "vgg19 backward", "objective"):
        assert expected in names
    bad = [c for c in results if not c.passed]
    assert not bad, bad
    assert all(c.error < c.tol for c in results)


def test_gradcheck_cli_prints_table_and_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "nstlite", "gradcheck"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "max rel error" in proc.stdout and "FAIL" not in proc.stdout
    assert " 0 failed" in proc.stdout


def test_gradcheck_fails_on_broken_relu_backward(monkeypatch, capsys):
    # a classic bug: letting the gradient through where the unit was off
    monkeypatch.setattr(layers, "relu_backward", lambda dout, cache: dout)
    results = gradcheck(seed=0)
    failed = {c.name for c in results if not c.passed}
    assert "relu" in failed and any(n.startswith("vgg19 backward") for n in failed)
    assert main(["gradcheck"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_gradcheck_fails_on_wrong_style_normalisation(monkeypatch):
    real = losses.style_layer_loss

    def off_by_two(F, A, grad_scale=1.0, out=None):
        loss, dF = real(F, A, grad_scale, out)
        dF *= 2.0  # forgets the 1/4 vs 1/2 bookkeeping of eq. (6)
        return loss, dF

    monkeypatch.setattr(losses, "style_layer_loss", off_by_two)
    failed = {c.name for c in gradcheck(seed=1) if not c.passed}
    assert "style_layer_loss (eqs. 4, 6)" in failed
    assert any("style" in n and "objective" in n for n in failed)


def test_gradcheck_fails_on_wrong_conv_backward(monkeypatch):
    fwd, bwd = plan.CONV_KERNELS["reference"]
    monkeypatch.setitem(plan.CONV_KERNELS, "reference", (fwd, lambda d, c: np.flip(bwd(d, c), axis=-1).copy()))
    failed = {c.name for c in gradcheck(seed=2) if not c.passed}
    assert "conv3x3 [reference]" in failed
