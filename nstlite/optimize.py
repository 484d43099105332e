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
* ``scipy.optimize.minimize`` converts a box of n bounds through Python lists of n floats and
  a Python loop over n (``old_bound_to_new`` and the ``nbd`` loop of ``_minimize_lbfgsb``):
  about 150 bytes and a microsecond per variable at every start, 1.4 GB and several seconds at
  2048 x 1536, 5.4 GB at 4096 x 3072. On SciPy >= 1.15 the driver therefore calls SciPy's own
  L-BFGS-B routine (``_lbfgsb.setulb``, its C port) in the loop ``_minimize_lbfgsb`` runs, with
  the box built by vectorised code: the same iterates, bit for bit (tested), without the
  conversion. Older SciPy goes through ``minimize``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from scipy.optimize import OptimizeResult, minimize


class StopReason(str, Enum):  # noqa: UP042  (enum.StrEnum needs Python 3.11; setup.py says 3.9)
    """Why a run ended. A ``str`` whose value is the text the logs and JSON files carry."""

    ITERATIONS = "iterations"            # the requested iterations ran
    EVALUATIONS = "evaluation limit"     # max_evaluations reached
    CONVERGED = "converged"              # projected gradient zero / no decrease possible
    LINE_SEARCH = "line search failed"   # abnormal ends that restarts did not cure
    NONFINITE = "non-finite loss"        # NaN/Inf that restarts did not cure
    CALLBACK = "callback"                # the caller asked to stop
    INTERRUPTED = "interrupted"          # Ctrl-C / SIGTERM

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)


def _native_setulb():
    """SciPy's L-BFGS-B step routine and its message tables where it has the C port's signature
    (SciPy >= 1.15: ``setulb(m, x, l, u, nbd, f, g, factr, pgtol, wa, iwa, task, lsave, isave,
    dsave, maxls, ln_task)``), else None (then ``minimize`` runs it)."""
    try:
        from scipy.optimize import _lbfgsb
        from scipy.optimize._lbfgsb_py import status_messages, task_messages
    except ImportError:
        return None
    doc = getattr(_lbfgsb.setulb, "__doc__", None) or ""
    if "setulb(m,x,l,u,nbd,f,g,factr,pgtol,wa,iwa,task,lsave,isave,dsave,maxls,ln_task)" not in doc.replace(" ", ""):
        return None
    return _lbfgsb.setulb, status_messages, task_messages


def _box_codes(lower, upper):
    """SciPy's ``nbd`` codes (0 free, 1 lower, 2 both, 3 upper bound) and the finite bounds."""
    has_low, has_up = np.isfinite(lower), np.isfinite(upper)
    nbd = np.where(has_low, np.where(has_up, 2, 1), np.where(has_up, 3, 0)).astype(np.int32)
    return nbd, np.where(has_low, lower, 0.0), np.where(has_up, upper, 0.0)


def _lbfgsb_native(native, fun, x0, box, history, maxiter, maxfun, maxls, callback):
    """``_minimize_lbfgsb``'s loop with ``ftol = gtol = 0``, step for step: the same calls to
    SciPy's routine, so the same iterates. ``x0`` lies in the box; ``box`` is ``_box_codes``'s
    triple (its bounds are 0 where there is none, as SciPy passes them). Returns SciPy's
    ``OptimizeResult`` with the fields ``minimize`` would give the driver: status, message, x."""
    setulb, status_messages, task_messages = native
    nbd, low, up = box
    m, n = int(history), x0.size
    x = np.array(x0, dtype=np.float64)  # SciPy's own copy of the start (already inside the box)
    f, g = np.array(0.0, dtype=np.float64), np.zeros(n, dtype=np.float64)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
    iwa = np.zeros(3 * n, np.int32)
    task, ln_task, lsave = np.zeros(2, np.int32), np.zeros(2, np.int32), np.zeros(4, np.int32)
    isave, dsave = np.zeros(44, np.int32), np.zeros(29, np.float64)
    evaluations = iterations = 0
    while True:
        setulb(m, x, low, up, nbd, f, g, 0.0, 0.0, wa, iwa, task, lsave, isave, dsave, maxls, ln_task)
        if task[0] == 3:  # the routine asks for f and g at x
            value, gradient = fun(x)
            evaluations += 1
            f = float(value)
            g = np.asarray(gradient, dtype=np.float64)
        elif task[0] == 1:  # an iteration is done
            iterations += 1
            callback(x)
            if iterations >= maxiter:
                task[0], task[1] = 5, 504
            elif evaluations > maxfun:
                task[0], task[1] = 5, 502
        else:
            break
    status = 0 if task[0] == 4 else 1 if (evaluations > maxfun or iterations >= maxiter) else 2
    return OptimizeResult(status=status, message=status_messages[task[0]] + ": " + task_messages[task[1]], x=x)


