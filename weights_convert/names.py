"""Layer names: VGG's (``conv3_2``), Keras' (``block3_conv2``) and torch state-dict keys.

Every reader ends by handing its kernels, in network order, to ``assign_vgg_names``; the torch
readers first flatten their (possibly nested) state dict with ``flatten_state``.
"""
import re

import numpy as np

from nstlite.weights import MAX_KERNEL_VALUES, MAX_WIDTH, VGG19_CONV_LAYERS

from .errors import ConvertError

KERAS_NAME = re.compile(r"^block(\d)_conv(\d)$")

# A state dict is a few levels deep and holds a few hundred entries at most. Past these bounds the
# object is not one, and a crafted pickle of shared nested dicts would make the walk exponential.
MAX_STATE_DEPTH = 8
MAX_STATE_ENTRIES = 100_000


def keras_to_vgg_name(keras_name: str) -> "str | None":
    """The VGG name of a Keras layer name.

    Parameters
    ----------
    keras_name : a layer name such as ``block3_conv2``

    Returns
    -------
    ``conv3_2``, or None when ``keras_name`` is not a Keras VGG conv layer name.
    """
    m = KERAS_NAME.match(keras_name)
    return f"conv{m.group(1)}_{m.group(2)}" if m else None


def assign_vgg_names(named_kernels: list, what: str) -> dict:
    """Name conv layers found in network order.

    Parameters
    ----------
    named_kernels : list of (name, weight (out, in, kh, kw), bias (out,)), in network order
    what : the file they came from, for the error message

    Returns
    -------
    dict VGG name -> (weight, bias): the names as given when they are already distinct VGG
    names, else ``conv1_1``, ``conv1_2``, ... in order.
    """
    if len(named_kernels) > len(VGG19_CONV_LAYERS):
        raise ConvertError(f"{what} has {len(named_kernels)} 3x3 conv layers; VGG19 has 16")
    for name, w, b in named_kernels:
        require_bounded(name, w, b)
    names = [n for n, _, _ in named_kernels]
    if all(n in VGG19_CONV_LAYERS for n in names) and len(set(names)) == len(names):
        return {n: (w, b) for n, w, b in named_kernels}
    return {vgg: (w, b) for vgg, (_, w, b) in zip(VGG19_CONV_LAYERS, named_kernels)}


def require_bounded(name: str, weight, bias) -> None:
    """Raise ConvertError when a layer declares more values than nstlite reads (``MAX_WIDTH``):
    checked on the shapes, before anything copies or converts the arrays."""
    if np.size(weight) > MAX_KERNEL_VALUES or np.size(bias) > MAX_WIDTH:
        raise ConvertError(f"{name}: weight of shape {np.shape(weight)} / bias of shape {np.shape(bias)} is "
                           f"wider than VGG19 can be ({MAX_WIDTH} channels at most)")


def flatten_state(obj) -> dict:
    """A state dict, possibly nested (``{"state_dict": {...}}``), as one flat dict.

    Parameters
    ----------
    obj : dict of arrays and dicts (anything else in it is skipped)

    Returns
    -------
    dict ``"a.b.c"`` -> array (a dict's own arrays before those of its sub-dicts).

    Raises ConvertError past ``MAX_STATE_DEPTH`` levels or ``MAX_STATE_ENTRIES`` entries.
    """
    flat, seen = {}, 0
    stack = [("", obj, 0)] if isinstance(obj, dict) else []
    while stack:  # depth first, keys in insertion order
        prefix, node, depth = stack.pop()
        if depth > MAX_STATE_DEPTH:
            raise ConvertError(f"the state dict nests deeper than {MAX_STATE_DEPTH} levels: not a weights file")
        seen += len(node)
        if seen > MAX_STATE_ENTRIES:
            raise ConvertError(f"the state dict holds more than {MAX_STATE_ENTRIES} entries: not a weights file")
        children = []
        for k, v in node.items():
            if isinstance(v, dict):
                children.append((f"{prefix}{k}.", v, depth + 1))
            elif isinstance(v, np.ndarray):
                flat[f"{prefix}{k}"] = v
        stack.extend(reversed(children))
    return flat


def natural_key(key: str) -> list:
    """Sort key comparing the numbers in ``key`` as numbers (``features.10`` after ``features.7``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def layer_name_of_key(weight_key: str) -> str:
    """The layer name in a state-dict key: ``features.0.weight`` -> ``0``,
    ``model.block3_conv2.weight`` -> ``conv3_2`` (Keras names become VGG names)."""
    layer = weight_key[:-len("weight")].rstrip("._").split(".")[-1]
    return keras_to_vgg_name(layer) or layer
