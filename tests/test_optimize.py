"""The L-BFGS-B driver: runs the requested iterations, keeps the box, tracks the best point,
recovers from NaN and line-search failures, counts, and stops on request or Ctrl-C."""
import numpy as np
import pytest
from scipy.optimize import minimize

from nstlite.optimize import StopReason, minimize_lbfgsb

N = 200
SCALES = np.logspace(0, 5, N)  # an ill-conditioned quadratic: many iterations to converge
OFFSET = 1e12  # a large constant, like style losses in the paper's normalisation


def quad(x):
    d = x - 1.0
    return OFFSET + float(np.sum(SCALES * d * d)), 2 * SCALES * d, {}


def test_runs_the_requested_iterations_where_scipy_defaults_stop_early():
    x0 = np.zeros(N)
    naive = minimize(lambda x: quad(x)[:2], x0, jac=True, method="L-BFGS-B", options={"maxiter": 60})
    assert naive.nit < 60  # REL_REDUCTION_OF_F at a huge loss: the known failure
    calls = []
    res = minimize_lbfgsb(lambda x: calls.append(1) or quad(x), x0, -10, 10, iterations=60)
    assert res.iterations == 60 and res.stop_reason == StopReason.ITERATIONS
    assert res.evaluations == len(calls)
    assert res.loss - OFFSET < naive.fun - OFFSET


def test_box_is_respected_and_best_point_returned():
    seen = []

    def fun(x):
        f, g, _ = quad(x)
        seen.append((f, x.copy()))
        return f, g, {"f": f}

    res = minimize_lbfgsb(fun, np.zeros(N), -10.0, 0.5, iterations=30)
    assert np.all(res.x <= 0.5 + 1e-12) and np.all(res.x >= -10)
    assert all(np.all(x <= 0.5 + 1e-12) for _, x in seen)
    best_f, best_x = min(seen, key=lambda t: t[0])
    assert res.loss == best_f and np.array_equal(res.x, best_x) and res.info == {"f": best_f}
    np.testing.assert_allclose(res.x[-20:], 0.5)  # stiff coordinates sit on the bound


def test_nonfinite_loss_never_reaches_lbfgs_and_best_point_is_kept():
    # NaN beyond x > 0.6: the minimum at 1 lies in the NaN region
    def fun(x):
        f, g, _ = quad(x)
        if np.any(x > 0.6):
            return float("nan"), g, {}
        return f, g, {}

    res = minimize_lbfgsb(fun, np.zeros(N), -10, 10, iterations=50, max_restarts=3)
    assert np.isfinite(res.loss) and np.all(res.x <= 0.6)
    assert res.loss < quad(np.zeros(N))[0]
    assert res.stop_reason in (StopReason.NONFINITE, StopReason.ITERATIONS, "line search failed", "evaluation limit")


def test_nonfinite_runs_end_in_restarts_then_stop():
    calls = [0]

    def fun(x):  # finite at the start only
        calls[0] += 1
        f, g, _ = quad(x)
        return (f, g, {}) if calls[0] == 1 else (float("inf"), g, {})

    res = minimize_lbfgsb(fun, np.zeros(N), -10, 10, iterations=50, max_restarts=2, max_nonfinite=3)
    assert res.stop_reason == StopReason.NONFINITE and res.restarts == 3
    assert res.loss == quad(np.zeros(N))[0] and np.array_equal(res.x, np.zeros(N))


def test_callback_stops_and_counts_continue_from_start_iteration():
    its = []

    def on_iteration(it, ev, x):
        assert isinstance(x, np.ndarray) and x.shape == (N,)  # the point, on every SciPy (1.10 too)
        its.append(it)
        return it >= 14

    res = minimize_lbfgsb(quad, np.zeros(N), -10, 10, iterations=20, on_iteration=on_iteration,
                          start_iteration=10)
    assert its == list(range(11, 15))
    assert res.iterations == 14 and res.stop_reason == StopReason.CALLBACK


def test_keyboard_interrupt_returns_best_so_far():
    count = [0]

    def fun(x):
        count[0] += 1
        if count[0] == 8:
            raise KeyboardInterrupt
        return quad(x)

    res = minimize_lbfgsb(fun, np.zeros(N), -10, 10, iterations=50)
    assert res.stop_reason == StopReason.INTERRUPTED
    assert res.evaluations == 7 and res.loss < quad(np.zeros(N))[0]


