"""MatConvNet ``imagenet-vgg-verydeep-19.mat`` (read with ``scipy.io.loadmat``).

Three layouts exist:

SimpleNN, new (beta >= 17)   ``layers`` cell of structs {name, type = 'conv', weights = {W, b}},
                             ``meta.normalization.averageImage``
SimpleNN, old                ``layers`` as above (or with ``filters``/``biases`` fields),
                             ``normalization.averageImage``
DagNN                        ``params`` struct array {name, value} with ``conv1_1f``/``conv1_1b``,
                             ``meta.normalization.averageImage``

``W`` is (kh, kw, in, out) in MATLAB's index order (rows, columns, channels) and MatConvNet's
``vl_nnconv`` is a cross-correlation, so ``weight = W.transpose(3, 2, 0, 1)``. The model was
imported from Caffe with the input channels turned to RGB; the input is RGB 0..255 minus
``averageImage`` (a mean pixel, or a mean image that is averaged to one pixel here).
"""
import os

import numpy as np

from .errors import ConvertError
from .names import assign_vgg_names
from .source import Source


def _field(struct, name, default=None):
    return getattr(struct, name, default) if struct is not None else default


def _as_list(cells):
    """A MATLAB cell/struct array (or a single squeezed element) -> Python list."""
    if isinstance(cells, np.ndarray):
        return list(cells.ravel())
    return [cells]


def _text(value):
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else ""
    return str(value)


def _mean_pixel(mat, path):
    meta = mat.get("meta")
    norm = _field(meta, "normalization") if meta is not None else mat.get("normalization")
    average = _field(norm, "averageImage")
    if average is None:
        raise ConvertError(f"{path}: no normalization.averageImage (mean) found; cannot record the input mean")
    average = np.asarray(average, dtype=np.float64)
    if average.size < 3 or average.shape[-1] != 3:
        raise ConvertError(f"{path}: averageImage has shape {average.shape}, expected (..., 3)")
    return average.reshape(-1, 3).mean(axis=0)  # mean image -> mean pixel (R, G, B)


def _kernel(W, b, name, path):
    W, b = np.asarray(W), np.asarray(b).ravel()
    if W.ndim == 3:  # MATLAB drops a trailing singleton: a single output channel
        W = W[..., None]
    if W.ndim != 4:
        raise ConvertError(f"{path}: layer {name} weights have shape {W.shape}, expected (kh, kw, in, out)")
    return (name, W.transpose(3, 2, 0, 1), b)  # (kh, kw, in, out) -> (out, in, kh, kw)


def _simplenn_kernels(mat, path):
    kernels = []
    for layer in _as_list(mat["layers"]):
        if _text(_field(layer, "type", "")) != "conv":
            continue
        name = _text(_field(layer, "name", ""))
        weights = _field(layer, "weights")
        if weights is not None:
            pair = _as_list(weights)
            if len(pair) != 2:
                raise ConvertError(f"{path}: conv layer {name} has {len(pair)} weight arrays, expected W and b")
            W, b = pair
        else:
            W, b = _field(layer, "filters"), _field(layer, "biases")
            if W is None or b is None:
                raise ConvertError(f"{path}: conv layer {name} has neither weights nor filters/biases")
        W = np.asarray(W)
        if W.shape[:2] != (3, 3):  # fully connected layers stored as convolutions
            continue
        kernels.append(_kernel(W, b, name, path))
    return kernels


def _dagnn_kernels(mat, path):
    values = {}
    for p in _as_list(mat["params"]):
        values[_text(_field(p, "name", ""))] = _field(p, "value")
    kernels = []
    for name, W in values.items():
        if not name.endswith("f") or np.asarray(W).shape[:2] != (3, 3):
            continue
        layer = name[:-1]
        if layer + "b" not in values:
            raise ConvertError(f"{path}: DagNN filter {name} has no bias {layer}b")
        kernels.append(_kernel(W, values[layer + "b"], layer, path))
    return kernels


def read_matconvnet(path: str) -> Source:
    """Read the 3x3 conv layers and the mean pixel of a MatConvNet ``.mat`` as a Source."""
    # SciPy is imported here, not at the top: only .mat files need it, and its import costs more
    # than everything else weights_convert loads.
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError:
        raise ConvertError(f"{path} is a MATLAB v7.3 (HDF5) file; save it with -v7 or older") from None
    except Exception as e:  # scipy raises ValueError/TypeError/OSError/... on damaged files
        raise ConvertError(f"cannot read {path} as a .mat file ({type(e).__name__}: {e})") from None
    if "params" in mat:
        kernels = _dagnn_kernels(mat, path)
    elif "layers" in mat:
        kernels = _simplenn_kernels(mat, path)
    else:
        raise ConvertError(f"{path} is a .mat file without 'layers' or 'params': not a MatConvNet network")
    if not kernels:
        raise ConvertError(f"{path} holds no 3x3 conv layers")
    mean = _mean_pixel(mat, path)
    preprocessing = dict(channel_order="RGB", input_scale=255.0, mean=tuple(float(v) for v in mean),
                         std=(1.0, 1.0, 1.0))
    return Source(assign_vgg_names(kernels, path), preprocessing, f"MatConvNet {os.path.basename(path)}")
