"""Colour control (Gatys et al. 2017): YIQ conversions, luminance matching and recombination,
colour histogram matching."""
import numpy as np
import pytest

from nstlite import colors


@pytest.fixture
def rgb():
    return np.random.default_rng(3).uniform(0, 255, (9, 11, 3))


def test_yiq_round_trip_and_known_values(rgb):
    np.testing.assert_allclose(colors.yiq_to_rgb(colors.rgb_to_yiq(rgb)), rgb, atol=1e-9)
    white = colors.rgb_to_yiq(np.full((1, 1, 3), 255.0))[0, 0]
    np.testing.assert_allclose(white, [255.0, 0.0, 0.0], atol=1e-3)  # grey has no chrominance
    red = colors.rgb_to_yiq(np.array([[[255.0, 0.0, 0.0]]]))[0, 0]
    assert red[0] == pytest.approx(0.299 * 255) and red[1] > 0  # I is the orange-blue axis


def test_luminance_is_the_y_channel(rgb):
    np.testing.assert_allclose(colors.luminance(rgb), colors.rgb_to_yiq(rgb)[..., 0])
    assert colors.luminance(rgb).shape == rgb.shape[:2]


def test_grey_rgb_repeats_and_clips():
    y = np.array([[-5.0, 10.0], [128.0, 300.0]])
    g = colors.grey_rgb(y)
    assert g.shape == (2, 2, 3)
    np.testing.assert_array_equal(g[..., 0], [[0, 10], [128, 255]])
    np.testing.assert_array_equal(g[..., 0], g[..., 2])
    np.testing.assert_allclose(colors.luminance(g), g[..., 0])  # a grey pixel's luminance is its value


def test_match_luminance_takes_the_contents_mean_and_spread():
    rng = np.random.default_rng(0)
    style_y, content_y = rng.uniform(0, 60, (20, 20)), rng.uniform(100, 250, (15, 17))
    m = colors.match_luminance(style_y, content_y)
    assert m.mean() == pytest.approx(content_y.mean()) and m.std() == pytest.approx(content_y.std())
    # an affine map: the order of the style's values is kept
    np.testing.assert_array_equal(np.argsort(m.ravel()), np.argsort(style_y.ravel()))
    flat = colors.match_luminance(np.full((4, 4), 7.0), content_y)  # no spread: no division by zero
    assert np.all(np.isfinite(flat)) and flat.mean() == pytest.approx(content_y.mean())


def test_combine_luminance_keeps_the_photographs_chrominance(rgb):
    result = np.random.default_rng(5).uniform(60, 190, rgb.shape)
    content = np.clip(rgb, 60, 190)  # away from the clip, so the identity holds exactly
    out = colors.combine_luminance(result, content)
    inside = np.all((out > 0) & (out < 255), axis=2)
    np.testing.assert_allclose(colors.luminance(out)[inside], colors.luminance(result)[inside], atol=1e-9)
    np.testing.assert_allclose(colors.rgb_to_yiq(out)[..., 1:][inside], colors.rgb_to_yiq(content)[..., 1:][inside],
                               atol=1e-9)
    assert out.min() >= 0 and out.max() <= 255


def test_match_color_histogram_matches_mean_and_covariance():
    rng = np.random.default_rng(1)
    style = 120 + rng.normal(size=(40, 40, 3)) @ np.array([[20, 0, 0], [5, 8, 0], [0, 3, 4]])
    content = 128 + rng.normal(size=(30, 30, 3)) @ np.array([[6, 2, 1], [0, 15, 3], [1, 0, 10]])
    m = colors.match_color_histogram(style, content)
    assert m.shape == style.shape and m.min() > 0 and m.max() < 255  # no clipping in this case
    flat, ref = m.reshape(-1, 3), content.reshape(-1, 3)
    np.testing.assert_allclose(flat.mean(axis=0), ref.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(np.cov(flat, rowvar=False), np.cov(ref, rowvar=False), rtol=1e-3, atol=1e-2)
    # the map is x' = A x + b with A symmetric-root based: matching an image to itself changes nothing
    np.testing.assert_allclose(colors.match_color_histogram(content, content), content, atol=1e-3)


def test_methods():
    assert colors.METHODS == ("luminance", "histogram")