def test_evaluation_hook_sees_every_evaluation():
    rows = []
    res = minimize_lbfgsb(quad, np.zeros(N), -10, 10, iterations=5,
                          on_evaluation=lambda it, ev, f, info: rows.append((it, ev, f)))
    assert [r[1] for r in rows] == list(range(1, res.evaluations + 1))
    assert rows[0][0] == 0 and rows[-1][0] <= 5
    assert min(r[2] for r in rows) == res.loss


def test_zero_iterations_returns_start():
    x0 = np.full(N, 0.25)
    res = minimize_lbfgsb(quad, x0, -10, 10, iterations=0)
    assert res.iterations == 0 and res.evaluations == 0 and np.array_equal(res.x, x0)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_nonfinite_at_start_stops_cleanly(bad):
    res = minimize_lbfgsb(lambda x: (bad, np.zeros_like(x), {}), np.zeros(4), -1, 1, iterations=5)
    assert res.stop_reason == StopReason.NONFINITE and res.info is None


# --------------------------------------------------------------------------- SciPy's routine, called directly
def rosen_box(x):
    """Rosenbrock in N dimensions with a large offset: curved, and some bounds end up active."""
    a, b = x[:-1], x[1:]
    f = float(np.sum(100.0 * (b - a * a) ** 2 + (1 - a) ** 2))
    g = np.zeros_like(x)
    g[:-1] = -400.0 * a * (b - a * a) - 2 * (1 - a)
    g[1:] += 200.0 * (b - a * a)
    return OFFSET + f, g, {}


@pytest.mark.parametrize("lower, upper", [
    (-0.5, 0.7),                                              # both bounds, some of them active
    (-np.inf, np.inf),                                        # no box at all (stylize's bounds="none")
    (np.r_[np.full(N // 2, -np.inf), np.full(N // 2, -0.5)],  # free, lower-only, upper-only, both
     np.r_[np.full(N // 4, np.inf), np.full(N // 4, 0.6), np.full(N // 4, np.inf), np.full(N // 4, 0.6)]),
])
def test_the_direct_routine_gives_scipys_iterates_bit_for_bit(monkeypatch, lower, upper):
    from nstlite import optimize

    if optimize._native_setulb() is None:
        pytest.skip("this SciPy has no C L-BFGS-B routine (SciPy < 1.15): minimize runs it")
    x0 = np.linspace(-1.2, 1.0, N)

    def run():
        points = []
        res = minimize_lbfgsb(lambda x: points.append(x.copy()) or rosen_box(x), x0, lower, upper, iterations=40,
                              history=5)
        return res, points

    direct, direct_points = run()
    monkeypatch.setattr(optimize, "_native_setulb", lambda: None)  # SciPy's minimize, with its conversion
    calls = []
    real_minimize = optimize.minimize
    monkeypatch.setattr(optimize, "minimize", lambda *a, **k: calls.append(1) or real_minimize(*a, **k))
    via_scipy, scipy_points = run()
    assert calls  # the second run did go through minimize
    assert len(direct_points) == len(scipy_points) and direct.evaluations == via_scipy.evaluations
    assert all(np.array_equal(p, q) for p, q in zip(direct_points, scipy_points))
    assert np.array_equal(direct.x, via_scipy.x) and direct.loss == via_scipy.loss
    assert (direct.iterations, direct.stop_reason, direct.message) == (
        via_scipy.iterations, via_scipy.stop_reason, via_scipy.message)


def test_the_direct_routine_never_converts_the_box_through_minimize(monkeypatch):
    from nstlite import optimize

    if optimize._native_setulb() is None:
        pytest.skip("this SciPy has no C L-BFGS-B routine (SciPy < 1.15)")
    monkeypatch.setattr(optimize, "minimize", lambda *a, **k: pytest.fail("minimize was called"))
    res = minimize_lbfgsb(quad, np.zeros(N), -10, 10, iterations=10)
    assert res.iterations == 10 and res.stop_reason == StopReason.ITERATIONS
