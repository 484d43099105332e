"""VGG19 feature network on tiny random weights: forward, backward, preprocessing, loading."""
import numpy as np
import pytest

from nstlite import layers as L
from nstlite.backend import to_host
from nstlite.errors import NstliteError
from nstlite.gradient_check import NETWORK_TOL, check_directional
from nstlite.vgg import VGG19, VGG19_LAYERS, load_vgg19
from nstlite.weights import VGG19_CONV_LAYERS, WeightsError, random_params, write_weights

WIDTHS = (4, 5, 6, 6, 8)
CAFFE_MEAN = (103.939, 116.779, 123.68)


def tiny_net(device="cpu", pooling="avg", dtype="float64", seed=0):
    return VGG19(random_params(seed, widths=WIDTHS, dtype=np.float64), None, pooling=pooling,
                 device=device, dtype=dtype)


def test_layer_names():
    assert len(VGG19_CONV_LAYERS) == 16
    assert VGG19_LAYERS[:3] == ("conv1_1", "conv1_2", "pool1")
    assert VGG19_LAYERS[-2:] == ("conv5_4", "pool5") and len(VGG19_LAYERS) == 21


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_forward_matches_layer_by_layer_composition(device, xp, rng, pooling):
    params = random_params(3, widths=WIDTHS, dtype=np.float64)
    net = VGG19(params, None, pooling=pooling, device=device, dtype="float64")
    x = rng.standard_normal((3, 34, 30))
    feats = net.forward(xp.asarray(x), ["conv1_1", "pool1", "conv2_2", "conv5_1"])
    # independent composition with the layer functions on NumPy
    h = x
    expect = {}
    for name in VGG19_LAYERS:
        if name.startswith("conv"):
            w, b = params[name]
            h = np.maximum(L.conv3x3_forward_reference(h, w, b)[0], 0)
        else:
            h = L.POOLING[pooling][0](h)[0]
        expect[name] = h
        if name == "conv5_1":
            break
    for name, f in feats.items():
        np.testing.assert_allclose(to_host(f), expect[name], rtol=1e-10, atol=1e-10)
    assert feats["conv5_1"].shape == (8, 2, 1) and feats["pool1"].shape == (4, 17, 15)


@pytest.mark.parametrize("kernel", ["reference", "auto"])
def test_forward_stops_at_deepest_requested_layer(rng, kernel):
    net = VGG19(random_params(0, widths=WIDTHS, dtype=np.float64), None, dtype="float64", kernel=kernel)
    net.forward(rng.standard_normal((3, 16, 16)), ["conv2_1"])
    assert len(net.activation_pattern()) == 3  # conv1_1, conv1_2, conv2_1
    with pytest.raises(NstliteError, match="stopped at conv2_1"):
        net.backward({"conv2_2": np.zeros((5, 8, 8))})


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_backward_directional(device, xp, rng, pooling):
    net = tiny_net(device, pooling)
    probe = ["conv1_2", "pool2", "conv3_4", "conv4_2", "conv5_1"]
    for _ in range(10):
        x = xp.asarray(rng.standard_normal((3, 32, 32)) * 20)
        R = {n: xp.asarray(rng.standard_normal(f.shape)) for n, f in net.forward(x, probe).items()}

        def f_and_grad(z):
            fz = net.forward(z, probe)
            return sum(xp.sum(fz[n] * R[n]) for n in probe), net.backward(R)

        c = check_directional("vgg", f_and_grad, net.activation_pattern, x, rng, directions=4)
        if c is not None:
            assert c.error < NETWORK_TOL, c
            return
    pytest.fail("no input away from kinks found")


def test_gradients_at_several_layers_sum(device, xp, rng):
    net = tiny_net(device)
    x = xp.asarray(rng.standard_normal((3, 32, 32)))
    feats = net.forward(x, ["conv1_1", "conv3_1", "conv4_2"])
    g = {n: xp.asarray(rng.standard_normal(f.shape)) for n, f in feats.items()}
    both = net.backward(g)
    parts = sum(to_host(net.backward({n: g[n]})) for n in g)
    np.testing.assert_allclose(to_host(both), parts, rtol=1e-10, atol=1e-12)
    assert both.shape == (3, 32, 32)


def test_backward_below_deepest_layer_only(rng):
    """A gradient at conv1_1 only reaches the input through conv1_1."""
    params = random_params(0, widths=WIDTHS, dtype=np.float64)
    net = VGG19(params, None, dtype="float64")
    x = rng.standard_normal((3, 16, 16))
    f = net.forward(x, ["conv1_1", "conv3_1"])
    g = rng.standard_normal(f["conv1_1"].shape)
    dx = net.backward({"conv1_1": g})
    pre, cache = L.conv3x3_forward_reference(x, *params["conv1_1"])
    expect = L.conv3x3_backward_reference(g * (pre > 0), cache)
    np.testing.assert_allclose(dx, expect, rtol=1e-12)


