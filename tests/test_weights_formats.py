"""weights_convert readers for Keras h5, Caffe caffemodel and MatConvNet mat: values, kernel layout,
channel order and preprocessing attributes, and clean errors on damaged files."""
import os

import numpy as np
import pytest
from scipy.signal import correlate

from nstlite.weights import VGG19_CONV_LAYERS, random_params, read_weights
from weights_convert import ConvertError, detect_format, read_source
from weights_convert import cli
from weights_fixtures import SMALL_WIDTHS, caffemodel_bytes, write_keras_h5, write_matconvnet_mat

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


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
    import h5py
    with h5py.File(tmp_path / "th.h5", "w") as f:
        f["block1_conv1/block1_conv1_W_1:0"] = np.zeros((4, 3, 3, 3), np.float32)
        f["block1_conv1/block1_conv1_b_1:0"] = np.zeros(4, np.float32)
    code, out, err = convert(capsys, tmp_path / "th.h5", tmp_path / "o.h5")
    assert code == 2 and "Theano" in err and not (tmp_path / "o.h5").exists()


def test_nstlite_file_is_not_converted_again(tmp_path, capsys):
    from nstlite.weights import write_weights
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
    from weights_fixtures import pb_field
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
    from nstlite.weights import default_weights_path, vgg19_conv_shapes
    path = default_weights_path()
    if not os.path.exists(path):
        pytest.skip("real VGG19 weights not present (python -m weights_convert fetch)")
    from weights_convert.validate import validate_params
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
