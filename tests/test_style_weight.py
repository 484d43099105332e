"""--style-weight-scaling: beta scaled with the content layers' positions ("positions", the
default) or eq. (7) exactly ("paper"); the logged content and style stay the paper's sums."""
import numpy as np
import pytest
from PIL import Image

from nstlite.cli import main
from nstlite.errors import NstliteError
from nstlite.options import REFERENCE_SIZE, StylizeOptions
from nstlite.problem import style_weight_factor
from nstlite.style_transfer import stylize
from nstlite.vgg import VGG19
from nstlite.weights import random_params

WIDTHS = (4, 4, 6, 6, 8)


@pytest.fixture(scope="module")
def net():
    return VGG19(random_params(0, widths=WIDTHS))


def opts(**kw):
    return StylizeOptions(**kw).validated(1)


def test_factor_is_the_content_positions_relative_to_the_reference_size(net):
    assert REFERENCE_SIZE == 256
    assert style_weight_factor(net, opts(), (192, 256)) == 1.0  # the paper's objective at 256 px
    # conv4_2 at 512 x 384: 64 x 48 positions; at 256 x 192: 32 x 24
    assert style_weight_factor(net, opts(), (384, 512)) == pytest.approx(4.0)
    assert style_weight_factor(net, opts(), (96, 128)) == pytest.approx(1 / 4)
    two = opts(content_layers="conv2_2,conv4_2")
    assert style_weight_factor(net, two, (96, 128)) == pytest.approx((48 * 64 + 12 * 16) / (96 * 128 + 24 * 32))
    assert style_weight_factor(net, opts(style_weight_scaling="paper"), (384, 512)) == 1.0
    assert style_weight_factor(net, opts(content_weight=0), (384, 512)) == 1.0


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("sw")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "content.png")
    Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(d / "style.png")
    return d


@pytest.mark.parametrize("scaling", ["positions", "paper"])
def test_the_log_keeps_the_papers_terms_and_the_total_uses_the_scaled_beta(net, images, scaling):
    r = stylize(images / "content.png", [images / "style.png"], size=48, iterations=1, net=net, quiet=True,
                style_weight=1e3, style_weight_scaling=scaling)
    paper = stylize(images / "content.png", [images / "style.png"], size=48, iterations=1, net=net, quiet=True,
                    style_weight=1e3, style_weight_scaling="paper")
    h, p = r.history[0], paper.history[0]
    assert h["content"] == p["content"] and h["style"] == p["style"]  # the paper's normalisation
    beta = 1e3 * style_weight_factor(net, opts(style_weight_scaling=scaling), (40, 48))
    assert h["total"] == pytest.approx(h["content"] + beta * h["style"], rel=1e-5)
    assert (h["total"] == p["total"]) == (scaling == "paper")


def test_bad_scaling_is_one_line(capsys, images):
    with pytest.raises(NstliteError, match="style weight scaling must be one of positions, paper"):
        opts(style_weight_scaling="pixels")
    with pytest.raises(SystemExit):
        main(["stylize", "--content", str(images / "content.png"), "--style", str(images / "style.png"),
              "--output", str(images / "out.png"), "--style-weight-scaling", "pixels"])
    assert "invalid choice: 'pixels'" in capsys.readouterr().err
