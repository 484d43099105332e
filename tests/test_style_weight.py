"""--style-weight-scaling: beta scaled with the content layers' positions ("positions", the
default), that plus the look set at 256 px ("reference"), or eq. (7) exactly ("paper"); the
logged content and style stay the paper's sums."""
import numpy as np
import pytest
from PIL import Image

from nstlite.cli import main
from nstlite.errors import NstliteError
from nstlite import image as im
from nstlite.options import REFERENCE_SIZE, StylizeOptions, reference_scales
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
    assert style_weight_factor(net, opts(style_weight_scaling="reference"), (384, 512)) == pytest.approx(4.0)
    assert style_weight_factor(net, opts(content_weight=0), (384, 512)) == 1.0


def test_reference_scales_start_at_the_reference_size_and_double():
    assert reference_scales(512) == [256, 512]
    assert reference_scales(700) == [256, 512, 700]
    assert reference_scales(2048) == [256, 512, 1024, 2048]
    assert reference_scales(300) == [256, 300]
    assert reference_scales(256) == [256] and reference_scales(64) == [256]


def test_reference_scaling_sets_the_scales_and_the_result_size():
    o = opts(style_weight_scaling="reference", size=128)
    assert o.scales == [256] and o.result_size == 128
    o = opts(style_weight_scaling="reference", size=512)
    assert o.scales == [256, 512] and o.result_size is None
    assert opts(size=128).result_size is None and opts(size=128).scales == [128]
    with pytest.raises(NstliteError, match="sets the scales itself"):
        opts(style_weight_scaling="reference", scales="128,256")


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
    with pytest.raises(NstliteError, match="style weight scaling must be one of positions, reference, paper"):
        opts(style_weight_scaling="pixels")
    with pytest.raises(SystemExit):
        main(["stylize", "--content", str(images / "content.png"), "--style", str(images / "style.png"),
              "--output", str(images / "out.png"), "--style-weight-scaling", "pixels"])
    assert "invalid choice: 'pixels'" in capsys.readouterr().err


def test_a_reference_run_below_the_reference_size_is_the_reference_size_run_resized(net, images):
    common = dict(iterations=2, net=net, quiet=True, style_weight=1e3)
    small = stylize(images / "content.png", [images / "style.png"], size=24, style_weight_scaling="reference",
                    **common)
    at_reference = stylize(images / "content.png", [images / "style.png"], size=REFERENCE_SIZE, **common)
    assert small.x.shape == at_reference.x.shape == (3, 213, 256)  # optimised at 256 px

    def losses(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert losses(small.history) == losses(at_reference.history)
    expected = np.rint(im.resize(at_reference.image.astype(np.float32), 20, 24)).astype(np.uint8)
    assert small.image.shape == (20, 24, 3) and np.array_equal(small.image, expected)


def test_the_size_invariance_benchmark_scores_a_result_at_its_own_size_as_the_run_did(net, images):
    """benchmarks/size_invariance.py: at the run's own size its style loss is the run's final one
    (the artwork's Gram matrices rescaled to the result's positions, as the run's targets are)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from size_invariance import analyse, analysis_targets

    r = stylize(images / "content.png", [images / "style.png"], size=48, iterations=3, net=net, quiet=True,
                style_weight=1e3)
    photo, art = (im.load_image(images / n).rgb for n in ("content.png", "style.png"))
    targets = analysis_targets(net, photo, art, 48)
    style, per_layer, db = analyse(net, net.deprocess_float(r.x).astype(np.float32), targets)
    assert style == pytest.approx(r.final["style"], rel=5e-3)  # float32 maps, the run's fused Gram sums
    assert set(per_layer) == set(r.final["style_layers"]) and np.isfinite(db)
