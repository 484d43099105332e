"""weights_convert normalise: the paper's normalised VGG19 on tiny random weights.

The normalised network's mean rectified activations over the normalisation images are 1, and
its responses times the recorded scales are the raw network's, at every conv layer.
"""
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from nstlite.vgg import VGG19, load_vgg19
from nstlite.weights import random_params, read_weights, write_weights
from weights_convert import cli
from weights_convert.normalise import bootstrap_spread, collect_images, read_scales

WIDTHS = (4, 4, 6, 6, 8)
CONV = [f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 4, 4, 4)) for i in range(1, n + 1)]


@pytest.fixture()
def raw_file(tmp_path):
    path = tmp_path / "raw.h5"
    write_weights(path, random_params(3, widths=WIDTHS), "BGR", 255.0, (103.939, 116.779, 123.68),
                  (1, 1, 1), "random test weights")
    return str(path)


@pytest.fixture()
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 80), (72, 64), (64, 64)]):
        smooth = rng.uniform(0, 255, (h // 8, w // 8, 3))
        img = np.kron(smooth, np.ones((8, 8, 1))) + rng.normal(0, 20, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "tiny.png")  # under 64 px: skipped
    return str(folder)


def normalise(raw_file, image_dir, tmp_path, capsys, *extra):
    dst = str(tmp_path / "norm.h5")
    code = cli.main(["normalise", raw_file, "-o", dst, "--images", image_dir, "--size", "64", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return dst, out


def mean_activations(net, images):
    layers = [n for n in net.layer_names if n.startswith("conv")]
    sums = {n: 0.0 for n in layers}
    for _, rgb in images:
        feats = net.forward(net.preprocess(rgb), layers)
        for n in layers:
            sums[n] = sums[n] + np.asarray(feats[n], np.float64).mean(axis=(1, 2))
    return {n: s / len(images) for n, s in sums.items()}


def test_normalised_filters_have_mean_activation_one(raw_file, image_dir, tmp_path, capsys):
    dst, out = normalise(raw_file, image_dir, tmp_path, capsys)
    assert "normalised on 3 images" in out
    images = collect_images([image_dir], 64)
    raw = mean_activations(load_vgg19(raw_file), images)
    normed = mean_activations(load_vgg19(dst), images)
    assert list(normed) == CONV
    for name in CONV:
        alive = raw[name] > 0
        assert alive.sum() >= len(alive) // 2, name  # the test means something
        np.testing.assert_allclose(normed[name][alive], 1.0, rtol=2e-4, err_msg=name)
        assert not np.allclose(raw[name][alive], 1.0, rtol=0.1), name  # the raw network's are not 1


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_function_equals_raw_up_to_recorded_scales(raw_file, image_dir, tmp_path, capsys, pooling):
    dst, _ = normalise(raw_file, image_dir, tmp_path, capsys, "--pooling", pooling)
    scales = read_scales(dst)
    assert list(scales) == CONV and all(s.shape == (w.shape[0],) for s, (w, _) in
                                        zip(scales.values(), read_weights(dst)[0].values()))
    raw_net = VGG19(*read_weights(raw_file), pooling=pooling, dtype="float64")
    norm_net = VGG19(*read_weights(dst), pooling=pooling, dtype="float64")
    x = raw_net.preprocess(np.random.default_rng(5).uniform(0, 255, (48, 40, 3)))  # not a normalisation image
    raw = raw_net.forward(x, CONV)
    normed = norm_net.forward(x, CONV)
    for name in CONV:
        expected = np.asarray(raw[name])
        got = np.asarray(normed[name]) * scales[name][:, None, None]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max(), err_msg=name)
    assert read_scales(raw_file) == {}


def test_the_file_records_images_and_spread_and_info_shows_them(raw_file, image_dir, tmp_path, capsys):
    dst, _ = normalise(raw_file, image_dir, tmp_path, capsys, "--bootstrap", "50")
    params, attrs = read_weights(dst)  # the normal validation accepts the file
    record = json.loads(attrs["normalisation"])
    assert record["image_count"] == 3 and len(record["images"]) == 3
    assert all(n.endswith((".png",)) for n in record["images"]) and not any("tiny" in n for n in record["images"])
    assert record["bootstrap_rounds"] == 50 and set(record["layers"]) == set(CONV)
    assert all(v["bootstrap_rel_std_median"] > 0 for v in record["layers"].values())
    assert "normalised" in attrs["source"]
    code = cli.main(["info", dst])
    out = capsys.readouterr().out
    assert code == 0 and "normalised:     on 3 images" in out and "validation:     OK" in out
    assert "img0.png" in out and "conv5_4" in out.split("normalised:")[1]


def test_bootstrap_spread_of_one_image_is_zero_and_grows_with_disagreement():
    same = {"conv1_1": np.array([[2.0, 1.0]] * 5)}
    assert np.all(bootstrap_spread(same)["conv1_1"] == 0)
    varied = {"conv1_1": np.array([[1.0, 1.0], [3.0, 1.1], [2.0, 0.9], [1.5, 1.0]])}
    spread = bootstrap_spread(varied, rounds=100)["conv1_1"]
    assert spread[0] > spread[1] > 0


def test_images_are_read_out_of_a_wheel(tmp_path, image_dir):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(f"{image_dir}/img0.png", "pkg/data/photo.png")
        z.write(f"{image_dir}/img1.png", "pkg/other/skipped.png")  # not under data/
    images = collect_images([str(wheel)], 64)
    assert [n for n, _ in images] == ["pkg-1.0:pkg/data/photo.png"]
    assert max(images[0][1].shape[:2]) == 64


@pytest.mark.parametrize("case, words", [
    ("no_images", ["no usable images"]),
    ("missing", ["no such image"]),
    ("exists", ["exists", "--force"]),
])
def test_bad_requests_are_one_line_errors(raw_file, tmp_path, capsys, case, words):
    empty = tmp_path / "empty"
    empty.mkdir()
    dst = tmp_path / "out.h5"
    images = {"no_images": str(empty), "missing": str(tmp_path / "nope")}.get(case, str(empty))
    if case == "exists":
        dst.write_bytes(b"x")
    code = cli.main(["normalise", raw_file, "-o", str(dst), "--images", images])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("weights_convert: error:"), err
    assert all(w in err for w in words), err
    if case == "exists":
        assert dst.read_bytes() == b"x"
