"""Gradient verification: every hand-written backward against central finite differences.

``nstlite gradcheck`` (or ``nstlite.gradcheck()``) checks, in float64:

* every layer (each registered conv kernel, ReLU, average and max pooling) and every loss
  (content, Gram matrix, per-layer style, weighted style sum, TV) element by element:
  the analytic gradient of ``f(x) = sum(op(x) * r)`` for a random ``r`` against
  ``(f(x + h e_i) - f(x - h e_i)) / 2h`` for every input element i;
* the VGG19 backward and the whole objective (image -> alpha content + beta style + TV through
  a VGG19 with small random weights) along random directions d: ``<grad, d>`` against
  ``(f(x + h d) - f(x - h d)) / 2h``.

The error reported is ``max_i |analytic_i - numeric_i| / max(max|analytic|, max|numeric|)``
(normwise relative error); for directional checks the worst over the directions of
``|<grad, d> - fd| / max(|<grad, d>|, |fd|)``.

Functions with kinks (ReLU at 0, max-pool ties) have no derivative there and a finite
difference that straddles one is meaningless: such inputs are *resampled*, never tolerated.
"""
from dataclasses import dataclass

import numpy as np

from . import layers as L
from . import losses
from .backend import to_host, xp_for
from .objective import Objective, content_targets, positions_of, style_targets
from .vgg import VGG19
from .weights import random_params

PER_OP_TOL = 1e-7     # element-wise checks of single ops (float64, h = 1e-6)
NETWORK_TOL = 1e-6    # directional checks through the whole network (float64, h = 1e-3 on inputs of scale ~20)
PER_OP_STEP = 1e-6
NETWORK_STEP = 1e-3
TINY_WIDTHS = (4, 5, 6, 6, 8)  # a VGG19 with few channels: every layer, quick to check
TINY_SIZE = (32, 36)           # H, W: conv5_1 still sees a 2x2 map


@dataclass
class Check:
    name: str
    error: float
    tol: float
    note: str = ""

    @property
    def passed(self):
        return bool(np.isfinite(self.error) and self.error <= self.tol)


def _f(value):
    return float(to_host(value))


def rel_error(analytic, numeric):
    """max |a - n| / max(max |a|, max |n|) - normwise, so tiny entries do not blow it up."""
    a, n = to_host(analytic).astype(np.float64), to_host(numeric).astype(np.float64)
    scale = max(np.abs(a).max(), np.abs(n).max(), 1e-300)
    return float(np.abs(a - n).max() / scale)


def numerical_gradient(f, x, h=PER_OP_STEP):
    """Central differences of the scalar function f at x, one element at a time (x is restored)."""
    xp = xp_for("gpu") if type(x).__module__.startswith("cupy") else np
    grad = xp.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(x.size):
        old = flat[i].copy()
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def check_op(name, forward, backward, x, rng, h=PER_OP_STEP, tol=PER_OP_TOL):
    """Element-wise check of a layer: forward(x) -> (out, cache), backward(dout, cache) -> dx."""
    xp = xp_for("gpu") if type(x).__module__.startswith("cupy") else np
    out, cache = forward(x)
    r = xp.asarray(rng.standard_normal(out.shape))
    analytic = backward(r, cache)
    numeric = numerical_gradient(lambda z: _f(xp.sum(forward(z)[0] * r)), x, h)
    return Check(name, rel_error(analytic, numeric), tol, f"x {tuple(x.shape)}")


def check_loss(name, loss_fn, x, h=PER_OP_STEP, tol=PER_OP_TOL):
    """Element-wise check of a loss: loss_fn(x) -> (loss, dx)."""
    _, analytic = loss_fn(x)
    numeric = numerical_gradient(lambda z: _f(loss_fn(z)[0]), x, h)
    return Check(name, rel_error(analytic, numeric), tol, f"x {tuple(x.shape)}")


