"""Spatial control: region guides carried through the network, and guided Gram matrices."""
import numpy as np
import pytest

from nstlite import guides, losses
from nstlite.errors import NstliteError
from nstlite.gradient_check import check_directional
from nstlite.objective import Region, build_objective
from nstlite.vgg import VGG19
from nstlite.weights import random_params

LAYERS = {"conv1_1": 0.4, "conv2_1": 0.3, "conv3_1": 0.3}


def tiny_net(kernel="reference"):
    return VGG19(random_params(5, widths=(4, 5, 6, 6, 8), dtype=np.float64), None, dtype="float64",
                 kernel=kernel)


def test_guides_follow_the_pooling_and_erode(rng):
    net = tiny_net()
    mask = np.zeros((33, 36))
    mask[:, :18] = 1.0
    g = guides.guide_maps(net.layer_names, mask, ["conv1_2", "conv2_1", "conv3_1"])
    for name, guide in g.items():
        assert guide.shape == net.map_size(name, 33, 36)
    np.testing.assert_array_equal(g["conv1_2"], mask)
    assert g["conv2_1"][:, :9].min() == 1 and g["conv2_1"][:, 9:].max() == 0  # 18 is even: no mixed window
    eroded = guides.guide_maps(net.layer_names, mask, ["conv1_1", "conv1_2"], erode=True)
    assert eroded["conv1_1"][:, 16].min() == 1 and eroded["conv1_1"][:, 17].max() == 0  # one column per conv
    assert eroded["conv1_2"][:, 15].min() == 1 and eroded["conv1_2"][:, 16].max() == 0
    assert eroded["conv1_1"][0, :16].min() == 1  # the image border bounds no region


def test_masks_from_flat_colours():
    labels = np.zeros((4, 6, 3), np.uint8)
    labels[:2] = (255, 0, 0)
    masks = guides.masks_from_labels(labels)
    assert set(masks) == {"#000000", "#ff0000"}
    np.testing.assert_array_equal(masks["#ff0000"] + masks["#000000"], np.ones((4, 6)))
    noisy = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    with pytest.raises(NstliteError, match="the region map has 24 colours"):
        guides.masks_from_labels(noisy)


def test_one_region_covering_everything_is_the_plain_gram_loss(rng):
    net = tiny_net()
    photo, art = rng.standard_normal((3, 32, 36)) * 20, rng.standard_normal((3, 40, 30)) * 20
    x = rng.standard_normal(photo.shape) * 20
    plain = build_objective(net, photo, [art], ["conv4_2"], LAYERS, beta=1e3)(x)
    whole = Region(np.ones((32, 36)), [art], name="all")
    guided = build_objective(net, photo, [], ["conv4_2"], LAYERS, beta=1e3, regions=[whole])(x)
    assert float(guided[0]) == pytest.approx(float(plain[0]), rel=1e-12)
    np.testing.assert_allclose(guided[1], plain[1], rtol=1e-10, atol=1e-12 * np.abs(plain[1]).max())


@pytest.mark.parametrize("kernel", ["reference", "auto"])
def test_two_regions_objective_gradient_is_exact(rng, kernel):
    net = tiny_net(kernel)
    photo = rng.standard_normal((3, 32, 36)) * 20
    sky = np.zeros((32, 36))
    sky[:14] = 1.0
    regions = [Region(sky, [rng.standard_normal((3, 36, 36)) * 20], name="sky"),
               Region(1 - sky, [rng.standard_normal((3, 32, 40)) * 20, rng.standard_normal((3, 32, 32)) * 20],
                      blend_weights=[2, 1], name="town")]
    obj = build_objective(net, photo, [], ["conv4_2"], LAYERS, beta=1e3, regions=regions, erode=True)
    assert {t.region for _, t, *_ in obj.terms if isinstance(t, losses.GuidedGramLoss)} == {"sky", "town"}
    for _ in range(10):
        check = check_directional("regions", lambda z: obj(z)[:2], net.activation_pattern,
                                  rng.standard_normal(photo.shape) * 20, rng)
        if check is not None:
            break
    assert check is not None and check.error < 1e-6, check


@pytest.mark.parametrize("region, kwargs, message", [
    (Region(np.ones((10, 10)), [None], name="sky"), {}, "sky: its map is 10x10 but the image is 36x32"),
    (Region(np.ones((32, 36)), [], name="sky"), {}, "sky: no style image given"),
    (Region(np.pad(np.ones((2, 2)), ((0, 30), (0, 34))), ["art"], name="tiny"), {}, "region 'tiny' covers no position"),
    (Region(np.ones((32, 36)), ["art"]), {"style_loss": "histogram"}, "works with the gram style loss only"),
])
def test_bad_regions_are_one_line_errors(rng, region, kwargs, message):
    art = rng.standard_normal((3, 32, 32))
    region.style_xs = [art if s is not None else None for s in region.style_xs]
    with pytest.raises(NstliteError, match=message):
        build_objective(tiny_net(), rng.standard_normal((3, 32, 36)), [], [], {"conv3_1": 1.0}, regions=[region],
                        erode=True, **kwargs)
