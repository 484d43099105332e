"""weights_convert readers for Keras h5, Caffe caffemodel and MatConvNet mat: values, kernel layout,
channel order and preprocessing attributes, and clean errors on damaged files."""
import mmap
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy.signal import correlate

from nstlite.vgg import load_vgg19
from nstlite.weights import (CAFFE_MEAN, VGG19_CONV_LAYERS, WeightsError, default_weights_path, preprocessing_attrs,
                             random_params, read_weights, validate_params, vgg19_conv_shapes, write_weights)
from weights_convert import ConvertError, cli, detect_format, read_source
from weights_fixtures import (HOSTILE_DATASETS, SECRET_TEXT, SECRET_VALUE, SMALL_WIDTHS, address_space_limit,
                              caffemodel_bytes, make_hostile, pb_field, write_keras_h5, write_matconvnet_mat)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # written out: the constant CAFFE_MEAN is checked against it


def small_params(seed=0):
    return random_params(seed, widths=SMALL_WIDTHS)


def convert(capsys, src, dst, *extra):
    code = cli.main(["convert", str(src), "-o", str(dst), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_params(got, want):
    assert list(got) == [n for n in VGG19_CONV_LAYERS if n in want]
    for name in want:
        np.testing.assert_array_equal(got[name][0], want[name][0], err_msg=name)
        np.testing.assert_array_equal(got[name][1], want[name][1], err_msg=name)


def converted(capsys, src, fmt, params, dst):
    """Detect ``src`` as ``fmt``, convert it to ``dst``, check the kernels and biases equal
    ``params``; returns the converted file's attributes."""
    assert detect_format(str(src)) == fmt
    code, out, err = convert(capsys, src, dst)
    assert code == 0, err
    got, attrs = read_weights(dst)
    assert_same_params(got, params)
    return attrs


def assert_caffe_preprocessing(attrs):
    assert attrs["channel_order"] == "BGR" and attrs["input_scale"] == 255.0
    np.testing.assert_allclose(attrs["mean"], CAFFE_MEAN_BGR)
    np.testing.assert_allclose(attrs["std"], (1, 1, 1))


# --- Keras -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("keras_version,with_top,nested", [(2, False, False), (1, False, False), (2, True, True)])
def test_keras_h5_kernels_are_transposed_to_out_in_kh_kw(tmp_path, capsys, keras_version, with_top, nested):
    params = small_params(1)
    src = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras_h5(src, params, keras_version, with_top, nested)
    assert_caffe_preprocessing(converted(capsys, src, "keras", params, tmp_path / "k.h5"))


def test_keras_theano_ordered_kernels_are_refused(tmp_path, capsys):
    with h5py.File(tmp_path / "th.h5", "w") as f:
        f["block1_conv1/block1_conv1_W_1:0"] = np.zeros((4, 3, 3, 3), np.float32)
        f["block1_conv1/block1_conv1_b_1:0"] = np.zeros(4, np.float32)
    code, out, err = convert(capsys, tmp_path / "th.h5", tmp_path / "o.h5")
    assert code == 2 and "Theano" in err and not (tmp_path / "o.h5").exists()


def test_nstlite_file_is_not_converted_again(tmp_path, capsys):
    write_weights(tmp_path / "n.h5", small_params(), "BGR", 255, CAFFE_MEAN_BGR, (1, 1, 1), "x")
    code, out, err = convert(capsys, tmp_path / "n.h5", tmp_path / "o.h5")
    assert code == 2 and "already an nstlite weights file" in err


# --- Caffe -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("v1,legacy_dims,packed", [(False, False, True), (True, True, True),
                                                   (True, False, False), (False, True, False)])