def check_directional(name, f_and_grad, pattern, x, rng, directions=3, h=NETWORK_STEP, tol=NETWORK_TOL):
    """Check ``<grad, d>`` against central differences along random unit directions.

    ``f_and_grad(x) -> (loss, grad)``; ``pattern()`` returns the activation pattern of the last
    evaluation. Returns None when a difference crossed a kink (the caller resamples x).
    """
    xp = xp_for("gpu") if type(x).__module__.startswith("cupy") else np
    loss, grad = f_and_grad(x)
    base = pattern()
    worst = 0.0
    for _ in range(directions):
        d = xp.asarray(rng.standard_normal(x.shape))
        d /= float(to_host(xp.sqrt(xp.sum(d * d))))
        fp = _f(f_and_grad(x + h * d)[0])
        if not _same_pattern(base, pattern()):
            return None
        fm = _f(f_and_grad(x - h * d)[0])
        if not _same_pattern(base, pattern()):
            return None
        fd = (fp - fm) / (2 * h)
        an = _f(xp.sum(grad * d))
        worst = max(worst, abs(an - fd) / max(abs(an), abs(fd), 1e-300))
    return Check(name, worst, tol, f"x {tuple(x.shape)}, {directions} directions")


def _same_pattern(a, b):
    return len(a) == len(b) and all(bool((to_host(p) == to_host(q)).all()) for p, q in zip(a, b))


def _away_from_zero(rng, shape, margin=1e-3):
    """Standard normal samples, resampled where |x| < margin (ReLU kink)."""
    x = rng.standard_normal(shape)
    while True:
        bad = np.abs(x) < margin
        if not bad.any():
            return x
        x[bad] = rng.standard_normal(int(bad.sum()))


