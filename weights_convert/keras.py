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

from nstlite.weights import FORMAT_NAME

from .errors import ConvertError
from .names import keras_to_vgg_name
from .source import CAFFE, Source


def _datasets(group):
    """All datasets below ``group`` (depth first, in name order)."""
    found = []
    group.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def read_keras(path: str) -> Source:
    """Read the conv layers of a Keras VGG19 ``.h5`` as a Source (Caffe's preprocessing)."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ConvertError(f"cannot open {path} as HDF5: {str(e).splitlines()[0]}") from None
    with f:
        fmt = f.attrs.get("format")
        if (fmt.decode() if isinstance(fmt, bytes) else fmt) == FORMAT_NAME:
            raise ConvertError(f"{path} is already an nstlite weights file; see `python -m weights_convert info`")
        root = f["model_weights"] if "model_weights" in f else f
        params = {}
        try:
            for layer in root:
                name = keras_to_vgg_name(layer)
                if name is None:
                    continue
                arrays = [np.asarray(d[()]) for d in _datasets(root[layer])]
                kernels = [a for a in arrays if a.ndim == 4]
                biases = [a for a in arrays if a.ndim == 1]
                if len(kernels) != 1 or len(biases) != 1:
                    raise ConvertError(f"{path}: layer {layer} should hold one 4-D kernel and one bias, "
                                       f"found shapes {[a.shape for a in arrays]}")
                kernel, bias = kernels[0], biases[0]
                if kernel.shape[:2] != (3, 3):
                    raise ConvertError(f"{path}: {layer} kernel has shape {kernel.shape}, expected TensorFlow "
                                       "order (3, 3, in, out); Theano-ordered (th) files are not supported")
                params[name] = (kernel.transpose(3, 2, 0, 1), bias)  # (kh, kw, in, out) -> (out, in, kh, kw)
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ConvertError(f"{path}: damaged HDF5 data ({type(e).__name__}: {e})") from None
    if not params:
        raise ConvertError(f"{path} is HDF5 but holds no Keras VGG19 layers (block1_conv1 ...)")
    return Source(params, dict(CAFFE), f"Keras VGG19 {os.path.basename(path)} (Caffe release)")
