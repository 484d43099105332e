"""The channels-last VGG19 path (nstlite.fast.channels_last) against the reference path, and
its buffers and errors. Tolerances: ``fast_tolerances.TOL``, times 5 for a whole network.
"""
import numpy as np
import pytest

from fast_tolerances import TOL, rel

from nstlite import layers as L
from nstlite.vgg import VGG19
from nstlite.weights import random_params


# ----------------------------------------------------------------------------- VGG19 paths
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kernel", ["winograd", "shifted_gemm", "auto"])
@pytest.mark.parametrize("size", [(32, 36), (37, 29)])
def test_vgg_fast_path_matches_reference(pooling, dtype, kernel, size):
    """Features and image gradients of the channels-last path equal the reference path's."""
    params = random_params(0, widths=(4, 5, 6, 6, 8), dtype=np.float64)
    ref = VGG19(params, None, pooling=pooling, dtype=dtype, kernel="reference")
    fast = VGG19(params, None, pooling=pooling, dtype=dtype, kernel=kernel)
    rng = np.random.default_rng(sum(size))
    x = (rng.standard_normal((3,) + size) * 20).astype(dtype)
    layers = ["conv1_1", "conv2_1", "conv3_1", "pool3", "conv4_1", "conv4_2", "conv5_1"]
    fr, ff = ref.forward(x, layers), fast.forward(x, layers)
    tol = TOL[dtype, kernel] * 5
    for n in layers:
        assert ff[n].shape == fr[n].shape and ff[n].dtype == np.dtype(dtype)
        assert rel(ff[n], fr[n]) < tol, n
    grads = {n: rng.standard_normal(fr[n].shape).astype(dtype) for n in layers}
    gr, gf = ref.backward(grads), fast.backward(grads)
    assert gf.shape == x.shape and gf.dtype == np.dtype(dtype)
    assert rel(gf, gr) < tol
    # a shallower gradient after the same forward, and the activation patterns agree
    gr2, gf2 = ref.backward({"conv2_1": grads["conv2_1"]}), fast.backward({"conv2_1": grads["conv2_1"]})
    assert rel(gf2, gr2) < tol
    assert_same_activation_pattern(ref, fast, params, x, pooling, dtype)


