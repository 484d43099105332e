"""Tiled evaluation equals the untiled objective to float64 rounding, and says why it may not."""
import numpy as np
import pytest

from nstlite import losses
from nstlite.errors import NstliteError
from nstlite.objective import Region, build_objective
from nstlite import tiled as tiled_module
from nstlite.tiled import (TiledObjective, choose_tile, crop_margins, receptive_radius, tile_boxes, tile_crops,
                           tile_gradient, tile_plan, tile_statistics, tiled_bytes, tiled_features, tiled_statistics)
from nstlite.vgg import VGG19, VGG19_LAYERS
from nstlite.weights import random_params

STYLE = {n: 0.2 for n in ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")}


def tiny_net(kernel="reference"):
    return VGG19(random_params(2, widths=(4, 5, 6, 6, 8), dtype=np.float64), None, dtype="float64", kernel=kernel)


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_receptive_fields_of_vgg19():
    """R (radius) and s (stride): the receptive field is s + 2R pixels (156 at conv5_1, 84 at conv4_2)."""
    names = list(VGG19_LAYERS)
    assert receptive_radius(names, "conv1_1") == (1, 1)
    assert receptive_radius(names, "conv4_2") == (38, 8)
    assert receptive_radius(names, "conv5_1") == (70, 16)
    for layer, field in (("conv4_2", 84), ("conv5_1", 156)):
        radius, stride = receptive_radius(names, layer)
        assert stride + 2 * radius == field
    assert tile_plan(names, ["conv4_2", "conv5_1"], 64) == (64, 80, 16)
    assert tile_plan(names, ["conv4_2"], 24) == (24, 40, 8)


@pytest.mark.parametrize("crops", [False, True])
@pytest.mark.parametrize("kernel", ["reference", "auto"])
@pytest.mark.parametrize("height, width, tile, margin", [
    (161, 97, 48, None),   # odd sizes, tiles that do not divide them, the least margin (80)
    (130, 130, 32, 96),    # a wider margin changes nothing
    (64, 200, 208, None),  # one tile wider than the image
])
def test_tiled_equals_untiled(kernel, height, width, tile, margin, crops, rng):
    net = tiny_net(kernel)
    photo, art = rng.standard_normal((3, height, width)) * 20, rng.standard_normal((3, 90, 70)) * 20
    x = rng.standard_normal((3, height, width)) * 20
    untiled = build_objective(net, photo, [art], ["conv4_2"], STYLE, alpha=1.0, beta=1e3, tv_weight=1e-2)
    total, dx, parts = untiled(x)
    total, dx, style = float(total), dx.copy(), float(parts["style"])
    tiled = build_objective(net, photo, [art], ["conv4_2"], STYLE, alpha=1.0, beta=1e3, tv_weight=1e-2,
                            tile=tile, margin=margin, tile_crops=crops)
    assert isinstance(tiled, TiledObjective) and tiled.crop == crops
    t_total, t_dx, t_parts = tiled(x)
    assert float(t_total) == pytest.approx(total, rel=1e-12)
    assert float(t_parts["style"]) == pytest.approx(style, rel=1e-12)
    assert rel(t_dx, dx) < 1e-12


def test_a_margin_below_the_receptive_radius_is_not_exact(rng):
    """The least margin is needed: 16 pixels less (64 < R = 70 at conv5_1) changes the gradient."""
    net = tiny_net()
    photo, art = rng.standard_normal((3, 160, 160)) * 20, rng.standard_normal((3, 64, 64)) * 20
    x = rng.standard_normal((3, 160, 160)) * 20
    objective = build_objective(net, photo, [art], [], STYLE, beta=1.0)
    dx = objective(x)[1].copy()
    tiled = TiledObjective(objective, 48)
    assert rel(tiled(x)[1], dx) < 1e-12
    tiled.margin = 64  # bypass the check on purpose
    assert rel(tiled(x)[1], dx) > 1e-6


@pytest.mark.parametrize("kernel", ["reference", "auto"])
def test_crops_shrink_a_tiles_maps_to_what_its_inner_responses_need(kernel, rng):
    """An inner tile of 48 (margin 80) to conv5_1: conv1_1 keeps the inner box + 69 pixels,
    conv4_4 + 16 (2 positions at stride 8), conv5_1 exactly the inner box; a tile at the image's
    corner drops nothing on the sides where the image ends; every kept response is the image's."""
    net = tiny_net(kernel)
    layers = list(STYLE) + ["conv4_2", "conv4_4"]
    assert crop_margins(net.layer_names, layers)["conv1_1"] == 69
    assert crop_margins(net.layer_names, layers)["conv4_4"] == 16
    x = rng.standard_normal((3, 240, 240)) * 20
    whole = {k: v.copy() for k, v in net.forward(x, layers).items()}
    boxes = dict(tile_boxes(240, 240, 48, 80))
    for inner in [(96, 144, 96, 144), (0, 48, 0, 48)]:
        padded = boxes[inner]
        crops, origins = tile_crops(net, layers, inner, padded, x.shape[1:])
        p0, p1, q0, q1 = padded
        feats = net.forward(x[:, p0:p1, q0:q1], layers, crops=crops)
        if inner[0]:
            assert padded == (16, 224, 16, 224)
            assert feats["conv1_1"].shape[1:] == (48 + 2 * 69,) * 2
            assert feats["conv4_4"].shape[1:] == ((48 + 2 * 16) // 8,) * 2
            assert feats["conv5_1"].shape[1:] == (48 // 16,) * 2
            assert crops["conv1_1"] == (11, 11, 11, 11) and origins["conv5_1"] == (6, 6)
        else:  # the image's top and left edges: only the bottom and right are dropped
            assert crops["conv1_1"] == (0, 11, 0, 11) and feats["conv5_1"].shape[1:] == (3, 3)
        for name in layers:  # every kept position is needed, and exact
            (r, c), (h, w) = origins[name], feats[name].shape[1:]
            assert rel(feats[name], whole[name][:, r:r + h, c:c + w]) < 1e-12, name


@pytest.mark.parametrize("kernel", ["reference", "auto"])
def test_a_crop_one_position_too_aggressive_is_not_exact(kernel, rng, monkeypatch):
    """conv4_1 cropped one position (8 pixels) closer to the inner box than its margin of 40:
    the zero padding at its cropped border reaches conv5_1's inner responses."""
    net = tiny_net(kernel)
    photo, art = rng.standard_normal((3, 160, 144)) * 20, rng.standard_normal((3, 64, 64)) * 20
    x = rng.standard_normal((3, 160, 144)) * 20
    objective = build_objective(net, photo, [art], ["conv4_2"], STYLE, beta=1.0)
    dx = objective(x)[1].copy()
    tiled = TiledObjective(objective, 48, crop=True)
    assert rel(tiled(x)[1], dx) < 1e-12
    real = crop_margins

    def too_close(layer_names, layers):
        margins = real(layer_names, layers)
        margins["conv4_1"] -= 8
        return margins
    monkeypatch.setattr(tiled_module, "crop_margins", too_close)
    assert rel(tiled(x)[1], dx) > 1e-6


def test_the_per_tile_functions_add_up_to_the_objective(rng):
    """tile_statistics and tile_gradient, called tile by tile and summed by hand (as a Dask
    fan-out would), give the tiled objective's style statistics, content value and gradient."""
    net = tiny_net("auto")
    photo, art = rng.standard_normal((3, 100, 90)) * 20, rng.standard_normal((3, 64, 64)) * 20
    x = rng.standard_normal((3, 100, 90)) * 20
    objective = build_objective(net, photo, [art], ["conv4_2"], STYLE, beta=1.0)
    total, dx, parts = objective(x)
    total, dx, content = float(total), dx.copy(), float(parts["content"])
    style = [i for i, (_, t, *_) in enumerate(objective.terms) if isinstance(t, losses.StyleLoss)]
    boxes = tile_boxes(100, 90, 32, 80)
    stats = None
    for inner, (p0, p1, q0, q1) in boxes:
        part = tile_statistics(net, x[:, p0:p1, q0:q1], [objective.terms[i][1] for i in style], inner,
                               (p0, p1, q0, q1), x.shape[1:])
        stats = part if stats is None else [{k: a[k] + b[k] for k in a} for a, b in zip(stats, part)]
    stats = dict(zip(style, stats))
    summed, values = np.zeros_like(x), {}
    for inner, (p0, p1, q0, q1) in boxes:
        v, g = tile_gradient(net, x[:, p0:p1, q0:q1], objective.terms, stats, inner, (p0, p1, q0, q1), x.shape[1:])
        summed[:, p0:p1, q0:q1] += g
        values = {i: values.get(i, 0.0) + float(v[i]) for i in v}
    assert len(values) == 1 and sum(values.values()) == pytest.approx(content, rel=1e-12)
    assert rel(summed, dx) < 1e-12


def test_tiled_statistics_and_features_equal_the_whole_image(rng):
    net = tiny_net("auto")
    x = rng.standard_normal((3, 100, 77)) * 20
    terms = [losses.GramLoss("conv3_1"), losses.MeanStdLoss("conv5_1")]
    feats = {k: v.copy() for k, v in net.forward(x, ["conv3_1", "conv5_1"]).items()}
    for term, stats in zip(terms, tiled_statistics(net, x, terms, 32, crop=True)):
        whole = term.statistics(feats[term.layer])
        for key in whole:
            np.testing.assert_allclose(stats[key], whole[key], rtol=1e-12)
    assembled = tiled_features(net, x, ["conv3_1", "conv5_1"], 32, crop=True)
    for name in feats:
        np.testing.assert_allclose(assembled[name], feats[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"tile": 40}, "the tile size must be a positive multiple of 16 \\(the stride of conv5_1\\), not 40"),
    ({"tile": 48, "margin": 48}, "the tile margin must be a multiple of 16 and at least 70"),
    ({"tile": 48, "style_loss": "histogram"}, "HistogramLoss of conv1_1 needs the whole image"),
])
def test_bad_tiles_are_one_line_errors(rng, kwargs, message):
    photo = rng.standard_normal((3, 64, 64))
    with pytest.raises(NstliteError, match=message):
        build_objective(tiny_net(), photo, [photo], [], STYLE, **kwargs)


def test_regions_are_not_tiled(rng):
    photo = rng.standard_normal((3, 64, 64))
    with pytest.raises(NstliteError, match="GuidedGramLoss of conv1_1 needs the whole image"):
        build_objective(tiny_net(), photo, [], [], STYLE, regions=[Region(np.ones((64, 64)), [photo])], tile=48)


def test_choose_tile_fits_the_budget():
    net = tiny_net()
    layers = list(STYLE) + ["conv4_2"]
    whole = net.memory_bytes(512, 512, layers, layers)
    assert choose_tile(net, 512, 512, layers, layers, 10 * whole) == 512  # at most one tile for the image
    tile = choose_tile(net, 512, 512, layers, layers, whole // 2)
    assert tile % 16 == 0 and tiled_bytes(net, 512, 512, layers, layers, tile) <= whole // 2
    assert tiled_bytes(net, 512, 512, layers, layers, tile + 16) > whole // 2
    with pytest.raises(NstliteError, match="does not fit"):
        choose_tile(net, 512, 512, layers, layers, 1000)


def test_auto_tiles_from_the_memory_available():
    from nstlite.memory import estimate_peak_bytes, scale_tile, tiled_peak_bytes

    net = tiny_net()
    layers = list(STYLE) + ["conv4_2"]
    whole = estimate_peak_bytes(net, 1024, 1024, layers)
    assert scale_tile(net, 1024, 1024, layers, tile="auto", available=whole) is None
    assert scale_tile(net, 1024, 1024, layers, tile=64, available=1) == 64  # a size asked for is kept
    tile = scale_tile(net, 1024, 1024, layers, tile="auto", available=whole - 1, content_layers=["conv4_2"])
    assert tile % 16 == 0 and tiled_peak_bytes(net, 1024, 1024, layers, 10, tile, ["conv4_2"]) <= whole - 1
    with pytest.raises(NstliteError, match=r"does not fit in the .* GiB available even by tiles .* use --size \d+ or"):
        scale_tile(net, 8192, 8192, layers, tile="auto", available=whole)
