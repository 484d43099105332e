"""The L-BFGS-B driver: minimise a loss over an image inside a box, for exactly the requested
number of iterations unless something real stops it.

Gatys et al. optimise the image with L-BFGS. Here SciPy's L-BFGS-B works on a float64 host
vector; the box bounds keep every pixel inside the range a real image can have (no clipping
after the fact, which would change the loss the gradient belongs to). This module is host-side
and knows nothing about networks: ``fun(x) -> (loss, gradient, info)`` does the device work.

What naive use of SciPy gets wrong, and what happens here instead:

* SciPy stops by default when the relative decrease of f falls below ``ftol`` (about 2e-9),
  which at loss values around 1e6..1e9 in float32 triggers long before the requested
  iterations (``REL_REDUCTION_OF_F``). Here ``ftol = gtol = 0``: only the iteration limit, an
  evaluation limit, a zero projected gradient or a failure ends a run.
* Ends are read from ``status`` (0 converged, 1 limit reached, 2 abnormal), never from the
  message text. An abnormal end (a line search that found no decrease, typically float32
  noise near a minimum) restarts L-BFGS-B from the best point with its memory cleared; a
  restart that makes no progress ends the run cleanly.
* A NaN or Inf loss or gradient never reaches L-BFGS-B (it would poison its memory): the
  driver answers with a finite wall above the best loss, so the line search backs off as it
  does from any overshooting step. A run of ``max_nonfinite`` such values in a row ends that
  L-BFGS-B run; the driver restarts from the best point a limited number of times. A
  non-finite loss at the very start ends the run (there is nothing to fall back to).
* The best point seen is tracked and returned, whatever ended the run.
"""
import math
import time

import numpy as np
from scipy.optimize import minimize

# Why a run ended (``Result.stop_reason``).
STOP_ITERATIONS = "iterations"            # the requested iterations ran
STOP_EVALUATIONS = "evaluation limit"     # max_evaluations reached
STOP_CONVERGED = "converged"              # projected gradient zero / no decrease possible
STOP_LINE_SEARCH = "line search failed"   # abnormal ends that restarts did not cure
STOP_NONFINITE = "non-finite loss"        # NaN/Inf that restarts did not cure
STOP_CALLBACK = "callback"                # the caller asked to stop
STOP_INTERRUPTED = "interrupted"          # Ctrl-C / SIGTERM


class _NonFinite(Exception):
    """Raised inside the objective wrapper to leave SciPy when f or its gradient is not finite."""


class _Stop(Exception):
    """Raised from the iteration hook to leave SciPy when the caller asks to stop."""


