"""Where the time of a whole ``stylize`` run goes: kernels / losses / optimiser / rest.

    python benchmarks/profile_run.py --size 256 --iterations 10
    python benchmarks/profile_run.py --size 512 --iterations 6 --json split.json

Runs one real ``nstlite.stylize`` (Tübingen and The Starry Night from ``../shared/images`` when
present, else synthetic images; the real VGG19 weights when ``nstlite.load_vgg19()`` finds
them) under cProfile and splits the optimisation loop by the cumulative time of a few
functions (the profiler times the main thread, which also waits for the worker threads, so
the split covers the threaded work too):

* kernels: ``VGG19.forward`` + ``VGG19.backward`` called by the objective (convolutions, ReLU,
  pooling, hand-outs);
* losses: ``Objective.__call__`` less the kernels (the fused loss terms, their sums, TV);
* boundary: ``Evaluator.__call__`` less the objective (host<->device copies, float64 casts);
* optimiser: ``nstlite.optimize.minimize_lbfgsb`` (SciPy's L-BFGS-B, called directly or
  through ``minimize``) less the evaluations and the iteration callback (L-BFGS-B's own
  bookkeeping), plus nstlite's wrapper around each evaluation;
* reporting: the reporter's hooks (log lines, progress, checkpoints);
* rest: the run outside the optimisation (loading, targets, saving).

Each is also given per evaluation. The profiler's own overhead inflates the many small
Python calls (the "rest" of the loop most), so the script also times the same run without
the profiler and prints seconds per evaluation from its log.
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import nstlite  # noqa: E402

# the example images: shared/images beside the checkout (or beside the folder of worktrees)
_CANDIDATES = [os.path.join(ROOT, *[".."] * k, "shared", "images") for k in (1, 2)]
IMAGES = os.environ.get("NSTLITE_IMAGES") or next((d for d in _CANDIDATES if os.path.isdir(d)), _CANDIDATES[0])
# (file name, function name) -> part; cumulative times, so nested parts are subtracted below
MARKS = {
    "forward": ("vgg.py", "forward"), "backward": ("vgg.py", "backward"),
    "objective": ("objective.py", "__call__"), "evaluator": ("problem.py", "__call__"),
    "wrapper": ("optimize.py", "evaluate"), "callback": ("optimize.py", "iteration_done"),
    "minimize": ("optimize.py", "minimize_lbfgsb"), "on_evaluation": ("reporter.py", "on_evaluation"),
    "on_iteration": ("reporter.py", "on_iteration"), "stylize": ("style_transfer.py", "stylize"),
}


def inputs(size):
    """(content, style) paths or arrays."""
    content, style = os.path.join(IMAGES, "tubingen.jpg"), os.path.join(IMAGES, "starry_night.jpg")
    if os.path.exists(content) and os.path.exists(style):
        return content, style
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (size, size, 3)), rng.uniform(0, 255, (size, size, 3))


def cumulative(stats, mark):
    """Cumulative seconds of the function ``mark`` = (file name, function name), summed over
    every function of that name in files of that name (0 when absent)."""
    filename, function = mark
    return sum(ct for (path, _, name), (_, _, _, ct, _) in stats.stats.items()
               if name == function and os.path.basename(path) == filename)


def called_from(stats, mark, caller):
    """Cumulative seconds of ``mark`` in the calls made by ``caller`` (both (file, function))."""
    total = 0.0
    for (path, _, name), (_, _, _, _, callers) in stats.stats.items():
        if name == mark[1] and os.path.basename(path) == mark[0]:
            total += sum(ct for (cpath, _, cname), (_, _, _, ct) in callers.items()
                         if cname == caller[1] and os.path.basename(cpath) == caller[0])
    return total


def split(stats, evaluations):
    """The parts (seconds) of one profiled run."""
    c = {k: cumulative(stats, m) for k, m in MARKS.items()}
    # the network's passes inside the objective only (the targets' forwards run before the loop)
    kernels = sum(called_from(stats, MARKS[k], MARKS["objective"]) for k in ("forward", "backward"))
    loop = c["minimize"]
    parts = {
        "kernels": kernels,
        "losses": c["objective"] - kernels,
        "boundary": c["evaluator"] - c["objective"],
        "optimiser": loop - c["wrapper"] - c["callback"] + (c["wrapper"] - c["evaluator"] - c["on_evaluation"]),
        "reporting": c["on_evaluation"] + c["on_iteration"],
        "loop": loop,
        "rest": c["stylize"] - loop,
        "evaluations": evaluations,
    }
    parts["per_evaluation_ms"] = {k: round(1e3 * v / evaluations, 2) for k, v in parts.items()
                                  if k not in ("evaluations", "rest")}
    return parts


def run(size, iterations, log=None, quiet=True, bounds="pixels"):
    content, style = inputs(size)
    return nstlite.stylize(content, style, size=size, iterations=iterations, quiet=quiet, log=log, bounds=bounds)


def per_evaluation_seconds(log_path):
    """Median seconds between consecutive evaluations of a run's log (the first one excluded:
    it carries the start-up)."""
    from bench_run import log_per_evaluation

    seconds, count = log_per_evaluation(log_path)
    return seconds if count > 2 else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--json", help="write the split to this file")
    ap.add_argument("--top", type=int, default=0, help="also print the N functions of most own time")
    ap.add_argument("--profiled-only", action="store_true", help="skip the warm-up and the unprofiled run")
    ap.add_argument("--bounds", choices=("pixels", "none"), default="pixels", help="the run's --bounds")
    a = ap.parse_args(argv)
    plain = None
    if not a.profiled_only:
        run(a.size, 1)  # warm-up: weights mapped, buffers and Winograd kernels made
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "run.jsonl")
            t0 = time.perf_counter()
            result = run(a.size, a.iterations, log, bounds=a.bounds)
            plain = {"seconds": time.perf_counter() - t0, "evaluations": result.evaluations,
                     "per_evaluation_s": per_evaluation_seconds(log)}
    profiler = cProfile.Profile()
    result = profiler.runcall(run, a.size, a.iterations, bounds=a.bounds)
    stats = pstats.Stats(profiler)
    parts = split(stats, result.evaluations)
    report = {"size": a.size, "iterations": a.iterations, "bounds": a.bounds, "load": os.getloadavg()[0],
              "profiled": parts, "unprofiled": plain}
    print(json.dumps(report, indent=1))
    if a.top:
        stats.sort_stats("tottime").print_stats(a.top)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
