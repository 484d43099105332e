"""Caffe ``.caffemodel`` (e.g. ``VGG_ILSVRC_19_layers.caffemodel``) through a small protobuf decoder.

Protobuf wire format: each field is a varint key ``field_number << 3 | wire_type`` followed by a
varint (type 0), 8 bytes (1), a varint length and that many bytes (2), or 4 bytes (5). The parts of
``caffe.proto`` used here::

    NetParameter      name = 1, layers = 2 (V1LayerParameter), layer = 100 (LayerParameter)
    LayerParameter    name = 1, type = 2 (string, "Convolution"), blobs = 7
    V1LayerParameter  layer = 1 (V0LayerParameter), name = 4, type = 5 (enum, CONVOLUTION = 4), blobs = 6
    V0LayerParameter  name = 1, type = 2 (string, "conv"), blobs = 50
    BlobProto         num = 1, channels = 2, height = 3, width = 4, data = 5 (float, packed or not),
                      shape = 7 (BlobShape: dim = 1, int64), double_data = 8
    conv blobs        [0] weight (out, in, kh, kw), [1] bias (out,) (legacy dims (1, 1, 1, out))

Caffe convolution is cross-correlation on BGR 0..255 input minus the mean pixel; the weights are
already (out, in, kh, kw). Length-delimited fields are kept as (start, end) offsets into the
memory-mapped file and only conv blobs are decoded, so the 500 MB fully connected blobs cost nothing.
"""
import mmap
import os

import numpy as np

from .errors import ConvertError
from .names import assign_vgg_names
from .source import CAFFE, Source

V1_CONVOLUTION = 4