class Result:
    """What ``minimize_lbfgsb`` returns.

    x : best point seen (float64 host vector); loss : its loss; info : the ``info`` its
    evaluation returned; iterations / evaluations : counts over all restarts; restarts : how
    many times L-BFGS-B was restarted; stop_reason : one of the STOP_* strings; message : the
    last SciPy message; seconds : wall time.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        return (f"Result(loss={self.loss:.6g}, iterations={self.iterations}, evaluations={self.evaluations}, "
                f"stop_reason={self.stop_reason!r})")


def minimize_lbfgsb(fun, x0, lower, upper, iterations, history=10, max_evaluations=None, max_restarts=5,
                    on_evaluation=None, on_iteration=None, start_iteration=0, max_nonfinite=20):
    """Minimise ``fun`` over the box ``lower <= x <= upper`` with L-BFGS-B.

    Parameters
    ----------
    fun : callable x -> (loss float, gradient float64 array like x, info); ``info`` is passed on
    x0 : float64 1-d start point (clipped into the box)
    lower, upper : float64 arrays like x0 (or scalars), the box
    iterations : number of L-BFGS iterations to run (counted from ``start_iteration``)
    history : L-BFGS memory (SciPy's ``maxcor``)
    max_evaluations : limit on function evaluations (default 2 * iterations + 20)
    max_restarts : how many abnormal ends / non-finite runs to recover from
    max_nonfinite : consecutive NaN/Inf evaluations tolerated inside one run
    on_evaluation : called as ``on_evaluation(iteration, evaluation, loss, info)`` after every
        evaluation; ``iteration`` is the number of iterations completed when it ran
    on_iteration : called as ``on_iteration(iteration, evaluation, x_current)`` after every
        completed iteration; returning True stops the run (stop_reason "callback")
    start_iteration : iterations already done before this call (resuming); counts continue

    Returns a ``Result``. Ctrl-C (KeyboardInterrupt) is caught and ends the run with
    stop_reason "interrupted" and the best point so far.
    """
    x0 = np.asarray(x0, dtype=np.float64).ravel()
    lower = np.broadcast_to(np.asarray(lower, dtype=np.float64), x0.shape)
    upper = np.broadcast_to(np.asarray(upper, dtype=np.float64), x0.shape)
    bounds = np.stack([lower, upper], axis=1)  # (n, 2): SciPy's array form of Bounds
    x0 = np.clip(x0, lower, upper)
    iterations = int(iterations)
    if max_evaluations is None:
        max_evaluations = 2 * iterations + 20

    state = {"it": int(start_iteration), "ev": 0, "best_f": math.inf, "best_x": x0.copy(), "best_info": None,
             "stop": False, "nonfinite": 0}
    end_iteration = int(start_iteration) + iterations

    def wrapped(x):
        f, g, info = fun(x)
        state["ev"] += 1
        if on_evaluation is not None:
            on_evaluation(state["it"], state["ev"], f, info)
        if not (math.isfinite(f) and np.all(np.isfinite(g))):
            state["nonfinite"] += 1
            if not math.isfinite(state["best_f"]) or state["nonfinite"] > max_nonfinite:
                raise _NonFinite()
            # A wall instead of NaN: a value well above the best makes the line search back off
            # towards the last good point, as it does for any step that overshoots.
            return abs(state["best_f"]) * 2.0 + 1.0, np.zeros_like(g)
        state["nonfinite"] = 0
        if f < state["best_f"]:
            state["best_f"], state["best_x"], state["best_info"] = f, x.copy(), info
        return f, g

    def callback(intermediate_result):
        state["it"] += 1
        if on_iteration is not None and on_iteration(state["it"], state["ev"], intermediate_result.x):
            state["stop"] = True
            raise StopIteration  # SciPy ends the run at this iteration

    t0 = time.perf_counter()
    restarts, message, stop_reason = 0, "", None
    start = x0
    while stop_reason is None:
        remaining_it = end_iteration - state["it"]
        remaining_ev = max_evaluations - state["ev"]
        if remaining_it <= 0:
            stop_reason = STOP_ITERATIONS
            break
        if remaining_ev <= 0:
            stop_reason = STOP_EVALUATIONS
            break
        best_before = state["best_f"]
        try:
            res = minimize(wrapped, start, jac=True, method="L-BFGS-B", bounds=bounds, callback=callback,
                           options={"maxiter": remaining_it, "maxfun": remaining_ev, "maxcor": int(history),
                                    "ftol": 0.0, "gtol": 0.0, "maxls": 40})
        except _NonFinite:
            message = "non-finite loss or gradient"
            restarts += 1
            if restarts > max_restarts or not math.isfinite(state["best_f"]):
                stop_reason = STOP_NONFINITE
            start = state["best_x"]
            continue
        except KeyboardInterrupt:
            stop_reason = STOP_INTERRUPTED
            break
        message = str(res.message)
        if state["stop"]:
            stop_reason = STOP_CALLBACK
        elif res.status == 0:
            stop_reason = STOP_CONVERGED
        elif res.status == 1:
            stop_reason = STOP_ITERATIONS if state["it"] >= end_iteration else STOP_EVALUATIONS
        else:  # status 2: abnormal end, e.g. the line search found no decrease
            restarts += 1
            if restarts > max_restarts or not state["best_f"] < best_before:
                stop_reason = STOP_LINE_SEARCH
            start = state["best_x"]
    return Result(x=state["best_x"], loss=state["best_f"], info=state["best_info"], iterations=state["it"],
                  evaluations=state["ev"], restarts=restarts, stop_reason=stop_reason, message=message,
                  seconds=time.perf_counter() - t0)
