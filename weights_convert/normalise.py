"""``weights_convert normalise``: the normalised VGG19 of Gatys, Ecker & Bethge (2015).

The paper: "We normalized the network by scaling the weights such that the mean activation of
each convolutional filter over images and positions is equal to one." ReLU and both poolings
are positively homogeneous, so dividing filter k of layer l (its weights and bias) by s_l[k]
divides its rectified response by s_l[k] everywhere; multiplying the weights that read
channel k in layer l + 1 by s_l[k] then gives layer l + 1 the input it had before. Done layer
by layer in order, every rectified response of the normalised network is the raw network's
divided by that filter's scale:

    relu_l^norm[k] = relu_l^raw[k] / s_l[k],   s_l[k] = mean over images and positions of relu_l^raw[k].

Because the compensation restores each layer's input exactly, the scales of every layer are
the raw network's mean activations, so one forward pass per image gives all of them.

Each image counts equally (its positions are averaged first). A filter that never fires on
the images (mean 0) keeps scale 1 and is counted as dead. The spread of the factors is
estimated by a bootstrap over the images: resample the images with replacement, recompute
s_l, and report the relative standard deviation of each filter's factor.

The scales are stored in the file (``/<layer>/scale``, float64, raw = normalised * scale) and
summarised, with the image list, in the root attribute ``normalisation`` (JSON).
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import h5py
import numpy as np

from nstlite import image as im
from nstlite.atomic import atomic_write
from nstlite.vgg import VGG19
from nstlite.weights import MAX_WIDTH, hdf5_refusal, read_weights, write_weights

from .errors import ConvertError
from .validate import file_sha256

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_SIZE = 256
DEFAULT_BOOTSTRAP = 200
MIN_SIDE = 64  # smaller images (icons, test patterns in a wheel) are skipped
ATTRIBUTE = "normalisation"


# --------------------------------------------------------------------------- the images
def _wheel_images(path: str):
    """(name, PIL image) for each JPEG/PNG in a ``*/data/`` folder of a wheel (a zip)."""
    from PIL import Image

    try:
        with zipfile.ZipFile(path) as z:
            members = sorted(n for n in z.namelist()
                             if "/data/" in n and n.lower().endswith(IMAGE_EXTENSIONS))
            for name in members:
                yield f"{_wheel_name(path)}:{name}", Image.open(io.BytesIO(z.read(name)))
    except zipfile.BadZipFile:
        raise ConvertError(f"{path} is not a wheel (zip) file") from None


def _wheel_name(path: str) -> str:
    """scikit_image-0.26.0-cp311-...whl -> scikit_image-0.26.0 (the package and its version)."""
    return "-".join(os.path.basename(path).split("-")[:2])


def _sources(path: str):
    """(name, image source) for a folder (its image files), a wheel, or one image file."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        return [(os.path.join(path, f), os.path.join(path, f)) for f in files]
    if path.lower().endswith(".whl"):
        return list(_wheel_images(path))
    if os.path.isfile(path):
        return [(path, path)]
    raise ConvertError(f"no such image, folder or wheel: {path}")


def collect_images(paths, size: int = DEFAULT_SIZE) -> list:
    """The normalisation images: [(name, H x W x 3 float RGB 0..255, longest side ``size``)].

    paths : folders (their .jpg/.png files), wheels (the images under ``*/data/``) or image
    files. Colour and grey images are used alike (grey as three equal channels); images with a
    side under MIN_SIDE px are skipped.
    """
    images = []
    for path in paths:
        for name, src in _sources(os.path.expanduser(str(path))):
            img = im.load_image(src, "normalisation image")
            if min(img.rgb.shape[:2]) < MIN_SIDE:
                continue
            images.append((name, im.resize_longest(img, size).rgb))
    if not images:
        raise ConvertError(f"no usable images (JPEG/PNG, at least {MIN_SIDE} px) in {', '.join(map(str, paths))}")
    return images


# --------------------------------------------------------------------------- the scales
def mean_activations(params: dict, attrs: dict, images, pooling: str = "avg") -> dict:
    """layer -> (n_images, channels) float64: each filter's rectified response averaged over the
    positions of each image."""
    net = VGG19(params, attrs, pooling=pooling)
    layers = [n for n in net.layer_names if n.startswith("conv")]
    per_image = {n: [] for n in layers}
    for _, rgb in images:
        feats = net.forward(net.preprocess(rgb), layers)
        for n in layers:
            per_image[n].append(np.asarray(feats[n], dtype=np.float64).mean(axis=(1, 2)))
    return {n: np.stack(v) for n, v in per_image.items()}


def filter_scales(per_image: dict) -> dict:
    """layer -> (channels,) the factor s_l[k]: the mean over images (1 for a dead filter)."""
    scales = {}
    for name, means in per_image.items():
        s = means.mean(axis=0)
        scales[name] = np.where(s > 0, s, 1.0)
    return scales


def normalised_params(params: dict, scales: dict) -> dict:
    """The weights rescaled by ``scales`` (module docstring): filter k of layer l divided by
    s_l[k], its inputs multiplied by the previous layer's scales."""
    out, previous = {}, None
    for name, (w, b) in params.items():
        s = scales[name]
        w = np.asarray(w, np.float64) / s[:, None, None, None]
        if previous is not None:
            w = w * previous[None, :, None, None]
        out[name] = (w.astype(np.float32), (np.asarray(b, np.float64) / s).astype(np.float32))
        previous = s
    return out


