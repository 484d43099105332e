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
import zlib
from dataclasses import dataclass

import numpy as np

from . import layers as L
from . import losses
from .backend import to_host, xp_for
from .fast.plan import CONV_KERNELS, DEFAULT_KERNEL
from .objective import build_objective
from .tiled import TiledObjective
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


def _tiny_net(pooling, device, seed, kernel=None):
    params = random_params(seed, widths=TINY_WIDTHS, dtype=np.float64)
    return VGG19(params, None, pooling=pooling, device=device, dtype="float64", kernel=kernel)


def _conv_kernels():
    """name -> (forward, backward) of every registered conv kernel."""
    return CONV_KERNELS


def _network_kernels():
    """The whole-network checks run the reference path, the default (channels-last) path and,
    when registered, the channels-last path forced onto Winograd everywhere (on the tiny check
    network the default path picks the direct kernels: its maps are small)."""
    names = ["reference", DEFAULT_KERNEL] + (["winograd"] if "winograd" in _conv_kernels() else [])
    return list(dict.fromkeys(names))


def _resampled(name, attempt_check, attempts=20):
    """Run ``attempt_check()`` (which draws fresh inputs and returns a ``Check``, or None when a
    finite difference crossed a kink) until it yields a check: kinks are resampled, never
    tolerated."""
    for attempt in range(attempts):
        c = attempt_check()
        if c is not None:
            c.name = name
            c.note += f", resampled {attempt}x" if attempt else ""
            return c
    return Check(name, float("nan"), NETWORK_TOL, "could not find an input away from every kink")


# --------------------------------------------------------------------------- the catalogue
# Each row is (name, run) with run(xp, rng) -> Check. Rows draw their inputs from their own
# random stream (seeded by the row's name), so a row gives the same result alone or in the
# whole catalogue, and a test that breaks one gradient runs only the rows that must catch it.

def _layer_rows():
    rows = []
    for kname, (fwd, bwd) in sorted(_conv_kernels().items()):
        for shape in [(3, 5, 7), (3, 1, 4)]:
            def run(xp, rng, fwd=fwd, bwd=bwd, shape=shape):
                w, b = xp.asarray(rng.standard_normal((4, 3, 3, 3))), xp.asarray(rng.standard_normal(4))
                return check_op("", lambda z: fwd(z, w, b), bwd, xp.asarray(rng.standard_normal(shape)), rng)
            rows.append((f"conv3x3 [{kname}] {shape[1]}x{shape[2]}", run))
    rows += [
        ("relu", lambda xp, rng: check_op("", L.relu_forward, L.relu_backward,
                                          xp.asarray(_away_from_zero(rng, (3, 4, 5))), rng)),
        ("avg_pool 2x2", lambda xp, rng: check_op("", L.avg_pool_forward, L.avg_pool_backward,
                                                  xp.asarray(rng.standard_normal((3, 5, 7))), rng)),
        ("max_pool 2x2", lambda xp, rng: check_op("", L.max_pool_forward, L.max_pool_backward,
                                                  xp.asarray(_without_pool_ties(rng, (3, 5, 7))), rng)),
    ]
    return rows


def _gram_row(xp, rng):
    # f(F) = sum(dG * G(F)): its gradient is gram_backward(dG, F), the derivative behind eq. (6)
    dG = xp.asarray(rng.standard_normal((4, 4)))
    return check_loss("", lambda F: (xp.sum(losses.gram(F) * dG), losses.gram_backward(dG, F)),
                      xp.asarray(rng.standard_normal((4, 3, 5))))


def _style_pair(xp, rng):
    """Two layers' maps and Gram targets for the eq. (5) and eq. (7) rows."""
    A = {"a": losses.gram(xp.asarray(rng.standard_normal((4, 3, 5)))),
         "b": losses.gram(xp.asarray(rng.standard_normal((6, 2, 3))))}
    return A, xp.asarray(rng.standard_normal((6, 2, 3)))


def _style_sum_row(xp, rng):
    A, Fb = _style_pair(xp, rng)

    def weighted_style(F):
        loss, grads, _ = losses.style_loss({"a": F, "b": Fb}, A, {"a": 0.3, "b": 0.7})
        return loss, grads["a"]
    return check_loss("", weighted_style, xp.asarray(rng.standard_normal((4, 3, 5))))