def _all_finite(g) -> bool:
    """True when every element of ``g`` is finite: min and max carry any NaN or infinity, so
    two reductions decide it without a map-sized boolean array per evaluation."""
    return g.size == 0 or (math.isfinite(g.min()) and math.isfinite(g.max()))


class _NonFinite(Exception):
    """Raised inside the objective wrapper to leave SciPy when f or its gradient is not finite."""


class _StopRequested(Exception):
    """Raised inside the iteration callback to leave SciPy when the caller asked to stop.

    Our own exception rather than ``StopIteration``: SciPy < 1.11 does not catch
    ``StopIteration`` from a callback, and this one means the same on every version."""


@dataclass
class Result:
    """What ``minimize_lbfgsb`` returns.

    x : best point seen (float64 host vector); loss : its loss; info : the ``info`` its
    evaluation returned (None when nothing finite was evaluated); iterations / evaluations :
    counts over all restarts (iterations include ``start_iteration``); restarts : how many times
    L-BFGS-B was restarted; stop_reason : why it ended; message : the last SciPy message;
    seconds : wall time.
    """

    x: np.ndarray
    loss: float
    info: Any | None
    iterations: int
    evaluations: int
    restarts: int
    stop_reason: StopReason
    message: str
    seconds: float

    def __repr__(self):
        return (f"Result(loss={self.loss:.6g}, iterations={self.iterations}, evaluations={self.evaluations}, "
                f"stop_reason={self.stop_reason.value!r})")


def minimize_lbfgsb(fun: Callable, x0, lower, upper, iterations: int, history: int = 10,
                    max_evaluations: int | None = None, max_restarts: int = 5,
                    on_evaluation: Callable | None = None, on_iteration: Callable | None = None,
                    start_iteration: int = 0, max_nonfinite: int = 20) -> Result:
    """Minimise ``fun`` over the box ``lower <= x <= upper`` with L-BFGS-B.

    Parameters
    ----------
    fun : callable x -> (loss float, gradient float64 array like x, info); ``info`` is passed on
    x0 : float64 start point, any shape (clipped into the box; the optimiser sees it flat)
    lower, upper : float64 arrays broadcastable to x0 (e.g. per channel, or scalars), the box
    iterations : number of L-BFGS iterations to run (counted from ``start_iteration``)
    history : L-BFGS memory (SciPy's ``maxcor``)
    max_evaluations : limit on function evaluations (default 2 * iterations + 20)
    max_restarts : how many abnormal ends / non-finite runs to recover from
    on_evaluation : called as ``on_evaluation(iteration, evaluation, loss, info)`` after every
        evaluation; ``iteration`` is the number of iterations completed when it ran
    on_iteration : called as ``on_iteration(iteration, evaluation, x_current)`` after every
        completed iteration; returning True stops the run (``StopReason.CALLBACK``)
    start_iteration : iterations already done before this call (resuming); counts continue
    max_nonfinite : consecutive NaN/Inf evaluations tolerated inside one run

    Returns
    -------
    Result
        Ctrl-C (KeyboardInterrupt) is caught and ends the run with ``StopReason.INTERRUPTED``
        and the best point so far.
    """
    x0 = np.asarray(x0, dtype=np.float64)
    lower = np.broadcast_to(np.asarray(lower, dtype=np.float64), x0.shape)  # views: no image-sized copies
    upper = np.broadcast_to(np.asarray(upper, dtype=np.float64), x0.shape)
    iterations = int(iterations)
    if max_evaluations is None:
        max_evaluations = 2 * iterations + 20
    # the start inside the box, a copy the run owns as its best-point buffer
    start = np.clip(x0, lower, upper).ravel()
    del x0  # the caller's start: not kept beside the run's copy
    run = _Run(fun, start, int(start_iteration), on_evaluation, on_iteration, max_nonfinite)
    options = {"maxcor": int(history), "ftol": 0.0, "gtol": 0.0, "maxls": 40}
    native = _native_setulb()
    # the box once per run: SciPy's codes for its own routine, or its (n, 2) array form for minimize
    bounds = (tuple(a.ravel() for a in _box_codes(lower, upper)) if native
              else np.stack([lower.ravel(), upper.ravel()], axis=1))
    del lower, upper
    return run.until_done(bounds, int(start_iteration) + iterations, max_evaluations, max_restarts, options,
                          native)


