"""Read ``torch.save`` files with NumPy alone, through a restricted unpickler.

A ``torch.save`` file is a pickle whose tensors point at raw storages kept outside the pickle.
Two containers exist:

legacy (``_use_new_zipfile_serialization=False``, torch < 1.6 default)::

    pickle  magic number 0x1950a86a20f9469cfc6c
    pickle  protocol version 1001
    pickle  sys_info {"little_endian": bool, "type_sizes": {...}, ...}
    pickle  the object; storages appear as persistent ids
            ("storage", StorageClass, key, location, numel, view_metadata)
    pickle  list of storage keys, in the order their bytes follow
    then, per key: int64 element count, count * itemsize raw bytes

zip (torch >= 1.6 default; stored, never compressed, members)::

    <archive>/data.pkl      the object; persistent ids ("storage", StorageClass, key, location, numel)
    <archive>/data/<key>    raw bytes of storage <key>
    <archive>/byteorder     "little" or "big" (absent in old files: little)

Safety: a pickle can name any importable callable and call it. ``RestrictedUnpickler.find_class``
admits a short list of names and answers each with a NumPy stand-in written here, so torch is never
imported and nothing outside the list is ever looked up, let alone called: a pickle naming
``os.system`` fails at that opcode, before any call happens. Tensors become NumPy arrays that view
the memory-mapped file; their extent is checked against their storage first.
"""
import collections
import io
import mmap
import pickle
import struct
import zipfile

import numpy as np

from .errors import ConvertError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> NumPy dtype of one element (little-endian; swapped for big-endian files).
STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}


class StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only carries the element dtype."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


def _check_extent(storage, offset, size, stride):
    """Refuse a tensor view that would reach outside its storage (or has a silly geometry)."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise ConvertError(f"tensor with size {size} stride {stride} offset {offset} is malformed")
    if 0 in size:
        return size, stride
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ConvertError(f"tensor of size {size} reaches element {last} of a storage with "
                           f"{storage.size} elements: the file is truncated or corrupted")
    return size, stride


def rebuild_tensor(storage, storage_offset: int, size, stride, *unused) -> "np.ndarray | None":
    """NumPy stand-in for ``torch._utils._rebuild_tensor{,_v2}``: a strided view of ``storage``."""
    if isinstance(storage, _Pending):  # first legacy pass: storages not read yet
        return None
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise ConvertError("tensor is not backed by a storage")
    size, stride = _check_extent(storage, int(storage_offset), size, stride)
    base = storage[int(storage_offset):]
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(base, shape=size, strides=[s * itemsize for s in stride],
                                           writeable=False)


def rebuild_parameter(data, requires_grad: bool = False, backward_hooks=None, *unused):
    """NumPy stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its data."""
    return data


def _torch_size(dims=()):
    return tuple(dims)


# (module, name) -> what the unpickler gets instead. Nothing else is admitted.
ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
    ("torch", "Size"): _torch_size,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
ALLOWED_GLOBALS.update({("torch", name): StorageType(name) for name in STORAGE_DTYPES})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``ALLOWED_GLOBALS`` and storages through ``load_storage``.

    ``load_storage(storage_type, key, numel)`` returns a 1-D NumPy array of ``numel`` elements.
    """

    def __init__(self, file, load_storage=None):
        super().__init__(file)
        self._load_storage = load_storage
        self._storages = {}

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise ConvertError(f"refusing to unpickle: the file names {module}.{name}, which is not "
                               "needed to rebuild tensors (an unsafe or unsupported pickle)") from None

    def persistent_load(self, pid):
        if self._load_storage is None:
            raise ConvertError("refusing to unpickle: unexpected persistent id in a plain pickle")
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise ConvertError(f"unsupported persistent id in torch pickle: {str(pid)[:60]}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise ConvertError(f"storage {key} has an invalid size {numel!r}")
        if key not in self._storages:
            self._storages[key] = self._load_storage(storage_type, key, numel)
        storage = self._storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy view of a bigger storage: (view_key, offset, size)
            try:
                _, offset, size = view
                offset, size = int(offset), int(size)
            except (TypeError, ValueError):
                raise ConvertError("malformed storage view in torch pickle") from None
            if offset < 0 or size < 0 or offset + size > storage.size:
                raise ConvertError(f"storage view of {key} reaches past its end")
            storage = storage[offset:offset + size]
        return storage


def restricted_loads(data: bytes, load_storage=None):
    """Unpickle bytes with the restricted unpickler (no storages unless ``load_storage`` is given)."""
    return _unpickle(io.BytesIO(data), load_storage)


def _unpickle(file, load_storage=None):
    try:
        return RestrictedUnpickler(file, load_storage).load()
    except ConvertError:
        raise
    except RecursionError:
        raise ConvertError("pickle nests too deeply") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, struct.error, OverflowError, MemoryError) as e:
        raise ConvertError(f"corrupted or truncated torch pickle ({type(e).__name__}: {e})") from None


def _open_mmap(path):
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            raise ConvertError(f"{path} is empty")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def load_torch_file(path: str):
    """Read a legacy or zip ``torch.save`` file; tensors come back as read-only NumPy arrays.

    Raises ConvertError (one line) on anything unsafe, truncated or inconsistent.
    """
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def _load_legacy(path):
    buf = _open_mmap(path)
    with open(path, "rb") as f:  # the pickles are read from the file; storages are views of buf
        return _load_legacy_from(path, f, buf)


