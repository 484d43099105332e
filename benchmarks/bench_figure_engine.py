"""A figure serial against the embedded Dask cluster: wall times, speed-up, the seconds of every
panel, and what N machines would take.

    python benchmarks/bench_figure_engine.py --size 256 --iterations 100 --pairs 2 [--out bench.jsonl]

Each run is a fresh ``nstlite figureF`` process (Tübingen and The Starry Night, the real
weights unless ``--weights``) into a temporary folder; serial (``--serial``: one panel after
another in one process, OpenBLAS's own thread count unless ``--serial-blas-threads``) and
cluster (the default engine: an embedded ``LocalCluster``, one BLAS thread per panel, unless
``--workers`` / ``--blas-threads``) alternate within each pair, and the order flips from one
pair to the next (s c, c s, ...), so that both see the same machine load. The 1-minute load
average before every run is recorded: on a shared machine the numbers are upper bounds.

One JSON line (stdout, and appended to ``--out``) with, per engine, the wall time of every run
(the process, and the figure's own ``wall_seconds`` from its sidecar), the median speed-up,
each panel's seconds (``task_seconds`` from the sidecar: the whole task on its worker, weights
loading on a worker's first task included) and their sum, and the projection for N machines:

    overhead  = cluster wall - sum(task seconds) / slots          (median over the cluster runs)
    projected = sum(task seconds) / (N x slots per machine) + overhead

where ``slots`` is the cluster's workers x threads per worker here and ``--slots-per-machine``
defaults to the same (machines like this one). The overhead is everything that does not shrink
with more machines: starting Python and the cluster, loading the inputs, the scheduling, the
imbalance of the last round, drawing and writing the grid. No projection can go below the
longest panel plus the overhead; ``projected_bounded_s`` says so.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# the example images: shared/images beside the checkout (or beside the folder of worktrees)
_CANDIDATES = [os.path.join(ROOT, *[".."] * k, "shared", "images") for k in (1, 2)]
IMAGES = os.environ.get("NSTLITE_IMAGES") or next((d for d in _CANDIDATES if os.path.isdir(d)), _CANDIDATES[0])


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_figure(args, engine_flags, folder):
    """One figure process: (wall seconds, its sidecar document)."""
    content, style = os.path.join(args.images, "tubingen.jpg"), os.path.join(args.images, "starry_night.jpg")
    output = os.path.join(folder, "figure.png")
    cmd = [args.python, "-m", "nstlite", f"figure{args.figure}", "--content", content, "--style", style,
           "--output", output, "--size", str(args.size), "--iterations", str(args.iterations), "--quiet",
           "--overwrite"] + engine_flags
    for flag, value in (("--weights", args.weights), ("--layers", args.layers),
                        ("--ratios" if args.figure == 3 else "--ratio", args.ratios)):
        if value:
            cmd += [flag, value]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    with open(os.path.join(folder, "figure.json"), encoding="utf-8") as f:
        return wall, json.load(f)


def summarise(runs):
    """Per engine: wall times, the figure's own wall times, per-panel task seconds (median over runs)."""
    per_panel = {}
    for _, doc in runs:
        for p in doc["panels"]:
            per_panel.setdefault(p["panel"], []).append(p["task_seconds"])
    tasks = {k: round(statistics.median(v), 3) for k, v in per_panel.items()}
    return {"wall_s": [round(w, 2) for w, _ in runs], "figure_wall_s": [d["wall_seconds"] for _, d in runs],
            "engine": runs[-1][1]["engine"], "task_seconds": tasks, "sum_task_seconds": round(sum(tasks.values()), 2),
            "longest_task_s": max(tasks.values())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--figure", type=int, choices=(1, 2, 3), default=3)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--pairs", type=int, default=2, help="serial/cluster pairs (default %(default)s)")
    p.add_argument("--weights", default=None, help="default: nstlite's (~/.cache/nstlite/vgg19.h5)")
    p.add_argument("--layers", default=None, help="fewer layers, fewer panels (default: the paper's five)")
    p.add_argument("--ratios", default=None, help="Figure 3's columns (default the paper's four)")
    p.add_argument("--images", default=IMAGES, help="folder with tubingen.jpg and starry_night.jpg")
    p.add_argument("--workers", type=int, default=None, help="the cluster's workers (default: the engine's plan)")
    p.add_argument("--blas-threads", type=int, default=None, help="the cluster's BLAS threads per panel")
    p.add_argument("--serial-blas-threads", type=int, default=None,
                   help="BLAS threads of the serial run (default: OpenBLAS's own, every core)")
    p.add_argument("--machines", default="1,2,5,10,20", help="N of the projection (default %(default)s)")
    p.add_argument("--slots-per-machine", type=int, default=None,
                   help="panels at once per machine (default: the cluster's here)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", default=None, help="append the JSON line to this file too")
    args = p.parse_args(argv)
    for name in ("tubingen.jpg", "starry_night.jpg"):
        if not os.path.exists(os.path.join(args.images, name)):
            raise SystemExit(f"{name} is not in {args.images} (--images DIR)")

    serial_flags = ["--serial"] + (["--blas-threads", str(args.serial_blas_threads)] if args.serial_blas_threads
                                   else [])
    cluster_flags = (["--workers", str(args.workers)] if args.workers else []) + \
        (["--blas-threads", str(args.blas_threads)] if args.blas_threads else [])
    runs = {"serial": [], "cluster": []}
    loads = []
    folder = tempfile.mkdtemp(prefix="bench_figure_engine_")
    try:
        for i in range(args.pairs):
            order = ("serial", "cluster") if i % 2 == 0 else ("cluster", "serial")
            for name in order:
                loads.append({"run": f"{name}{i}", "load": load_average()})
                runs[name].append(run_figure(args, serial_flags if name == "serial" else cluster_flags, folder))
                print(f"# {name} {i}: {runs[name][-1][0]:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    serial, cluster = summarise(runs["serial"]), summarise(runs["cluster"])
    slots = cluster["engine"]["workers"] * max(cluster["engine"]["threads_per_worker"])
    per_machine = args.slots_per_machine or slots
    overhead = statistics.median(w - cluster["sum_task_seconds"] / slots for w in cluster["wall_s"])
    machines = [int(n) for n in args.machines.split(",")]
    projected = {n: round(cluster["sum_task_seconds"] / (n * per_machine) + overhead, 1) for n in machines}
    bounded = {n: round(max(cluster["sum_task_seconds"] / (n * per_machine), cluster["longest_task_s"]) + overhead, 1)
               for n in machines}
    row = {"bench": "figure_engine", "figure": args.figure, "size": args.size, "iterations": args.iterations,
           "pairs": args.pairs, "panels": len(cluster["task_seconds"]), "cores": os.cpu_count(), "loads": loads,
           "serial": serial, "cluster": cluster,
           "speedup": round(statistics.median(serial["wall_s"]) / statistics.median(cluster["wall_s"]), 3),
           "speedup_per_pair": [round(s / c, 3) for s, c in zip(serial["wall_s"], cluster["wall_s"])],
           "cluster_slots": slots, "slots_per_machine": per_machine, "overhead_s": round(overhead, 2),
           "projected_s": projected, "projected_bounded_s": bounded}
    line = json.dumps(row)
    print(line)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
