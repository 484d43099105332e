"""Checks that a set of conv weights is a usable VGG19 (or a leading part of one).

``params`` is always ``dict name -> (weight (out, in, 3, 3), bias (out,))`` with VGG names
(``conv1_1`` ... ``conv5_4``), as ``nstlite.weights`` reads and writes them. The checks themselves
are ``nstlite.weights.validate_params``, which reading a weights file runs too.
"""
import hashlib

import numpy as np

from nstlite.weights import validate_params, vgg19_conv_shapes

from .errors import ConvertError

__all__ = ["file_sha256", "is_standard_vgg19", "require_valid", "validate_params"]


def is_standard_vgg19(params: dict) -> bool:
    """True when all 16 layers are there with the standard VGG19 shapes."""
    shapes = vgg19_conv_shapes()
    return set(params) == set(shapes) and all(tuple(np.shape(params[n][0])) == s for n, s in shapes.items())


def require_valid(params: dict, what: str) -> None:
    """Raise ConvertError naming the first problem of ``validate_params``, if any."""
    problems = validate_params(params)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConvertError(f"{what}: {problems[0]}{more}")


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