def _load_legacy_from(path, f, buf):
    _read_legacy_header(path, f)
    little = _legacy_little_endian(_unpickle(f))
    wanted = {}  # key -> (dtype, numel) as the pickle declares them

    def declare(storage_type, key, numel):
        wanted[key] = (storage_type.dtype, numel)
        return _Pending(key)

    # First pass: the object, with placeholders for storages (its tensors are discarded), then
    # the key list.
    _unpickle(f, declare)
    keys = _unpickle(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConvertError("corrupted torch.save file: bad storage key list")
    storages = _legacy_storages(buf, f.tell(), keys, wanted, little)
    # Second pass over the same bytes, now with the storages in hand (cheap: the pickle is small).
    f.seek(0)
    for _ in range(3):
        _unpickle(f)
    return _unpickle(f, lambda storage_type, key, numel: storages[key])


def _read_legacy_header(path, f):
    """Check the magic number and the protocol, the first two pickles of a legacy file."""
    if _unpickle(f) != LEGACY_MAGIC:
        raise ConvertError(f"{path} is not a torch.save file (no legacy magic number, not a zip)")
    protocol = _unpickle(f)
    if protocol != LEGACY_PROTOCOL:
        raise ConvertError(f"unsupported legacy torch.save protocol {protocol!r}")


def _legacy_little_endian(sys_info):
    return bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True


def _legacy_storages(buf, pos, keys, wanted, little):
    """key -> 1-D array viewing ``buf``: the storages that follow the pickles from ``pos``, each an
    int64 element count then its bytes, checked against what the pickle declared (``wanted``)."""
    storages = {}
    for key in keys:
        if pos + 8 > len(buf):
            raise ConvertError(f"truncated torch.save file: storage {key} is missing")
        (count,) = struct.unpack("<q" if little else ">q", buf[pos:pos + 8])
        pos += 8
        dtype, numel = wanted.get(key, (np.dtype("u1"), count))
        dtype = dtype if little else dtype.newbyteorder(">")
        if count < 0 or count != numel:
            raise ConvertError(f"corrupted torch.save file: storage {key} holds {count} elements, "
                               f"the pickle says {numel}")
        nbytes = count * dtype.itemsize
        if pos + nbytes > len(buf):
            raise ConvertError(f"truncated torch.save file: storage {key} needs {nbytes} bytes, "
                               f"{len(buf) - pos} left")
        storages[key] = np.frombuffer(buf, dtype=dtype, count=count, offset=pos)
        pos += nbytes
    missing = sorted(set(wanted) - set(storages))
    if missing:
        raise ConvertError(f"truncated torch.save file: storage {missing[0]} is missing")
    return storages


class _Pending:
    """Placeholder storage during the first legacy pass (its tensors are discarded)."""

    def __init__(self, key):
        self.key = key
        self.ndim = 1
        self.size = np.iinfo(np.int64).max
        self.dtype = np.dtype("u1")

    def __getitem__(self, item):
        return self


def _load_zip(path):
    try:
        zf = zipfile.ZipFile(path)
        infos = {i.filename: i for i in zf.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ConvertError(f"corrupted zip torch.save file {path}: {e}") from None
    pkl = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise ConvertError(f"{path} is a zip file but not a torch.save archive (no <name>/data.pkl)")
    prefix = pkl[0][:-len("data.pkl")]
    for info in infos.values():
        if info.compress_type != zipfile.ZIP_STORED:
            raise ConvertError(f"refusing compressed member {info.filename} in torch.save archive "
                               "(torch never compresses; the file was altered)")
    little = _zip_little_endian(zf, infos, prefix)
    buf = _open_mmap(path)

    def load_storage(storage_type, key, numel):
        info = infos.get(f"{prefix}data/{key}")
        if info is None:
            raise ConvertError(f"torch.save archive lacks storage {key}")
        dtype = storage_type.dtype if little else storage_type.dtype.newbyteorder(">")
        if numel * dtype.itemsize != info.file_size:
            raise ConvertError(f"storage {key} should hold {numel} x {dtype.itemsize} bytes but "
                               f"its member has {info.file_size}: corrupted archive")
        return np.frombuffer(buf, dtype=dtype, count=numel, offset=_member_offset(buf, info))

    try:
        data = zf.read(pkl[0])
    except (zipfile.BadZipFile, OSError, ValueError) as e:  # CRC mismatch, cut-off file
        raise ConvertError(f"corrupted torch.save archive: {e}") from None
    return _unpickle(io.BytesIO(data), load_storage)


def _zip_little_endian(zf, infos, prefix):
    """The archive's ``byteorder`` member (absent in old files: little)."""
    if prefix + "byteorder" not in infos:
        return True
    order = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise ConvertError(f"unknown byteorder {order!r} in torch.save archive")
    return order == "little"


def _member_offset(buf, info):
    """Where a stored member's bytes begin in the archive ``buf``: after its local header (30
    fixed bytes, then the name and the extra field)."""
    start = info.header_offset
    if start + 30 > len(buf) or buf[start:start + 4] != b"PK\x03\x04":
        raise ConvertError(f"corrupted zip member {info.filename}")
    name_len, extra_len = struct.unpack("<HH", buf[start + 26:start + 30])
    begin = start + 30 + name_len + extra_len
    if begin + info.file_size > len(buf):
        raise ConvertError(f"truncated torch.save archive: member {info.filename} is cut off")
    return begin