class Wire:
    """Bounds-checked reader of protobuf fields in ``buf[start:end]``."""

    def __init__(self, buf) -> None:
        self.buf = buf

    def varint(self, pos: int, end: int) -> tuple:
        """The varint at ``pos``: (value, next position)."""
        value, shift = 0, 0
        while True:
            if pos >= end:
                raise ConvertError("truncated protobuf (varint runs past the end)")
            byte = self.buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7
            if shift > 63:
                raise ConvertError("corrupted protobuf (varint longer than 10 bytes)")

    def field_at(self, pos: int, end: int) -> tuple:
        """The field whose key starts at ``pos``: (field number, wire type, value, next position).
        ``value`` is an int for varints and (start, end) for length-delimited and fixed-size data."""
        key_pos = pos
        key, pos = self.varint(pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = self.varint(pos, end)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = (pos, pos + size), pos + size
        elif wire == 2:
            length, pos = self.varint(pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise ConvertError(f"corrupted protobuf (wire type {wire} at byte {key_pos})")
        if pos > end or field == 0:
            raise ConvertError(f"truncated or corrupted protobuf (field {field} at byte {key_pos})")
        return field, wire, value, pos

    def fields(self, start: int, end: int):
        """Yield (field number, wire type, value) for each field in ``buf[start:end]``."""
        pos = start
        while pos < end:
            field, wire, value, pos = self.field_at(pos, end)
            yield field, wire, value

    def text(self, span: tuple) -> str:
        return bytes(self.buf[span[0]:span[1]]).decode("utf-8", "replace")

    def packed_varints(self, span: tuple) -> list:
        out, pos = [], span[0]
        while pos < span[1]:
            v, pos = self.varint(pos, span[1])
            out.append(v)
        return out


def _unpacked_floats(wire, key_pos, end):
    """A run of unpacked ``data`` floats (key byte 0x2d then 4 bytes, repeated) from ``key_pos``,
    read in one vectorised step. Returns (float32 array, position after the run)."""
    n_max = (end - key_pos) // 5
    rows = np.frombuffer(wire.buf, dtype=np.uint8, count=n_max * 5, offset=key_pos).reshape(n_max, 5)
    is_key = rows[:, 0] == 0x2D  # field 5, wire type 5
    run = n_max if is_key.all() else int(np.argmin(is_key))
    return np.ascontiguousarray(rows[:run, 1:]).view("<f4").ravel(), key_pos + 5 * run


def _blob_values(wire, field, kind, value, key_pos, pos, end):
    """The values a BlobProto ``data`` (5) or ``double_data`` (8) field carries, as float32, and
    the position after them (an unpacked float run is read whole from ``key_pos``). None for a
    field of another wire type (skipped)."""
    if field == 5 and kind == 2:  # packed floats
        if (value[1] - value[0]) % 4:
            raise ConvertError("corrupted caffemodel: packed float data is not a multiple of 4 bytes")
        return np.frombuffer(wire.buf, dtype="<f4", count=(value[1] - value[0]) // 4, offset=value[0]), pos
    if field == 5 and kind == 5:  # unpacked floats: read the whole run at once
        return _unpacked_floats(wire, key_pos, end)
    if field == 8 and kind == 2:  # packed doubles
        if (value[1] - value[0]) % 8:
            raise ConvertError("corrupted caffemodel: packed double data is not a multiple of 8 bytes")
        doubles = np.frombuffer(wire.buf, dtype="<f8", count=(value[1] - value[0]) // 8, offset=value[0])
        return doubles.astype(np.float32), pos
    if field == 8 and kind == 1:
        return np.frombuffer(wire.buf, dtype="<f8", count=1, offset=value[0]).astype(np.float32), pos
    return None, pos


def _blob_shape(wire, span):
    """The dims of a BlobShape message (``dim`` = 1, packed or not)."""
    dims = []
    for field, kind, value in wire.fields(*span):
        if field == 1:
            dims += wire.packed_varints(value) if kind == 2 else [value]
    return dims


def decode_blob(wire: Wire, span: tuple) -> np.ndarray:
    """BlobProto in ``wire.buf[span[0]:span[1]]`` -> float32 array shaped by ``shape`` (or the
    legacy num/channels/height/width fields)."""
    legacy = {1: 1, 2: 1, 3: 1, 4: 1}
    dims, chunks, has_legacy = None, [], False
    pos, end = span
    while pos < end:
        key_pos = pos
        field, kind, value, pos = wire.field_at(pos, end)
        if field in legacy and kind == 0:
            legacy[field], has_legacy = value, True
        elif field == 7 and kind == 2:
            dims = _blob_shape(wire, value)
        elif field in (5, 8):
            values, pos = _blob_values(wire, field, kind, value, key_pos, pos, end)
            if values is not None:
                chunks.append(values)
    if dims is None and has_legacy:
        dims = [legacy[1], legacy[2], legacy[3], legacy[4]]
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if dims is None:
        dims = [data.size]
    if int(np.prod(dims, dtype=np.int64)) != data.size:
        raise ConvertError(f"corrupted caffemodel: blob of shape {tuple(dims)} holds {data.size} values")
    return data.reshape(dims)


def _layer(wire, span, version):
    """(name, is_conv, [blob spans]) of one layer message of the given version (0, 1, 2)."""
    name_field, type_field, blobs_field = {0: (1, 2, 50), 1: (4, 5, 6), 2: (1, 2, 7)}[version]
    name, layer_type, blobs = "", None, []
    for field, kind, value in wire.fields(*span):
        if field == name_field and kind == 2:
            name = wire.text(value)
        elif field == type_field:
            layer_type = value if kind == 0 else wire.text(value)
        elif field == blobs_field and kind == 2:
            blobs.append(value)
        elif version == 1 and field == 1 and kind == 2:  # V1 wrapping a V0 layer
            return _layer(wire, value, 0)
    is_conv = layer_type in (V1_CONVOLUTION, "Convolution", "conv")
    return name, is_conv, blobs


def read_caffe(path: str) -> Source:
    """Read the conv layers of a ``.caffemodel`` as a Source (Caffe's BGR 0..255 preprocessing)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise ConvertError(f"{path} is empty")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    wire = Wire(buf)
    kernels = []
    for field, kind, value in wire.fields(0, len(buf)):
        if kind != 2 or field not in (2, 100):
            continue
        name, is_conv, blobs = _layer(wire, value, 2 if field == 100 else 1)
        if not is_conv:
            continue
        if len(blobs) != 2:
            raise ConvertError(f"{path}: conv layer {name!r} has {len(blobs)} blobs, expected weight and bias")
        weight, bias = decode_blob(wire, blobs[0]), decode_blob(wire, blobs[1]).ravel()
        if weight.ndim != 4:
            raise ConvertError(f"{path}: conv layer {name!r} weight has shape {weight.shape}, not (out, in, kh, kw)")
        kernels.append((name, weight, bias))
    if not kernels:
        raise ConvertError(f"{path} holds no Caffe convolution layers (not a caffemodel?)")
    return Source(assign_vgg_names(kernels, path), dict(CAFFE), f"Caffe {os.path.basename(path)}")
