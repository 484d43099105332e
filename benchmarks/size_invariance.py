"""Does the same style weight give the same look at every size? (issue 14, item 3)

Stylises one photograph with one artwork at several sizes with the same options, then looks
at every result at one common analysis size: each result is resized (Lanczos) to it and scored
against the photograph and the artwork resized there:

* style loss  L_style = sum_l w_l E_l over conv1_1 ... conv5_1, w_l = 1/5   eqs. (4), (5)
* content PSNR against the photograph, in dB.

The analysis size defaults to the smallest size: every other result is then shrunk to it,
never enlarged (an enlarged small result lacks the fine texture its size could not hold, and
would be scored for that, not for its balance).

    python benchmarks/size_invariance.py --sizes 128,256,512 --iterations 100 --out si.json
    python benchmarks/size_invariance.py --sizes 128,256 --scaling paper

Each run is a plain ``nstlite.stylize`` call with the given options; ``--scales-from S`` makes
each run larger than S coarse-to-fine (``--scales`` from S up by octaves).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nstlite import image as im  # noqa: E402
from nstlite import losses  # noqa: E402
from nstlite.figures import psnr  # noqa: E402
from nstlite.options import DEFAULT_STYLE_LAYERS, reference_scales  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"


def style_loss_at(net, rgb, style_grams):
    """Sum_l w_l E_l of an H x W x 3 image against the artwork's Gram matrices (eqs. 4, 5);
    ``style_grams``: layer -> (Gram matrix, the artwork's positions M_l)."""
    feats = net.forward(net.preprocess(rgb), list(style_grams))
    total = 0.0
    per_layer = {}
    for name, (A, m_art) in style_grams.items():
        F = feats[name]
        n, m = F.shape[0], F.shape[1] * F.shape[2]
        G = losses.gram(F)
        # a Gram matrix is a sum over positions: the artwork's, at its own size, rescaled to
        # this image's M_l, as the run's target is (``GramLoss.blend``)
        E = float(((G - A * (m / m_art)) ** 2).sum()) / (4.0 * n * n * m * m)
        per_layer[name] = E
        total += E / len(style_grams)
    return total, per_layer


def analysis_targets(net, photo, artwork, size):
    """What every result is scored against at the analysis size ``size``: the photograph there
    (uint8) and the artwork's Gram matrices there, each with its number of positions."""
    h, w = im.fit_longest(*photo.shape[:2], size)
    art = im.resize(artwork, *im.fit_longest(*artwork.shape[:2], size))
    art_feats = net.forward(net.preprocess(art), list(DEFAULT_STYLE_LAYERS))
    grams = {n: (losses.gram(art_feats[n]).copy(), art_feats[n].shape[1] * art_feats[n].shape[2])
             for n in DEFAULT_STYLE_LAYERS}
    return im.to_uint8(im.resize(photo, h, w)), grams


def analyse(net, result_rgb, targets):
    """(style loss, per-layer E_l, PSNR) of one result against ``analysis_targets``."""
    photo_here, grams = targets
    shrunk = im.to_uint8(im.resize(result_rgb, *photo_here.shape[:2]))
    style, per_layer = style_loss_at(net, shrunk, grams)
    return style, per_layer, psnr(shrunk, photo_here)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--content", default=str(IMAGES / "tubingen.jpg"))
    p.add_argument("--style", default=str(IMAGES / "starry_night.jpg"))
    p.add_argument("--sizes", default="128,256,512")
    p.add_argument("--analysis-size", type=int, default=None, help="default: the smallest size")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--scaling", default="positions", help="--style-weight-scaling of every run")
    p.add_argument("--style-weight", type=float, default=None)
    p.add_argument("--scales-from", type=int, default=None,
                   help="run each size above this coarse-to-fine, from this size up by octaves")
    p.add_argument("--weights", default=None)
    p.add_argument("--save", default=None, help="folder for the results' images")
    p.add_argument("--out", default=None, help="JSON file for the table")
    args = p.parse_args(argv)

    import nstlite
    from nstlite.vgg import load_vgg19

    sizes = [int(s) for s in args.sizes.split(",")]
    analysis = args.analysis_size or min(sizes)
    photo = im.load_image(args.content).rgb
    artwork = im.load_image(args.style).rgb
    net = load_vgg19(args.weights, dtype="float64", layers=list(DEFAULT_STYLE_LAYERS))
    targets = analysis_targets(net, photo, artwork, analysis)
    rows = []
    for size in sizes:
        options = dict(size=size, iterations=args.iterations, style_weight_scaling=args.scaling,
                       quiet=True, weights=args.weights)
        if args.style_weight is not None:
            options["style_weight"] = args.style_weight
        if args.scales_from and size > args.scales_from:
            options["scales"] = reference_scales(size, start=args.scales_from)
        t0 = time.perf_counter()
        result = nstlite.stylize(args.content, args.style, **options)
        wall = time.perf_counter() - t0
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            im.save_image(str(Path(args.save) / f"size{size}.png"), result.image[..., :3])
        style, per_layer, db = analyse(net, result.image[..., :3], targets)
        own_style = result.final.get("style")
        row = dict(size=size, scales=options.get("scales"), analysis_size=analysis, style_loss=style,
                   psnr=db, per_layer=per_layer, own_size_style_loss=own_style,
                   evaluations=result.evaluations, wall_s=round(wall, 1))
        rows.append(row)
        print(f"{size:5d} px: style {style:.3g}  PSNR {db:.2f} dB  (own size: style {own_style:.3g}; "
              f"{result.evaluations} evaluations, {wall:.0f} s)", flush=True)
    styles = [r["style_loss"] for r in rows]
    dbs = [r["psnr"] for r in rows]
    summary = dict(style_ratio=max(styles) / min(styles), psnr_spread_db=max(dbs) - min(dbs),
                   target_met=max(styles) / min(styles) <= 2.0 and max(dbs) - min(dbs) <= 2.0)
    print(f"style loss spread {summary['style_ratio']:.2f}x (target <= 2), PSNR spread "
          f"{summary['psnr_spread_db']:.2f} dB (target <= 2): {'met' if summary['target_met'] else 'not met'}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(args=vars(args), rows=rows, summary=summary), indent=1))
    return 0 if all(math.isfinite(s) for s in styles) else 1


if __name__ == "__main__":
    sys.exit(main())