def bootstrap_spread(per_image: dict, rounds: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """layer -> (channels,) relative standard deviation of s_l[k] over ``rounds`` resamplings of
    the images with replacement (0 with a single image: nothing to resample)."""
    rng = np.random.default_rng(seed)
    n = next(iter(per_image.values())).shape[0]
    picks = rng.integers(0, n, size=(rounds, n))
    spread = {}
    for name, means in per_image.items():
        samples = means[picks].mean(axis=1)  # (rounds, channels)
        centre = means.mean(axis=0)
        spread[name] = np.where(centre > 0, samples.std(axis=0) / np.where(centre > 0, centre, 1.0), 0.0)
    return spread


def summary(images, scales: dict, spread: dict, per_image: dict, size: int, pooling: str, rounds: int) -> dict:
    """The JSON-able record stored in the file's ``normalisation`` attribute."""
    layers = {}
    for name, s in scales.items():
        layers[name] = {"factor_min": float(s.min()), "factor_median": float(np.median(s)),
                        "factor_max": float(s.max()),
                        "bootstrap_rel_std_median": float(np.median(spread[name])),
                        "bootstrap_rel_std_max": float(spread[name].max()),
                        "dead_filters": int((per_image[name].mean(axis=0) <= 0).sum())}
    return {"method": "mean rectified activation of each conv filter over images and positions = 1 "
                      "(Gatys et al. 2015); raw response = normalised response * scale",
            "images": [name for name, _ in images], "image_count": len(images), "size": int(size),
            "pooling": pooling, "bootstrap_rounds": int(rounds), "layers": layers}


# --------------------------------------------------------------------------- the command
def normalise_file(src: str, dst: str, image_paths, size: int = DEFAULT_SIZE, pooling: str = "avg",
                   rounds: int = DEFAULT_BOOTSTRAP, seed: int = 0, force: bool = False) -> dict:
    """Write the normalised network of the nstlite file ``src`` to ``dst``; returns the summary.

    The file keeps ``src``'s preprocessing; its ``source`` says it was normalised, its
    ``source_sha256`` is ``src``'s, and the scales go where ``read_scales`` finds them.
    """
    if os.path.exists(dst) and not force:
        raise ConvertError(f"{dst} exists; pass --force to replace it")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ConvertError("the output would replace the source file; choose another -o")
    if size < 32:
        raise ConvertError(f"--size {size} is too small: VGG19 needs at least 32 px to reach conv5")
    params, attrs = read_weights(src)
    images = collect_images(image_paths, size)
    per_image = mean_activations(params, attrs, images, pooling)
    scales = filter_scales(per_image)
    params = {n: params[n] for n in scales}  # the layers the network reached
    record = summary(images, scales, bootstrap_spread(per_image, rounds, seed), per_image, size, pooling, rounds)
    source = f"{attrs.get('source', src)}; normalised on {len(images)} images (weights_convert normalise)"

    def write(tmp):
        write_weights(tmp, normalised_params(params, scales), attrs["channel_order"], attrs["input_scale"],
                      attrs["mean"], attrs["std"], source, file_sha256(src))
        with h5py.File(tmp, "a") as f:
            f.attrs[ATTRIBUTE] = json.dumps(record)
            for name, s in scales.items():
                f[name].create_dataset("scale", data=np.asarray(s, np.float64))

    atomic_write(dst, write)
    return record


def read_scales(path: str) -> dict:
    """layer -> (channels,) float64 scales of a normalised file (empty for a raw one); each
    ``scale`` dataset is checked as the weights are (``hdf5_refusal``) before it is read."""
    params, _ = read_weights(path, check=False)  # refuses unsafe layer groups before anything is read
    scales = {}
    with h5py.File(path, "r") as f:
        for name in params:
            if f[name].get("scale", getlink=True) is None:
                continue
            why = hdf5_refusal(f[name], "scale", MAX_WIDTH)
            if why:
                raise ConvertError(f"{path}: {why}; refusing the file")
            scales[name] = np.asarray(f[name]["scale"][()], np.float64).reshape(-1)
    return scales


def summary_lines(text) -> list:
    """``info`` lines for a file's ``normalisation`` attribute (a JSON string)."""
    try:
        record = json.loads(text)
        layers = record["layers"]
        lines = [f"normalised:     on {record['image_count']} images at {record['size']} px, "
                 f"{record['pooling']} pooling (mean rectified activation 1 per filter)",
                 f"  images:       {', '.join(record['images'])}",
                 f"  factors (min / median / max; bootstrap rel. std median / max over "
                 f"{record['bootstrap_rounds']} resamplings of the images; dead filters):"]
    except (ValueError, KeyError, TypeError):
        return ["normalised:     (the normalisation record is unreadable)"]
    for name, v in layers.items():
        lines.append(f"  {name:8s} {v['factor_min']:.3g} / {v['factor_median']:.3g} / {v['factor_max']:.3g}; "
                     f"{v['bootstrap_rel_std_median']:.1%} / {v['bootstrap_rel_std_max']:.1%}; "
                     f"{v['dead_filters']} dead")
    return lines