def test_caffemodel_layer_and_layers_fields_packed_and_unpacked(tmp_path, capsys, v1, legacy_dims, packed):
    params = small_params(2)
    src = tmp_path / "VGG_ILSVRC_19_layers.caffemodel"
    src.write_bytes(caffemodel_bytes(params, v1=v1, legacy_dims=legacy_dims, packed=packed))
    assert_caffe_preprocessing(converted(capsys, src, "caffe", params, tmp_path / "c.h5"))


def test_caffemodel_damage_gives_clean_errors(tmp_path, capsys):
    data = caffemodel_bytes(small_params(3), with_fc=False)
    cuts = sorted(set(np.linspace(1, len(data) - 1, 40).astype(int)))
    for cut in cuts:
        (tmp_path / "t.caffemodel").write_bytes(data[:cut])
        code, out, err = convert(capsys, tmp_path / "t.caffemodel", tmp_path / "o.h5")
        assert code == 2 and err.startswith("weights_convert: error: ") and err.count("\n") == 1, (cut, err)
    assert not (tmp_path / "o.h5").exists()
    with pytest.raises(ConvertError, match="no Caffe convolution layers"):
        (tmp_path / "x.caffemodel").write_bytes(b"\x0a\x03abc")
        read_source(str(tmp_path / "x.caffemodel"))


def test_caffemodel_blob_size_must_match_its_shape(tmp_path):
    blob = pb_field(7, 2, pb_field(1, 2, bytes([4, 3, 3, 3]))) + pb_field(5, 2, np.zeros(10, "<f4").tobytes())
    bias = pb_field(5, 2, np.zeros(4, "<f4").tobytes())
    layer = pb_field(1, 2, b"conv1_1") + pb_field(2, 2, b"Convolution") + pb_field(7, 2, blob) + pb_field(7, 2, bias)
    (tmp_path / "b.caffemodel").write_bytes(pb_field(100, 2, layer))
    with pytest.raises(ConvertError, match=r"shape \(4, 3, 3, 3\) holds 10 values"):
        read_source(str(tmp_path / "b.caffemodel"))


# --- MatConvNet ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout,mean_image", [("new", False), ("old", True), ("dagnn", False)])
def test_matconvnet_mat_gives_rgb_kernels_and_the_file_mean(tmp_path, capsys, layout, mean_image):
    params = small_params(4)
    mean_rgb = (123.68, 116.779, 103.939)
    src = tmp_path / "imagenet-vgg-verydeep-19.mat"
    write_matconvnet_mat(src, params, mean_rgb, layout, mean_image)
    attrs = converted(capsys, src, "matconvnet", params, tmp_path / "m.h5")
    assert attrs["channel_order"] == "RGB" and attrs["input_scale"] == 255.0
    np.testing.assert_allclose(attrs["mean"], mean_rgb, rtol=1e-5)