def test_errors(rng):
    net = tiny_net()
    with pytest.raises(NstliteError, match="backward called before forward"):
        net.backward({"conv1_1": np.zeros((4, 16, 16))})
    with pytest.raises(NstliteError, match="unknown layer"):
        net.forward(rng.standard_normal((3, 16, 16)), ["conv9_9"])
    net.forward(rng.standard_normal((3, 16, 16)), ["conv1_1"])
    with pytest.raises(NstliteError, match="last forward stopped"):
        net.backward({"conv2_1": np.zeros((5, 8, 8))})
    with pytest.raises(NstliteError, match="too small"):
        net.forward(rng.standard_normal((3, 8, 8)), ["conv5_1"])
    with pytest.raises(NstliteError):
        VGG19(random_params(0, widths=WIDTHS), pooling="median")


def test_dtype_float32_by_default(rng):
    net = VGG19(random_params(0, widths=WIDTHS), None)
    x = net.preprocess(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert x.dtype == np.float32
    f = net.forward(x, ["conv2_1"])["conv2_1"]
    assert f.dtype == np.float32 and net.backward({"conv2_1": f}).dtype == np.float32


def test_preprocess_caffe_convention_and_roundtrip(rng):
    net = VGG19(random_params(0, widths=WIDTHS), None, dtype="float64")
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = net.preprocess(rgb)
    assert x.shape == (3, 5, 7)
    # channel 0 is blue minus the blue mean
    np.testing.assert_allclose(x[0], rgb[:, :, 2] - CAFFE_MEAN[0])
    np.testing.assert_array_equal(net.deprocess(x), rgb)
    low, high = net.input_bounds()
    np.testing.assert_allclose(low, -np.array(CAFFE_MEAN))
    np.testing.assert_allclose(high, 255 - np.array(CAFFE_MEAN))


def test_preprocess_torchvision_convention(rng):
    attrs = {"channel_order": "RGB", "input_scale": 1.0, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    net = VGG19(random_params(0, widths=WIDTHS), attrs, dtype="float64")
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    x = net.preprocess(rgb)
    np.testing.assert_allclose(x[1], (rgb[:, :, 1] / 255.0 - 0.456) / 0.224)
    np.testing.assert_array_equal(net.deprocess(x), rgb)
    low, high = net.input_bounds()
    np.testing.assert_allclose(high[0], (1 - 0.485) / 0.229)


def test_load_vgg19_from_file_and_missing_file(tmp_path, monkeypatch):
    path = tmp_path / "tiny.h5"
    write_weights(path, random_params(0, widths=WIDTHS), "BGR", 255.0, CAFFE_MEAN, (1, 1, 1), "test")
    net = load_vgg19(str(path), dtype="float64")
    assert net.layer_names[-1] == "pool5" and net.dtype == np.float64
    monkeypatch.setenv("NSTLITE_WEIGHTS", str(tmp_path / "nothing.h5"))
    with pytest.raises(WeightsError, match="weights_convert fetch"):
        load_vgg19()


def test_load_vgg19_reads_only_the_layers_asked_for(tmp_path):
    path = tmp_path / "tiny.h5"
    write_weights(path, random_params(0, widths=WIDTHS), "BGR", 255.0, CAFFE_MEAN, (1, 1, 1), "test")
    net = load_vgg19(str(path), layers=["conv1_1", "conv4_2", "conv5_1"])
    assert net.layer_names[-1] == "conv5_1" and "conv5_2" not in net.weights
    assert net.missing_layers == []
    assert list(load_vgg19(str(path), layers=["pool2"]).weights) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
    # an unknown name loads everything; the network then names the bad layer itself
    net = load_vgg19(str(path), layers=["conv9_9"])
    assert net.layer_names[-1] == "pool5"
    with pytest.raises(NstliteError, match="conv9_9"):
        net.forward(np.zeros((3, 32, 32)), ["conv9_9"])


def test_partial_weights_end_the_network(rng):
    params = {k: v for k, v in random_params(0, widths=WIDTHS).items() if k in ("conv1_1", "conv1_2", "conv2_1")}
    net = VGG19(params, None)
    assert net.layer_names == ["conv1_1", "conv1_2", "pool1", "conv2_1"]


def test_torch_oracle(rng):
    """Forward and input gradient against PyTorch (float64), when torch is installed."""
    torch = pytest.importorskip("torch")
    params = random_params(5, widths=WIDTHS, dtype=np.float64)
    net = VGG19(params, None, dtype="float64")
    x = rng.standard_normal((3, 32, 32))
    feats = net.forward(x, ["conv3_1", "conv5_1"])
    R = {n: rng.standard_normal(f.shape) for n, f in feats.items()}
    dx = net.backward(R)

    tx = torch.tensor(x[None], requires_grad=True)
    h, out = tx, {}
    for name in VGG19_LAYERS:
        if name.startswith("conv"):
            w, b = params[name]
            h = torch.relu(torch.nn.functional.conv2d(h, torch.tensor(w), torch.tensor(b), padding=1))
        else:
            h = torch.nn.functional.avg_pool2d(h, 2)
        out[name] = h
        if name == "conv5_1":
            break
    loss = sum((out[n][0] * torch.tensor(R[n])).sum() for n in R)
    loss.backward()
    for n in R:
        np.testing.assert_allclose(feats[n], out[n][0].detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad[0].numpy(), rtol=1e-9, atol=1e-9)


def test_mapped_weights_equal_read_ones_and_release_keeps_values(tmp_path):
    from nstlite.weights import read_weights, release_pages
    path = tmp_path / "tiny.h5"
    params = random_params(0, widths=WIDTHS)
    write_weights(path, params, "BGR", 255.0, CAFFE_MEAN, (1, 1, 1), "test")
    mapped, _ = read_weights(str(path), mapped=True)
    copied, _ = read_weights(str(path))
    for name, (w, b) in copied.items():
        wm = mapped[name][0]
        assert not wm.flags.writeable and not wm.flags.owndata  # a view of the file
        np.testing.assert_array_equal(wm, w)
        release_pages(wm)  # the pages go; the values come back from the file on the next read
        np.testing.assert_array_equal(wm, params[name][0])
    release_pages(np.zeros(3))  # any other array: nothing happens
    # a network built on mapped weights computes what one built on copies does, run after run
    x = np.random.default_rng(0).standard_normal((3, 32, 32)).astype(np.float32)
    a = VGG19(mapped, None).forward(x, ["conv3_1"])["conv3_1"].copy()
    net = load_vgg19(str(path))
    for _ in range(2):
        np.testing.assert_allclose(net.forward(x, ["conv3_1"])["conv3_1"], a, rtol=1e-6, atol=1e-6)


def test_mapped_read_falls_back_to_copies_for_chunked_or_compressed_data(tmp_path):
    import h5py

    from nstlite.weights import read_weights
    path = tmp_path / "tiny.h5"
    params = random_params(0, widths=WIDTHS)
    write_weights(path, params, "BGR", 255.0, CAFFE_MEAN, (1, 1, 1), "test")
    with h5py.File(path, "a") as f:  # conv1_2's kernel stored compressed (chunked)
        del f["conv1_2/weight"]
        f.create_dataset("conv1_2/weight", data=params["conv1_2"][0].astype(np.float32), compression="gzip")
    mapped, _ = read_weights(str(path), mapped=True)
    assert mapped["conv1_2"][0].flags.owndata  # read the ordinary way
    assert not mapped["conv1_1"][0].flags.owndata  # still a view of the file
    for name in ("conv1_1", "conv1_2"):
        np.testing.assert_array_equal(mapped[name][0], params[name][0].astype(np.float32))


@pytest.mark.parametrize("kernel,pooling", [("auto", "avg"), ("winograd", "max"), ("shifted_gemm", "avg"),
                                            ("reference", "max")])
def test_memory_bytes_is_what_an_evaluation_allocates(kernel, pooling):
    """``memory_bytes`` against NumPy's own allocations (tracemalloc): the channels-last path
    keeps exactly what it says after an evaluation; the reference path's estimate (its maps
    plus one layer's temporaries) bounds what it allocates at its peak."""
    import tracemalloc
    params = random_params(0, widths=(8, 12, 16, 16, 24))
    layers = ["conv1_1", "conv2_1", "conv3_1", "conv4_2", "conv5_1"]
    running = VGG19_LAYERS[:VGG19_LAYERS.index("conv5_1") + 1]
    kernels = sum(w.nbytes + b.nbytes for n, (w, b) in params.items() if n in running)  # allocated before tracing
    x = np.random.default_rng(0).standard_normal((3, 67, 45)).astype(np.float32)
    tracemalloc.start()
    try:
        net = VGG19(params, None, pooling=pooling, kernel=kernel)
        feats = net.forward(x, layers)
        grads = {n: f.copy() for n, f in feats.items()}
        dx = net.backward(grads)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = net.memory_bytes(67, 45, layers, layers) - kernels
    kept -= sum(g.nbytes for g in grads.values())
    peak -= sum(g.nbytes for g in grads.values())
    assert dx.shape == x.shape
    if kernel == "reference":
        assert not net.features_writable and 0.7 * estimate < peak <= estimate
    else:
        assert net.features_writable and abs(kept - estimate) < 0.01 * estimate + 32768
    assert net.memory_bytes(134, 90, layers, layers) > 3 * net.memory_bytes(67, 45, layers, layers)
