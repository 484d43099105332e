"""Tiled evaluation with the real weights: exactness against the untiled objective, and the
cost per evaluation.

    python benchmarks/bench_tiled.py exact --size 512 --tile 128
    python benchmarks/bench_tiled.py exact --size 512 --tile 128 --dtype float64
    python benchmarks/bench_tiled.py speed --size 2048 --tile 384 --repeats 2
    python benchmarks/bench_tiled.py speed --size 1024 --tile 192 --repeats 3 --crop both
    python benchmarks/bench_tiled.py choose --size 4096 --budget-gb 14

``exact`` evaluates the paper's objective (content conv4_2, style conv1_1..conv5_1, Tübingen /
The Starry Night) once untiled and once by tiles, in float32, and prints the relative L2
difference of the gradients and of the losses (``--dtype float64``: the same at float64
rounding). ``speed`` times evaluations (median) untiled and tiled (``--tile 0`` for untiled
only), alternating; ``--crop both`` also times the tiles without their per-layer crops
(``TiledObjective(crop=False)``), in the same rounds. ``choose`` prints the tile that
``tile="auto"`` picks for a budget, with the memory model's numbers. Peak memory of whole runs:
run ``nstlite stylize ... --tile N`` under ``/usr/bin/time -v``.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from nstlite import image as im  # noqa: E402
from nstlite.memory import estimate_peak_bytes, host_bytes, scale_tile, tiled_peak_bytes  # noqa: E402
from nstlite.objective import build_objective  # noqa: E402
from nstlite.tiled import TiledObjective  # noqa: E402
from nstlite.vgg import load_vgg19  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# the example images: shared/images beside the checkout (or beside the folder of worktrees)
_CANDIDATES = [os.path.join(ROOT, *[".."] * k, "shared", "images") for k in (1, 2)]
IMAGES = os.environ.get("NSTLITE_IMAGES") or next((d for d in _CANDIDATES if os.path.isdir(d)), _CANDIDATES[0])
CONTENT, STYLE = ["conv4_2"], {n: 0.2 for n in ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")}


def problem(size, dtype="float32"):
    net = load_vgg19(layers=CONTENT + list(STYLE), dtype=dtype)
    photo = im.resize_longest(im.load_image(os.path.join(IMAGES, "tubingen.jpg")), size).rgb
    art = im.resize_longest(im.load_image(os.path.join(IMAGES, "starry_night.jpg")), size).rgb
    xc, xs = net.preprocess(photo), net.preprocess(art)
    objective = build_objective(net, xc, [xs], CONTENT, STYLE, alpha=1.0, beta=1e4)
    x = xc + net.xp.asarray(np.random.default_rng(0).normal(0, 10, xc.shape), dtype=xc.dtype)
    return net, objective, x


def exact(args):
    net, objective, x = problem(args.size, args.dtype)
    total, dx, parts = objective(x)
    total, dx, style = float(total), np.array(dx, dtype=np.float64), float(parts["style"])
    t_total, t_dx, t_parts = TiledObjective(objective, args.tile, crop=args.crop != "off")(x)
    rel = float(np.linalg.norm(np.asarray(t_dx, np.float64) - dx) / np.linalg.norm(dx))
    print(json.dumps({"size": list(x.shape[1:]), "tile": args.tile, "dtype": args.dtype, "crop": args.crop,
                      "gradient_rel_l2": rel,
                      "total_rel": abs(float(t_total) - total) / abs(total),
                      "style_rel": abs(float(t_parts["style"]) - style) / abs(style)}))


def timed(f, x, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x)
        out.append(time.perf_counter() - t0)
    return out


def speed(args):
    net, objective, x = problem(args.size, args.dtype)
    tiled = TiledObjective(objective, args.tile, crop=args.crop != "off") if args.tile else None
    uncropped = TiledObjective(objective, args.tile, crop=False) if args.tile and args.crop == "both" else None
    untiled_s, tiled_s, uncropped_s = [], [], []
    for _ in range(args.rounds):  # alternate, so that all see the same machine
        if not args.tiled_only:
            untiled_s += timed(objective, x, args.repeats)
        if tiled is not None:
            tiled_s += timed(tiled, x, args.repeats)
        if uncropped is not None:
            uncropped_s += timed(uncropped, x, args.repeats)
    row = {"size": list(x.shape[1:]), "tile": args.tile, "crop": args.crop, "untiled_s": untiled_s,
           "tiled_s": tiled_s}
    if uncropped_s:
        row["tiled_uncropped_s"] = uncropped_s
    if untiled_s and tiled_s:
        row["ratio_of_medians"] = statistics.median(tiled_s) / statistics.median(untiled_s)
    if untiled_s and uncropped_s:
        row["uncropped_ratio_of_medians"] = statistics.median(uncropped_s) / statistics.median(untiled_s)
    print(json.dumps(row))


def choose(args):
    net = load_vgg19(layers=CONTENT + list(STYLE))
    h, w = im.fit_longest(768, 1024, args.size)
    layers = CONTENT + list(STYLE)
    budget = int(args.budget_gb * 2**30)
    untiled = estimate_peak_bytes(net, h, w, layers, 10)
    rest = host_bytes(h, w, 10)
    tile = scale_tile(net, h, w, layers, 10, "auto", available=budget, content_layers=CONTENT)
    print(json.dumps({"size": [h, w], "budget_gb": args.budget_gb, "untiled_estimate_gb": untiled / 2**30,
                      "host_gb": rest / 2**30, "tile": tile,
                      "tiled_estimate_gb": (tiled_peak_bytes(net, h, w, layers, 10, tile, CONTENT) / 2**30
                                            if tile else None)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    for name, fn in (("exact", exact), ("speed", speed), ("choose", choose)):
        p = sub.add_parser(name)
        p.add_argument("--size", type=int, default=512)
        p.add_argument("--tile", type=int, default=128)
        p.add_argument("--repeats", type=int, default=2)
        p.add_argument("--rounds", type=int, default=1)
        p.add_argument("--tiled-only", action="store_true")
        p.add_argument("--budget-gb", type=float, default=3.0)
        p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
        p.add_argument("--crop", choices=("on", "off", "both"), default="on",
                       help="per-layer crops of the tiles (both: speed times with and without)")
        p.set_defaults(func=fn)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