def _total_row(xp, rng):
    A, Fb = _style_pair(xp, rng)
    P = xp.asarray(rng.standard_normal((4, 3, 5)))

    def weighted_total(F):
        content = losses.content_loss(F, P)
        s_loss, s_grads, _ = losses.style_loss({"a": F, "b": Fb}, A, {"a": 0.3, "b": 0.7})
        loss, grads = losses.total_loss((content[0], {"a": content[1]}), (s_loss, s_grads), 0.7, 1.3)
        return loss, grads["a"]
    return check_loss("", weighted_total, xp.asarray(rng.standard_normal((4, 3, 5))))


def _without_rank_ties(rng, shape, margin=1e-3, project=None):
    """|N(0, 1)| samples (rectified-like) whose values in each row of ``project(F)`` (default:
    each channel) are at least ``margin`` apart, so that no finite difference reorders them (the
    sorting losses' kinks); resampled otherwise."""
    while True:
        F = np.abs(rng.standard_normal(shape))
        rows = F.reshape(shape[0], -1) if project is None else project(F.reshape(shape[0], -1))
        if rows.shape[1] < 2 or np.diff(np.sort(rows, axis=1), axis=1).min() > margin:
            return F


def _term_row(cls):
    """A style loss as a term: ``loss(F, target)`` against finite differences, its target
    made by the term itself from an artwork map of another size (blended and prepared as in a
    run), inputs resampled away from rank ties (the sorting losses' kinks)."""
    def run(xp, rng):
        term = cls("a")
        project = getattr(term, "project", None)
        art = xp.asarray(_without_rank_ties(rng, (4, 4, 6), project=project))
        target = term.prepare(term.blend([term.target(art)], [1.0], 15))
        F = xp.asarray(_without_rank_ties(rng, (4, 3, 5), project=project))
        return check_loss("", lambda z: term.loss(z, target), F)
    return run


def _guided_gram_row(xp, rng):
    """The guided Gram loss of one region (Gatys et al. 2017) with a random guide in [0, 1]."""
    guide = xp.asarray(rng.uniform(0.0, 1.0, (3, 5)))
    term = losses.GuidedGramLoss("a", guide)
    target = term.prepare(term.blend([term.target(xp.asarray(np.abs(rng.standard_normal((4, 4, 6)))))], [1.0], 15))
    return check_loss("", lambda F: term.loss(F, target), xp.asarray(np.abs(rng.standard_normal((4, 3, 5)))))


def _content_row(xp, rng):
    P = xp.asarray(rng.standard_normal((4, 3, 5)))
    return check_loss("", lambda F: losses.content_loss(F, P), xp.asarray(rng.standard_normal((4, 3, 5))))


def _style_layer_row(xp, rng):
    A = losses.gram(xp.asarray(rng.standard_normal((4, 3, 5))))
    return check_loss("", lambda F: losses.style_layer_loss(F, A), xp.asarray(rng.standard_normal((4, 3, 5))))


def _loss_rows(style_losses=None):
    rows = [
        ("content_loss (eqs. 1-2)", _content_row),
        ("gram (eq. 3)", _gram_row),
        ("style_layer_loss (eqs. 4, 6)", _style_layer_row),
        ("style_loss sum_l w_l E_l (eq. 5)", _style_sum_row),
        ("total_loss alpha, beta (eq. 7)", _total_row),
        ("guided gram, one region (Gatys 2017)", _guided_gram_row),
        ("tv_loss", lambda xp, rng: check_loss("", losses.tv_loss, xp.asarray(rng.standard_normal((3, 5, 6))))),
    ]
    registered = sorted(losses.STYLE_LOSSES.items()) + [(n, losses.style_loss_class(n)) for n in style_losses or ()]
    rows += [(f"style loss term {name!r} ({cls.__name__})", _term_row(cls)) for name, cls in registered]
    return rows


PROBE_LAYERS = ("conv1_1", "pool2", "conv3_1", "conv4_2", "conv5_1")
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
OBJECTIVE_SETUPS = (("content only", 1.0, 0.0, 0.0), ("style only", 0.0, 1.0, 0.0),
                    ("alpha*content + beta*style + tv", 1.0, 1e3, 1e-2))


def _image(xp, rng, h=TINY_SIZE[0], w=TINY_SIZE[1]):
    return xp.asarray(rng.standard_normal((3, h, w)) * 20.0)