def _without_pool_ties(rng, shape, margin=1e-3):
    """Samples whose 2x2 windows have a unique maximum by at least ``margin`` (resampled)."""
    while True:
        x = rng.standard_normal(shape)
        c, h, w = shape
        win = x[:, : h // 2 * 2, : w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4)
        top2 = np.sort(win.reshape(c, h // 2, w // 2, 4), axis=-1)[..., -2:]
        if (top2[..., 1] - top2[..., 0]).min() > margin:
            return x


def _tiny_net(pooling, device, seed, conv_kernel=None):
    params = random_params(seed, widths=TINY_WIDTHS, dtype=np.float64)
    return VGG19(params, None, pooling=pooling, device=device, dtype="float64", conv_kernel=conv_kernel)


def _network_kernels():
    """The whole-network checks run the reference path, the default (fast, channels-last)
    path and, when registered, the channels-last path forced onto Winograd everywhere (on the
    tiny check network the default path picks the direct kernels: its maps are small)."""
    names = ["reference", L.DEFAULT_CONV_KERNEL] + (["winograd"] if "winograd" in L.CONV_KERNELS else [])
    return list(dict.fromkeys(names))


def _network_checks(device, rng, seed):
    results = []
    for kernel in _network_kernels():
        tag = "" if kernel == "reference" else f" [{kernel}]"
        for c in _network_checks_for(device, rng, seed, kernel):
            c.name += tag
            results.append(c)
    return results


def _resampled(name, attempt_check, attempts=20):
    """Run ``attempt_check()`` (which draws fresh inputs and returns a ``Check``, or None when a
    finite difference crossed a kink) until it yields a check: kinks are resampled, never
    tolerated."""
    for attempt in range(attempts):
        c = attempt_check()
        if c is not None:
            c.note += f", resampled {attempt}x" if attempt else ""
            return c
    return Check(name, float("nan"), NETWORK_TOL, "could not find an input away from every kink")


def _network_checks_for(device, rng, seed, kernel):
    xp = xp_for(device)
    results = []
    H, W = TINY_SIZE
    probe_layers = ["conv1_1", "pool2", "conv3_1", "conv4_2", "conv5_1"]
    style_layers = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]

    def image():
        return xp.asarray(rng.standard_normal((3, H, W)) * 20.0)

    for pooling in ("avg", "max"):
        net = _tiny_net(pooling, device, seed, kernel)

        # (a) the network alone: f(x) = sum_l <F_l(x), R_l>, gradient net.backward({l: R_l})
        def network_check(name=f"vgg19 backward ({pooling} pool)", net=net):
            x = image()
            R = {n: xp.asarray(rng.standard_normal(f.shape)) for n, f in net.forward(x, probe_layers).items()}

            def f_and_grad(z):
                fz = net.forward(z, probe_layers)
                return sum(xp.sum(fz[n] * R[n]) for n in probe_layers), net.backward(R)

            return check_directional(name, f_and_grad, net.activation_pattern, x, rng)

        results.append(_resampled(f"vgg19 backward ({pooling} pool)", network_check))

        # (b) the whole objective: alpha content + beta style + TV
        setups = [("content only", 1.0, 0.0, 0.0), ("style only", 0.0, 1.0, 0.0),
                  ("alpha*content + beta*style + tv", 1.0, 1e3, 1e-2)]
        if pooling == "max":
            setups = setups[-1:]
        for label, alpha, beta, tv in setups:
            name = f"objective: {label} ({pooling} pool)"

            def objective_check(name=name, net=net, alpha=alpha, beta=beta, tv=tv):
                photo = image()
                art = xp.asarray(rng.standard_normal((3, H + 4, W - 4)) * 20.0)
                P = content_targets(net, photo, ["conv4_2"])
                A = style_targets(net, [art], style_layers, positions=positions_of(net, photo, style_layers))
                obj = Objective(net, P, A, {n: 0.2 for n in style_layers}, alpha=alpha, beta=beta, tv_weight=tv)
                return check_directional(name, lambda z: obj(z)[:2], net.activation_pattern, image(), rng)

            results.append(_resampled(name, objective_check))
    return results


def gradcheck(device="cpu", seed=0, kernels=None):
    """Run every check; returns a list of ``Check`` (name, error, tol, passed, note)."""
    xp = xp_for(device)
    rng = np.random.default_rng(seed)

    def arr(a):
        return xp.asarray(a, dtype=np.float64)

    results = []
    w = arr(rng.standard_normal((4, 3, 3, 3)))
    b = arr(rng.standard_normal(4))
    for kname in (kernels or sorted(L.CONV_KERNELS)):
        fwd, bwd = L.CONV_KERNELS[kname]
        for shape in [(3, 5, 7), (3, 1, 4)]:
            results.append(check_op(f"conv3x3 [{kname}]", lambda z, f=fwd: f(z, w, b), bwd,
                                    arr(rng.standard_normal(shape)), rng))
    results.append(check_op("relu", L.relu_forward, L.relu_backward, arr(_away_from_zero(rng, (3, 4, 5))), rng))
    results.append(check_op("avg_pool 2x2", L.avg_pool_forward, L.avg_pool_backward,
                            arr(rng.standard_normal((3, 5, 7))), rng))
    results.append(check_op("max_pool 2x2", L.max_pool_forward, L.max_pool_backward,
                            arr(_without_pool_ties(rng, (3, 5, 7))), rng))

    P = arr(rng.standard_normal((4, 3, 5)))
    results.append(check_loss("content_loss (eqs. 1-2)", lambda F: losses.content_loss(F, P),
                              arr(rng.standard_normal((4, 3, 5)))))
    dG = arr(rng.standard_normal((4, 4)))
    # d/dF sum(dG * F F^T) = (dG + dG^T) F: the derivative behind eq. (6)
    results.append(check_loss("gram (eq. 3)",
                              lambda F: (xp.sum(losses.gram(F) * dG),
                                         ((dG + dG.T) @ F.reshape(4, -1)).reshape(F.shape)),
                              arr(rng.standard_normal((4, 3, 5)))))
    A = losses.gram(arr(rng.standard_normal((4, 3, 5))))
    results.append(check_loss("style_layer_loss (eqs. 4, 6)", lambda F: losses.style_layer_loss(F, A),
                              arr(rng.standard_normal((4, 3, 5)))))
    A2 = losses.gram(arr(rng.standard_normal((6, 2, 3))))
    F2 = arr(rng.standard_normal((6, 2, 3)))

    def style_terms(F):
        return losses.style_loss({"a": F, "b": F2}, {"a": A, "b": A2}, {"a": 0.3, "b": 0.7})

    def weighted_style(F):
        loss, grads, _ = style_terms(F)
        return loss, grads["a"]

    results.append(check_loss("style_loss sum_l w_l E_l (eq. 5)", weighted_style, arr(rng.standard_normal((4, 3, 5)))))

    def weighted_total(F):
        c_loss, c_grad = losses.content_loss(F, P)
        s_loss, s_grads, _ = style_terms(F)
        loss, grads = losses.total_loss((c_loss, {"a": c_grad}), (s_loss, s_grads), 0.7, 1.3)
        return loss, grads["a"]

    results.append(check_loss("total_loss alpha, beta (eq. 7)", weighted_total, arr(rng.standard_normal((4, 3, 5)))))
    results.append(check_loss("tv_loss", losses.tv_loss, arr(rng.standard_normal((3, 5, 6)))))
    results.extend(_network_checks(device, rng, seed))
    return results


def format_table(results):
    rows = [("check", "max rel error", "tolerance", "result", "note")]
    for c in results:
        rows.append((c.name, f"{c.error:.2e}", f"{c.tol:.0e}", "pass" if c.passed else "FAIL", c.note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
