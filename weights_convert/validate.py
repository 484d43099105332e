"""Checks that a set of conv weights is a usable VGG19 (or a leading part of one).

``params`` is always ``dict name -> (weight (out, in, 3, 3), bias (out,))`` with VGG names
(``conv1_1`` ... ``conv5_4``), as ``nstlite.weights`` reads and writes them.
"""
import hashlib

import numpy as np

from nstlite.weights import VGG19_CONV_LAYERS, vgg19_conv_shapes

from .errors import ConvertError


def validate_params(params):
    """Return a list of one-line problems (empty when ``params`` is a sound VGG19 or a prefix of one).

    Checked: names are VGG19's and form a prefix conv1_1..convX_Y with no gaps; each weight is
    4-D (out, in, 3, 3) with in = 3 for conv1_1 and in = previous out after; each bias is (out,);
    every value is finite.
    """
    problems = []
    unknown = sorted(set(params) - set(VGG19_CONV_LAYERS))
    if unknown:
        problems.append(f"unknown layer names: {', '.join(unknown)}")
    present = [name for name in VGG19_CONV_LAYERS if name in params]
    if not present:
        return problems + ["no conv layers"]
    expected_prefix = list(VGG19_CONV_LAYERS[:len(present)])
    if present != expected_prefix:
        gaps = [n for n in expected_prefix if n not in params]
        problems.append(f"layers missing in the middle of the network: {', '.join(gaps)}")
    c_in = 3
    for name in present:
        w, b = params[name]
        w, b = np.asarray(w), np.asarray(b)
        if w.ndim != 4 or w.shape[2:] != (3, 3):
            problems.append(f"{name}: weight shape {w.shape} is not (out, in, 3, 3)")
            continue
        if w.shape[1] != c_in:
            problems.append(f"{name}: weight takes {w.shape[1]} input channels, the layer before "
                            f"gives {c_in}")
        if b.shape != (w.shape[0],):
            problems.append(f"{name}: bias shape {b.shape} does not match {w.shape[0]} outputs")
        for what, a in (("weight", w), ("bias", b)):
            if a.dtype.kind != "f":
                problems.append(f"{name}: {what} dtype {a.dtype} is not floating point")
            elif a.size == 0:
                problems.append(f"{name}: {what} is empty")
            elif not np.isfinite(a).all():
                bad = int(a.size - np.count_nonzero(np.isfinite(a)))
                problems.append(f"{name}: {what} has {bad} non-finite values (NaN/inf)")
        c_in = w.shape[0]
    return problems


def is_standard_vgg19(params):
    """True when all 16 layers are there with the standard VGG19 shapes."""
    shapes = vgg19_conv_shapes()
    return set(params) == set(shapes) and all(tuple(np.shape(params[n][0])) == s for n, s in shapes.items())


def require_valid(params, what):
    """Raise ConvertError naming the first problem, if any."""
    problems = validate_params(params)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConvertError(f"{what}: {problems[0]}{more}")


def file_sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
