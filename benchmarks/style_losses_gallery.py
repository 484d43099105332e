"""The gallery of style losses: Tübingen in the style of The Starry Night with each loss of
``nstlite.losses.STYLE_LOSSES`` at the same size and budget, and a two-region example.

    python benchmarks/style_losses_gallery.py --size 256 --iterations 100 --out docs/gallery

Writes ``losses_<name>.jpg``, ``regions_two_styles.jpg``, a side-by-side ``style_losses.jpg``
and ``style_losses.json`` (seconds per evaluation, evaluations, final losses) into --out.
The region map of the photo is made here from its colours: sky is where blue clearly
exceeds red in the upper part of the image.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import nstlite  # noqa: E402

IMAGES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "images")
LOSSES = ("gram", "mean_std", "gaussian_w2", "histogram", "sliced_wasserstein")


def sky_map(photo_path, out_path):
    rgb = np.asarray(Image.open(photo_path).convert("RGB"), dtype=np.int32)
    h = rgb.shape[0]
    sky = (rgb[..., 2] - rgb[..., 0] > 40) & (np.arange(h)[:, None] < 0.6 * h)
    labels = np.where(sky[..., None], np.array([0x87, 0xCE, 0xEB]), np.array([0x80, 0x80, 0x80])).astype(np.uint8)
    Image.fromarray(labels).save(out_path)
    return out_path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--out", default="docs/gallery")
    args = ap.parse_args()
    photo, art = os.path.join(IMAGES, "tubingen.jpg"), os.path.join(IMAGES, "starry_night.jpg")
    record, tiles = {}, []
    for name in LOSSES:  # each at its own default beta (StyleLoss.default_weight)
        out = os.path.join(args.out, f"losses_{name}.jpg")
        beta = nstlite.losses.STYLE_LOSSES[name].default_weight
        r = nstlite.stylize(photo, art, size=args.size, iterations=args.iterations, style_loss=name,
                            output=out, quiet=True)
        record[name] = {"style_weight": beta, "evaluations": r.evaluations, "seconds": round(r.seconds, 1),
                        "seconds_per_evaluation": round(r.seconds / max(r.evaluations, 1), 3),
                        "final": {k: v for k, v in r.final.items() if k != "style_layers"}}
        tiles.append((name, Image.open(out)))
        print(name, record[name], flush=True)
    regions = sky_map(photo, os.path.join(args.out, "tubingen_regions.png"))
    out = os.path.join(args.out, "regions_two_styles.jpg")
    r = nstlite.stylize(photo, [], size=args.size, iterations=args.iterations, output=out, quiet=True,
                        region_map=regions, region_styles={"#87ceeb": art,
                                                           "#808080": os.path.join(IMAGES, "shipwreck.jpg")})
    record["regions: sky starry_night, town shipwreck"] = {"evaluations": r.evaluations, "seconds": round(r.seconds, 1)}
    tiles.append(("regions", Image.open(out)))
    w, h = tiles[0][1].size
    sheet = Image.new("RGB", (w * len(tiles), h + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, im) in enumerate(tiles):
        sheet.paste(im.convert("RGB"), (i * w, 18))
        draw.text((i * w + 4, 3), label, fill="black")
    sheet.save(os.path.join(args.out, "style_losses.jpg"), quality=92)
    with open(os.path.join(args.out, "style_losses.json"), "w") as f:
        json.dump({"size": args.size, "iterations": args.iterations, "runs": record}, f, indent=1)


if __name__ == "__main__":
    main()