def test_damaged_mat_file_gives_a_clean_error(tmp_path, capsys):
    src = tmp_path / "imagenet-vgg-verydeep-19.mat"
    write_matconvnet_mat(src, small_params(5), (1, 2, 3))
    data = src.read_bytes()
    (tmp_path / "cut.mat").write_bytes(data[: len(data) // 2])
    code, out, err = convert(capsys, tmp_path / "cut.mat", tmp_path / "o.h5")
    assert code == 2 and err.startswith("weights_convert: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o.h5").exists()


# --- the same network from every format gives the same conv1_1 response -----------------------------
def conv1_1_response(path, rgb):
    """conv1_1 pre-activations of ``rgb`` (uint8 (H, W, 3)) with the file's own preprocessing:
    x[c] = (reorder(rgb)[c] * input_scale / 255 - mean[c]) / std[c] (nstlite.weights)."""
    params, attrs = read_weights(path)
    img = rgb.astype(np.float64).transpose(2, 0, 1)  # (3, H, W), RGB
    if attrs["channel_order"] == "BGR":
        img = img[::-1]
    x = (img * attrs["input_scale"] / 255.0 - attrs["mean"][:, None, None]) / attrs["std"][:, None, None]
    w, b = params["conv1_1"]
    return np.stack([sum(correlate(x[c], w[o, c], mode="valid") for c in range(3)) + b[o]
                     for o in range(w.shape[0])])


def test_bgr_and_rgb_releases_of_one_network_agree_on_an_image(tmp_path, capsys):
    """Caffe (BGR kernels, BGR mean) and MatConvNet (RGB kernels = BGR kernels with the input axis
    reversed, RGB mean) must see the same image the same way; so must a transposed Keras file."""
    bgr = small_params(6)
    rgb = {n: ((w[:, ::-1] if n == "conv1_1" else w), b) for n, (w, b) in bgr.items()}
    (tmp_path / "a.caffemodel").write_bytes(caffemodel_bytes(bgr))
    write_keras_h5(tmp_path / "a_keras.h5", bgr)
    write_matconvnet_mat(tmp_path / "a.mat", rgb, CAFFE_MEAN_BGR[::-1])
    for src in ("a.caffemodel", "a_keras.h5", "a.mat"):
        assert convert(capsys, tmp_path / src, tmp_path / (src + ".out.h5"))[0] == 0
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    ref = conv1_1_response(tmp_path / "a.caffemodel.out.h5", image)
    for src in ("a_keras.h5", "a.mat"):
        np.testing.assert_allclose(conv1_1_response(tmp_path / (src + ".out.h5"), image), ref, rtol=1e-5, atol=1e-4)
    # and a wrong channel order would not agree
    wrong = conv1_1_response(tmp_path / "a.caffemodel.out.h5", image[..., ::-1].copy())
    assert np.abs(wrong - ref).max() > 1e-2


def test_real_weights_if_present_look_like_vgg19():
    path = default_weights_path()
    if not os.path.exists(path):
        pytest.skip("real VGG19 weights not present (python -m weights_convert fetch)")
    params, attrs = read_weights(path)
    assert validate_params(params) == []
    assert {n: p[0].shape for n, p in params.items()} == vgg19_conv_shapes()
    # conv1_1 of a natural-ish image: a smooth sky/grass scene gives moderate, mostly positive responses
    h = w = 24
    scene = np.zeros((h, w, 3), np.uint8)
    scene[: h // 2] = (120, 170, 230)
    scene[h // 2:] = (60, 140, 50)
    out = np.maximum(conv1_1_response(path, scene), 0)
    assert np.isfinite(out).all() and 1.0 < out.mean() < 200.0 and 0.2 < (out > 0).mean() < 0.9


def test_truncated_keras_file_and_nan_caffe_blob_give_clean_errors(tmp_path, capsys):
    params = small_params(7)
    write_keras_h5(tmp_path / "k.h5", params)
    data = (tmp_path / "k.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    code, out, err = convert(capsys, tmp_path / "cut.h5", tmp_path / "o.h5")
    assert code == 2 and err.startswith("weights_convert: error: ") and err.count("\n") == 1, err
    w, b = params["conv5_1"]
    nan = dict(params, conv5_1=(np.where(np.arange(w.size).reshape(w.shape) == 7, np.nan, w), b))
    (tmp_path / "nan.caffemodel").write_bytes(caffemodel_bytes(nan))
    code, out, err = convert(capsys, tmp_path / "nan.caffemodel", tmp_path / "o.h5")
    assert code == 2 and "conv5_1: weight has 1 non-finite values" in err
    assert not (tmp_path / "o.h5").exists()


# --- hostile HDF5: refused before anything is read ----------------------------------------------------
KERAS_KERNEL = "/block1_conv1/block1_conv1/kernel:0"
PULLS_IN_SECRET = ("external-storage", "external-link", "soft-link", "virtual-outside", "virtual-same-file",
                   "layer-external-link", "layer-soft-link")


def nstlite_file(path, params=None):
    write_weights(path, small_params() if params is None else params, "BGR", 255.0, CAFFE_MEAN, (1, 1, 1), "test")
    return path


def assert_one_line(message, *words):
    assert "\n" not in message.rstrip("\n") and "Traceback" not in message, message
    for w in words:
        assert w in message, message


def assert_cli_refusal(code, out, err, *words):
    assert code == 2 and out == "", (code, out)
    assert err.startswith("weights_convert: error: ") and err.count("\n") == 1, err
    assert_one_line(err, *words)
    assert SECRET_TEXT.decode() not in err


@pytest.mark.parametrize("case", PULLS_IN_SECRET)
def test_the_hostile_constructions_do_reach_outside_data_when_followed(tmp_path, case):
    """What a plain h5py read of each construction gives: the outside values (so the refusals
    below are what stands between them and the converted or loaded weights)."""
    path = nstlite_file(tmp_path / "w.h5")
    make_hostile(path, "/conv1_1/weight", case, tmp_path)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["conv1_1/weight"][()], SECRET_VALUE)


@pytest.mark.parametrize("case", HOSTILE_DATASETS)
def test_hostile_hdf5_is_refused_by_read_weights_load_vgg19_and_info(tmp_path, capsys, case):
    path = nstlite_file(tmp_path / "w.h5")
    make_hostile(path, "/conv1_1/weight", case, tmp_path)
    words = HOSTILE_DATASETS[case]
    with address_space_limit():
        for mapped in (False, True):
            with pytest.raises(WeightsError) as e:
                read_weights(path, mapped=mapped)
            assert_one_line(str(e.value), str(path), words)
        with pytest.raises(WeightsError, match=words):
            load_vgg19(path)
        code = cli.main(["info", str(path)])
    assert_cli_refusal(code, *capsys.readouterr(), words)


@pytest.mark.parametrize("case", HOSTILE_DATASETS)
def test_hostile_keras_file_is_refused_by_convert_and_writes_nothing(tmp_path, capsys, case):
    src = tmp_path / "vgg19_keras.h5"
    write_keras_h5(src, small_params())
    make_hostile(src, KERAS_KERNEL, case, tmp_path)
    dst = tmp_path / "out" / "w.h5"
    with address_space_limit():
        code, out, err = convert(capsys, src, dst)
    assert_cli_refusal(code, out, err, HOSTILE_DATASETS[case])
    assert not dst.exists() and not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


FIFO_SCRIPT = """
import sys
from nstlite.weights import WeightsError, read_weights
from weights_convert import cli
fifo, nstlite_efl, keras_efl, out = sys.argv[1:]
for path in (fifo, nstlite_efl):
    try:
        read_weights(path)
        print("read")
    except WeightsError as e:
        print("refused:", e)
for path in (fifo, keras_efl):
    print("convert exit", cli.main(["convert", path, "-o", out]))
"""


def test_a_fifo_as_weights_or_as_external_storage_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    nstlite_efl, keras_efl = tmp_path / "n.h5", tmp_path / "k.h5"
    nstlite_file(nstlite_efl)
    write_keras_h5(keras_efl, small_params())
    for path, where in ((nstlite_efl, "/conv1_1/weight"), (keras_efl, KERAS_KERNEL)):
        with h5py.File(path, "a") as f:
            shape = f[where].shape
            del f[where]
            f.create_dataset(where, shape, "<f4", external=[(str(fifo), 0, h5py.h5f.UNLIMITED)])
    run = subprocess.run([sys.executable, "-c", FIFO_SCRIPT, str(fifo), str(nstlite_efl), str(keras_efl),
                          str(tmp_path / "o.h5")], capture_output=True, text=True, timeout=60,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines) == 4, run.stdout + run.stderr
    assert lines[0].startswith("refused:") and "not a regular file" in lines[0]
    assert lines[1].startswith("refused:") and "external file" in lines[1]
    assert lines[2:] == ["convert exit 2", "convert exit 2"]
    assert "not a regular file" in run.stderr and "external file" in run.stderr
    assert not (tmp_path / "o.h5").exists()


# --- weights validated at load: one line each --------------------------------------------------------
def _set_value(dataset, index, value):
    def edit(f):
        f[dataset][index] = value
    return edit


def _set_attr(name, value):
    def edit(f):
        f.attrs[name] = value
    return edit


def _del(name):
    def edit(f):
        del f[name]
    return edit


BAD_VALUES = {  # case -> (edit of a valid file, what the line says)
    "nan-weight": (_set_value("conv2_1/weight", (0, 0, 1, 1), np.nan), "conv2_1: weight has 1 non-finite"),
    "inf-bias": (_set_value("conv1_2/bias", 0, np.inf), "conv1_2: bias has 1 non-finite"),
    "zero-kernel": (_set_value("conv3_1/weight", Ellipsis, 0.0), "conv3_1: weight is all zeros"),
    "std-zero": (_set_attr("std", [1.0, 0.0, 1.0]), "std (1.0, 0.0, 1.0) must be positive"),
    "std-negative": (_set_attr("std", [1.0, -2.0, 1.0]), "must be positive"),
    "std-four-values": (_set_attr("std", [1.0, 1.0, 1.0, 1.0]), "std has 4 values, expected 3"),
    "mean-two-values": (_set_attr("mean", [1.0, 2.0]), "mean has 2 values, expected 3"),
    "mean-text": (_set_attr("mean", "103.9,116.8,123.7"), "mean is '103.9,116.8,123.7', not 3 numbers"),
    "mean-nan": (_set_attr("mean", [np.nan, 1.0, 2.0]), "mean (nan, 1.0, 2.0) is not finite"),
    "channel-order-unknown": (_set_attr("channel_order", "GBR"), "channel_order 'GBR' is neither RGB nor BGR"),
    "channel-order-number": (_set_attr("channel_order", 3), "channel_order 3 is neither"),
    "input-scale-text": (_set_attr("input_scale", "abc"), "input_scale is 'abc', not a number"),
    "input-scale-inf": (_set_attr("input_scale", np.inf), "input_scale (inf,) is not finite"),
    "input-scale-zero": (_set_attr("input_scale", 0.0), "input_scale 0 is not positive"),
    "missing-middle-layer": (_del("conv2_1"), "layers missing in the middle of the network: conv2_1"),
}


def _wrong_input_channels(f):
    w = f["conv1_2/weight"][()]
    del f["conv1_2/weight"]
    f["conv1_2/weight"] = np.concatenate([w, w[:, :1]], axis=1)  # 5 inputs, conv1_1 gives 4


BAD_VALUES["input-channels"] = (_wrong_input_channels, "conv1_2: weight takes 5 input channels")


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_give_one_line_in_read_weights_load_vgg19_and_info(tmp_path, capsys, case):
    edit, words = BAD_VALUES[case]
    path = nstlite_file(tmp_path / "w.h5")
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(WeightsError) as e:
        read_weights(path, mapped=True)
    assert_one_line(str(e.value), str(path), words)
    with pytest.raises(WeightsError) as e:
        load_vgg19(path)
    assert_one_line(str(e.value), words)
    code = cli.main(["info", str(path)])
    out, err = capsys.readouterr()
    assert code == 1 and err == "", err
    failed = [line for line in out.splitlines() if line.startswith("validation:     FAILED: ")]
    assert failed and words in failed[0], out


def test_bad_preprocessing_given_to_vgg19_is_one_line_too():
    with pytest.raises(WeightsError, match="mean has 2 values"):
        preprocessing_attrs({"mean": (1.0, 2.0)})
    pre = preprocessing_attrs(None)  # the one default: Caffe's convention
    assert pre.channel_order == "BGR" and pre.input_scale == 255.0
    np.testing.assert_array_equal(pre.mean, CAFFE_MEAN)
    np.testing.assert_array_equal(pre.std, (1, 1, 1))
    assert preprocessing_attrs({"channel_order": b"rgb"}).channel_order == "RGB"


def test_a_file_without_preprocessing_attributes_reads_with_the_caffe_default(tmp_path):
    path = nstlite_file(tmp_path / "w.h5")
    with h5py.File(path, "a") as f:
        for key in ("channel_order", "input_scale", "mean", "std"):
            del f.attrs[key]
    _, attrs = read_weights(path)
    assert attrs["channel_order"] == "BGR" and attrs["input_scale"] == 255.0
    np.testing.assert_array_equal(attrs["mean"], CAFFE_MEAN)


def test_names_from_the_file_are_shown_with_control_characters_escaped(tmp_path, capsys):
    src = tmp_path / "k.h5"
    write_keras_h5(src, small_params())
    with h5py.File(src, "a") as f:
        f["block1_conv1/\x1b[2Jevil"] = h5py.SoftLink("/elsewhere")
    code, out, err = convert(capsys, src, tmp_path / "o.h5")
    assert_cli_refusal(code, out, err, "soft link", "\\x1b[2Jevil")
    assert "\x1b" not in err


def test_oversized_attribute_folder_and_unknown_layer_are_refused(tmp_path):
    path = nstlite_file(tmp_path / "w.h5")
    with h5py.File(path, "a") as f:
        f.attrs["mean"] = np.zeros(1000)
    with pytest.raises(WeightsError, match="attribute mean holds 1000 values"):
        read_weights(path)
    with pytest.raises(WeightsError, match="is a folder"):
        read_weights(tmp_path)
    with pytest.raises(WeightsError, match="unknown conv layer 'conv9_9'"):
        read_weights(nstlite_file(tmp_path / "v.h5"), last="conv9_9")


# --- what is not refused: valid files in every plain storage -------------------------------------------
def _mapped(a):
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(getattr(base, "obj", base), mmap.mmap)


@pytest.mark.parametrize("storage", ["contiguous", "gzip-shuffle-fletcher32", "lzf", "float64", "float16",
                                     "big-endian"])
def test_plain_datasets_in_any_plain_storage_read_and_map(tmp_path, storage):
    params = small_params(3)
    path = nstlite_file(tmp_path / "w.h5", params)
    dtype = {"float64": "<f8", "float16": "<f2", "big-endian": ">f4"}.get(storage, "<f4")
    if storage != "contiguous":
        with h5py.File(path, "a") as f:
            for name in params:
                w = f[f"{name}/weight"][()]
                del f[f"{name}/weight"]
                options = {"gzip-shuffle-fletcher32": dict(compression="gzip", shuffle=True, fletcher32=True),
                           "lzf": dict(compression="lzf")}.get(storage, {})
                f.create_dataset(f"{name}/weight", data=w.astype(dtype), **options)
    got, _ = read_weights(path, mapped=True)
    for name, (w, b) in params.items():
        np.testing.assert_array_equal(got[name][0], w.astype(dtype).astype(np.float32))
        assert got[name][0].dtype == np.float32
        assert _mapped(got[name][0]) == (storage == "contiguous")  # only plain <f4 runs are mapped


def test_chunked_compressed_keras_file_converts(tmp_path, capsys):
    params = small_params(4)
    src = tmp_path / "k.h5"
    write_keras_h5(src, params)
    with h5py.File(src, "a") as f:
        k = f[KERAS_KERNEL][()]
        del f[KERAS_KERNEL]
        f.create_dataset(KERAS_KERNEL, data=k, compression="gzip", chunks=(3, 3, 1, 2))
    assert_same_params(read_weights(converted_file(capsys, src, tmp_path / "o.h5"))[0], params)


def converted_file(capsys, src, dst):
    code, out, err = convert(capsys, src, dst)
    assert code == 0, err
    return dst