def assert_same_activation_pattern(ref, fast, params, x, pooling, dtype):
    """The two paths' ReLU masks and max-pool winners agree: exactly in float64; in float32
    wherever the float64 network is not within rounding (1e-4 of the layer's largest value) of a
    kink: a pre-activation at 0, or a window's two largest taps level."""
    pr, pf = ref.activation_pattern(), fast.activation_pattern()
    assert len(pr) == len(pf) > 0
    exact = VGG19(params, None, pooling=pooling, dtype="float64", kernel="reference")
    names = [n for n in exact.layer_names[: exact.layer_names.index("conv5_1") + 1]]
    maps = exact.forward(x.astype(np.float64), names)
    pattern_names = [n for n in names if n.startswith("conv") or pooling == "max"]
    below = dict(zip(names[1:], names))
    for name, a, b in zip(pattern_names, pr, pf):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, name
        differ = a != b
        if dtype == "float64" or not differ.any():
            assert not differ.any(), name
            continue
        if name.startswith("conv"):
            pre, _ = L.conv3x3_forward_reference(maps[below[name]] if name in below else x.astype(np.float64),
                                                 *params[name])
            near = np.abs(pre) <= 1e-4 * np.abs(pre).max()
        else:
            m = maps[below[name]]
            c, h, w = m.shape
            win = np.sort(m[:, :h // 2 * 2, :w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2)
                          .transpose(0, 1, 3, 2, 4).reshape(c, h // 2, w // 2, 4), axis=-1)
            near = win[..., 3] - win[..., 2] <= 1e-4 * np.abs(m).max()
        assert near[differ].all(), f"{name}: masks differ away from a kink"


def test_vgg_fast_path_reuses_buffers_across_sizes():
    """Two sizes in turn (style image, then content image) give the reference's answers."""
    params = random_params(1, widths=(4, 5, 6, 6, 8), dtype=np.float64)
    ref = VGG19(params, None, dtype="float64", kernel="reference")
    fast = VGG19(params, None, dtype="float64", kernel="winograd")
    rng = np.random.default_rng(7)
    for shape in [(3, 40, 33), (3, 32, 32), (3, 40, 33)]:
        x = rng.standard_normal(shape) * 10
        fr, ff = ref.forward(x, ["conv5_1", "conv1_1"]), fast.forward(x, ["conv5_1", "conv1_1"])
        assert rel(ff["conv5_1"], fr["conv5_1"]) < 1e-12
        g = {"conv5_1": np.ones_like(fr["conv5_1"]), "conv1_1": np.ones_like(fr["conv1_1"])}
        assert rel(fast.backward(g), ref.backward(g)) < 1e-12


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("kernel", ["winograd", "shifted_gemm"])
def test_vgg_crops_match_the_reference_path(pooling, kernel):
    """A crop schedule (``VGG19.forward``'s crops, as ``nstlite.tiled`` makes them): both paths
    hand out the same cropped maps, take gradients of them to the same input gradient, and
    record the same activation pattern; a crop leaves the map the next layer reads smaller."""
    params = random_params(3, widths=(4, 5, 6, 6, 8), dtype=np.float64)
    ref = VGG19(params, None, pooling=pooling, dtype="float64", kernel="reference")
    fast = VGG19(params, None, pooling=pooling, dtype="float64", kernel=kernel)
    x = np.random.default_rng(5).standard_normal((3, 45, 38)) * 20
    crops = {"conv1_1": (3, 1, 0, 2), "conv1_2": (2, 0, 4, 0), "conv2_2": (0, 1, 1, 1), "conv3_1": (1, 0, 0, 1)}
    layers = ["conv1_2", "pool1", "conv3_1", "conv4_1"]
    fr, ff = ref.forward(x, layers, crops=crops), fast.forward(x, layers, crops=crops)
    # conv1_2 reads 41 x 36, keeps 39 x 32; pool1 halves that; conv3_1 reads pool2 (9 x 7)
    assert fr["conv1_2"].shape == (4, 39, 32) and fr["pool1"].shape == (4, 19, 16)
    assert fr["conv3_1"].shape == (6, 8, 6) and fr["conv4_1"].shape == (6, 4, 3)
    for n in layers:
        assert ff[n].shape == fr[n].shape and rel(ff[n], fr[n]) < 1e-12, n
    grads = {n: np.random.default_rng(6).standard_normal(fr[n].shape) for n in layers}
    gr, gf = ref.backward(grads), fast.backward(grads)
    assert gr.shape == x.shape and rel(gf, gr) < 1e-12
    pr, pf = ref.activation_pattern(), fast.activation_pattern()
    assert len(pr) == len(pf) and all(np.array_equal(a, b) for a, b in zip(pr, pf))


def test_vgg_fast_path_errors():
    params = random_params(0, widths=(4, 5, 6, 6, 8), dtype=np.float64)
    net = VGG19(params, None, dtype="float64", kernel="auto")
    from nstlite.errors import NstliteError
    with pytest.raises(NstliteError):
        net.backward({"conv1_1": np.zeros((4, 8, 8))})
    with pytest.raises(NstliteError):
        net.forward(np.zeros((3, 8, 8)), ["conv5_1"])
    net.forward(np.zeros((3, 16, 16)), ["conv2_1"])
    with pytest.raises(NstliteError):
        net.backward({"conv3_1": np.zeros((6, 4, 4))})
    for crops, message in (({"conv3_1": (1, 0, 0, 0)}, "cannot crop conv3_1: the forward stops at conv2_1"),
                           ({"conv1_1": (1, -1, 0, 0)}, "must be 4 non-negative integers"),
                           ({"pool1": (4, 4, 0, 0)}, "the crop of pool1 leaves nothing of its map")):
        with pytest.raises(NstliteError, match=message):
            net.forward(np.zeros((3, 16, 16)), ["conv2_1"], crops=crops)


def test_gradcheck_catches_a_wrong_shared_pooling_backward(monkeypatch):
    """Pooling is one implementation for both paths: doubling ``layers.pool_backward_into``'s
    result breaks the layer rows and the network rows of every kernel (the reference path and
    the channels-last path alike)."""
    from nstlite import gradcheck
    real = L.pool_backward_into

    def doubled(pooling, dout, dx, *args, **kwargs):
        real(pooling, dout, dx, *args, **kwargs)
        dx *= 2.0
        return dx
    monkeypatch.setattr(L, "pool_backward_into", doubled)
    rows = ["avg_pool 2x2", "max_pool 2x2", "vgg19 backward"]
    results = gradcheck(seed=1, select=rows)
    names = {c.name for c in results}
    assert {"vgg19 backward (avg pool) [auto]", "vgg19 backward (max pool) [winograd]"} <= names
    assert not [c.name for c in results if c.passed]