def _network_row(pooling, kernel, seed):
    """f(x) = sum_l <F_l(x), R_l> through the whole network; its gradient is net.backward({l: R_l})."""
    def run(xp, rng):
        net = _tiny_net(pooling, "gpu" if xp is not np else "cpu", seed, kernel)

        def attempt():
            x = _image(xp, rng)
            R = {n: xp.asarray(rng.standard_normal(f.shape)) for n, f in net.forward(x, PROBE_LAYERS).items()}

            def f_and_grad(z):
                fz = net.forward(z, PROBE_LAYERS)
                return sum(xp.sum(fz[n] * R[n]) for n in PROBE_LAYERS), net.backward(R)
            return check_directional("", f_and_grad, net.activation_pattern, x, rng)
        return _resampled("", attempt)
    return run


def _objective_row(pooling, kernel, seed, alpha, beta, tv):
    """The whole objective (image -> alpha content + beta style + TV) along random directions."""
    def run(xp, rng):
        net = _tiny_net(pooling, "gpu" if xp is not np else "cpu", seed, kernel)

        def attempt():
            photo, art = _image(xp, rng), _image(xp, rng, TINY_SIZE[0] + 4, TINY_SIZE[1] - 4)
            obj = build_objective(net, photo, [art], ["conv4_2"], {n: 0.2 for n in STYLE_LAYERS},
                                  alpha=alpha, beta=beta, tv_weight=tv)
            return check_directional("", lambda z: obj(z)[:2], net.activation_pattern, _image(xp, rng), rng)
        return _resampled("", attempt)
    return run


def _tiled_row(kernel, seed):
    """The tiled objective (``nstlite.tiled``) with its own finite differences: 6 tiles whose
    input gradients add up, style derivatives from the global statistics."""
    def run(xp, rng):
        net = _tiny_net("avg", "gpu" if xp is not np else "cpu", seed, kernel)

        def attempt():
            photo, art = _image(xp, rng, 64, 80), _image(xp, rng)
            obj = TiledObjective(build_objective(net, photo, [art], ["conv4_2"], {n: 0.2 for n in STYLE_LAYERS},
                                                 alpha=1.0, beta=1e3, tv_weight=1e-2), 32, record_pattern=True)
            return check_directional("", lambda z: obj(z)[:2], obj.activation_pattern, _image(xp, rng, 64, 80), rng)
        return _resampled("", attempt)
    return run


def _network_rows(seed):
    rows = []
    for kernel in _network_kernels():
        tag = "" if kernel == "reference" else f" [{kernel}]"
        for pooling in ("avg", "max"):
            rows.append((f"vgg19 backward ({pooling} pool){tag}", _network_row(pooling, kernel, seed)))
            setups = OBJECTIVE_SETUPS if pooling == "avg" else OBJECTIVE_SETUPS[-1:]
            rows += [(f"objective: {label} ({pooling} pool){tag}", _objective_row(pooling, kernel, seed, a, b, tv))
                     for label, a, b, tv in setups]
        rows.append((f"objective: tiled, 6 tiles (avg pool){tag}", _tiled_row(kernel, seed)))
    return rows


def catalogue(seed=0, style_losses=None):
    """Every gradient check as (name, run), run(xp, rng) -> Check: layers, losses (every
    registered style loss, plus ``style_losses``: names such as ``package.module:Class``), the
    network."""
    return _layer_rows() + _loss_rows(style_losses) + _network_rows(seed)


def gradcheck(device="cpu", seed=0, select=None, style_losses=None):
    """Run the catalogue's checks; returns a list of ``Check`` (name, error, tol, passed, note).

    select : None (every row) or a string / list of strings; a row runs when its name contains
        one of them.
    style_losses : extra style losses to check, by name (``package.module:Class`` for your own
        loss, see ``nstlite.losses``): each gets a row.
    """
    xp = xp_for(device)
    if isinstance(select, str):
        select = [select]
    results = []
    for name, run in catalogue(seed, style_losses):
        if select is not None and not any(s in name for s in select):
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        check = run(xp, rng)
        check.name = name
        results.append(check)
    return results


def format_table(results):
    rows = [("check", "max rel error", "tolerance", "result", "note")]
    for c in results:
        rows.append((c.name, f"{c.error:.2e}", f"{c.tol:.0e}", "pass" if c.passed else "FAIL", c.note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
