"""Keras VGG19 HDF5 weights (``vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5``).

One group per layer, ``block{b}_conv{i}``, at the root (``save_weights``) or under
``/model_weights`` (``model.save``); inside, the kernel and bias datasets are named
``block1_conv1_W_1:0``/``block1_conv1_b_1:0`` (Keras 1) or ``block1_conv1/kernel:0``/``bias:0``
(Keras 2). The ``fc1``, ``fc2``, ``predictions`` groups of the with-top file are ignored.

Kernels are TensorFlow's (kh, kw, in, out) cross-correlation kernels, so
``weight = kernel.transpose(3, 2, 0, 1)`` gives (out, in, kh, kw). Input: Caffe's (BGR, 0..255
minus the mean pixel), since the Keras file was converted from the Caffe release.
"""
import os

import h5py
import numpy as np

from nstlite.weights import FORMAT_NAME, MAX_KERNEL_VALUES, MAX_WIDTH, hdf5_refusal

from .errors import ConvertError
from .names import keras_to_vgg_name
from .source import CAFFE, Source


# Layer groups nest their datasets one or two levels down (``block1_conv1/block1_conv1/kernel:0``).
MAX_GROUP_DEPTH = 4


def _refuse_unsafe(group, name, path, max_values=None):
    why = hdf5_refusal(group, name, max_values)
    if why:
        raise ConvertError(f"{path}: {why}; refusing the file")


def _datasets(group, path, depth=0):
    """All datasets below ``group`` (depth first, in name order), each checked by ``hdf5_refusal``
    before it is opened: no soft or external link, external storage or virtual dataset; float
    values, at most a (1024, 1024, 3, 3) kernel's worth."""
    if depth > MAX_GROUP_DEPTH:
        raise ConvertError(f"{path}: {group.name} nests groups deeper than a Keras layer does")
    found = []
    for name in group:
        _refuse_unsafe(group, name, path, MAX_KERNEL_VALUES)
        obj = group[name]
        found += _datasets(obj, path, depth + 1) if isinstance(obj, h5py.Group) else [obj]
    return found


def _layer_weights(group, layer, path):
    """(weight (out, in, 3, 3), bias (out,)) of the Keras layer group ``group``."""
    if not isinstance(group, h5py.Group):
        raise ConvertError(f"{path}: {group.name} is not a group holding a kernel and a bias")
    datasets = _datasets(group, path)
    kernels = [d for d in datasets if len(d.shape) == 4]
    biases = [d for d in datasets if len(d.shape) == 1 and d.size <= MAX_WIDTH]
    if len(kernels) != 1 or len(biases) != 1:
        raise ConvertError(f"{path}: layer {layer} should hold one 4-D kernel and one bias, "
                           f"found shapes {[d.shape for d in datasets]}")
    if kernels[0].shape[:2] != (3, 3):
        raise ConvertError(f"{path}: {layer} kernel has shape {kernels[0].shape}, expected TensorFlow "
                           "order (3, 3, in, out); Theano-ordered (th) files are not supported")
    kernel, bias = np.asarray(kernels[0][()]), np.asarray(biases[0][()])
    return kernel.transpose(3, 2, 0, 1), bias  # (kh, kw, in, out) -> (out, in, kh, kw)


def _weights_root(f, path):
    """``/model_weights`` (a ``model.save`` file) if there is one, else the root."""
    if f.get("model_weights", getlink=True) is None:
        return f
    _refuse_unsafe(f, "model_weights", path)
    return f["model_weights"]


def read_keras(path: str) -> Source:
    """Read the conv layers of a Keras VGG19 ``.h5`` as a Source (Caffe's preprocessing).

    Only plain in-file datasets are read (``nstlite.weights.hdf5_refusal``), each checked before
    any value is read.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ConvertError(f"cannot open {path} as HDF5: {str(e).splitlines()[0]}") from None
    with f:
        fmt = f.attrs.get("format")
        if (fmt.decode() if isinstance(fmt, bytes) else fmt) == FORMAT_NAME:
            raise ConvertError(f"{path} is already an nstlite weights file; see `python -m weights_convert info`")
        params = {}
        try:
            root = _weights_root(f, path)
            for layer in root:
                name = keras_to_vgg_name(layer)
                if name is None:
                    continue
                _refuse_unsafe(root, layer, path)
                params[name] = _layer_weights(root[layer], layer, path)
        except ConvertError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ConvertError(f"{path}: damaged HDF5 data ({type(e).__name__}: {e})") from None
    if not params:
        raise ConvertError(f"{path} is HDF5 but holds no Keras VGG19 layers (block1_conv1 ...)")
    return Source(params, dict(CAFFE), f"Keras VGG19 {os.path.basename(path)} (Caffe release)")