class _Run:
    """The state of one ``minimize_lbfgsb`` call: counts and the best point."""

    def __init__(self, fun, x0, start_iteration, on_evaluation, on_iteration, max_nonfinite):
        self.fun, self.on_evaluation, self.on_iteration = fun, on_evaluation, on_iteration
        self.max_nonfinite = max_nonfinite
        self.iteration, self.evaluation, self.nonfinite = start_iteration, 0, 0
        self.best_f, self.best_x, self.best_info = math.inf, x0, None  # x0: a copy for this run

    def evaluate(self, x):
        """SciPy's objective: ``fun`` with NaN/Inf kept out of L-BFGS-B's memory."""
        f, g, info = self.fun(x)
        self.evaluation += 1
        if self.on_evaluation is not None:
            self.on_evaluation(self.iteration, self.evaluation, f, info)
        if not (math.isfinite(f) and _all_finite(g)):
            self.nonfinite += 1
            if not math.isfinite(self.best_f) or self.nonfinite > self.max_nonfinite:
                raise _NonFinite()
            # A wall instead of NaN: a value well above the best makes the line search back off
            # towards the last good point, as it does for any step that overshoots.
            return abs(self.best_f) * 2.0 + 1.0, np.zeros_like(g)
        self.nonfinite = 0
        if f < self.best_f:  # the best point is copied into one buffer kept for the run
            np.copyto(self.best_x, x)
            self.best_f, self.best_info = f, info
        return f, g

    def iteration_done(self, xk):
        """SciPy's callback after each iteration, called with the current point ``xk``.

        The one-argument form: every SciPy this package allows passes ``xk`` to it (from 1.11 on,
        only a parameter named ``intermediate_result`` would get an ``OptimizeResult``)."""
        self.iteration += 1
        if self.on_iteration is not None and self.on_iteration(self.iteration, self.evaluation, xk):
            raise _StopRequested()

    def until_done(self, bounds, end_iteration, max_evaluations, max_restarts, options, native=None):
        """Run L-BFGS-B, restarting from the best point after abnormal ends, until a reason to stop
        (``native``: ``_native_setulb()``, SciPy's routine called directly; None: ``minimize``)."""
        t0 = time.perf_counter()
        restarts, message, stop_reason = 0, "", None
        start = self.best_x
        while stop_reason is None:
            remaining_it = end_iteration - self.iteration
            remaining_ev = max_evaluations - self.evaluation
            if remaining_it <= 0:
                stop_reason = StopReason.ITERATIONS
                break
            if remaining_ev <= 0:
                stop_reason = StopReason.EVALUATIONS
                break
            best_before = self.best_f
            try:
                if native:
                    res = _lbfgsb_native(native, self.evaluate, start, bounds, options["maxcor"], remaining_it,
                                         remaining_ev, options["maxls"], self.iteration_done)
                else:
                    res = minimize(self.evaluate, start, jac=True, method="L-BFGS-B", bounds=bounds,
                                   callback=self.iteration_done,
                                   options=dict(options, maxiter=remaining_it, maxfun=remaining_ev))
            except _NonFinite:
                message = "non-finite loss or gradient"
                restarts += 1
                if restarts > max_restarts or not math.isfinite(self.best_f):
                    stop_reason = StopReason.NONFINITE
                start = self.best_x
                continue
            except _StopRequested:
                stop_reason, message = StopReason.CALLBACK, "stopped by the iteration callback"
                break
            except KeyboardInterrupt:
                stop_reason = StopReason.INTERRUPTED
                break
            message = str(res.message)
            stop_reason = self._reason(res.status, end_iteration)
            if stop_reason is None:  # status 2: abnormal end, e.g. the line search found no decrease
                restarts += 1
                if restarts > max_restarts or not self.best_f < best_before:
                    stop_reason = StopReason.LINE_SEARCH
                start = self.best_x
        return Result(x=self.best_x, loss=self.best_f, info=self.best_info, iterations=self.iteration,
                      evaluations=self.evaluation, restarts=restarts, stop_reason=stop_reason, message=message,
                      seconds=time.perf_counter() - t0)

    def _reason(self, status, end_iteration):
        """The stop reason of a SciPy run that returned ``status`` (None: restart)."""
        if status == 0:
            return StopReason.CONVERGED
        if status == 1:
            return StopReason.ITERATIONS if self.iteration >= end_iteration else StopReason.EVALUATIONS
        return None
