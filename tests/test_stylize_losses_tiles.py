"""``stylize`` with the style losses beyond the paper and with the exact tiled evaluation."""
import numpy as np
import pytest
from PIL import Image

from nstlite.cli import main
from nstlite.errors import NstliteError
from nstlite.style_transfer import stylize
from nstlite.vgg import VGG19
from nstlite.weights import random_params, write_weights

WIDTHS = (4, 4, 6, 6, 8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("losses_tiles")
    write_weights(d / "tiny.h5", random_params(0, widths=WIDTHS), "BGR", 255, (103.939, 116.779, 123.68),
                  (1, 1, 1), "test")
    y, x = np.mgrid[0:96, 0:112]
    Image.fromarray(np.stack([x * 2, y * 2, x + y], axis=2).astype(np.uint8)).save(d / "content.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / "style.png")
    return d


def run(files, **kw):
    opts = dict(size=112, iterations=4, net=VGG19(random_params(0, widths=WIDTHS)), quiet=True)
    opts.update(kw)
    return stylize(files / "content.png", [files / "style.png"], **opts)


@pytest.mark.parametrize("style_loss", ["mean_std", "gaussian_w2", "histogram", "sliced_wasserstein",
                                        "gram:1,histogram:0.5"])
def test_every_style_loss_runs_and_the_loss_falls(files, style_loss):
    result = run(files, style_loss=style_loss, sw_directions=3)
    totals = [h["total"] for h in result.history]
    assert np.isfinite(totals).all() and min(totals) < totals[0]


def test_tiled_run_evaluates_the_same_objective(files):
    """The first evaluation (the same start) agrees to float32 rounding; the runs stay close."""
    whole, tiled = run(files, iterations=3), run(files, iterations=3, tile=32)
    first, first_tiled = whole.history[0], tiled.history[0]
    for key in ("total", "content", "style"):
        assert first_tiled[key] == pytest.approx(first[key], rel=1e-5)
    assert tiled.final["total"] == pytest.approx(whole.final["total"], rel=1e-2)


def test_tile_crops_evaluate_the_same_objective(files):
    whole, cropped = run(files, iterations=2), run(files, iterations=2, tile=32, tile_crops=True)
    for key in ("total", "content", "style"):
        assert cropped.history[0][key] == pytest.approx(whole.history[0][key], rel=1e-5)


def test_auto_tiles_only_when_needed(files):
    assert run(files, iterations=1, tile="auto").history[0]["total"] == pytest.approx(
        run(files, iterations=1).history[0]["total"], rel=1e-6)


@pytest.mark.parametrize("kw, message", [
    ({"style_loss": "nope"}, "unknown style loss 'nope'"),
    ({"sw_directions": 0}, "sw directions must be >= 1"),
    ({"tile": "big"}, "tile must be a number of pixels or auto"),
    ({"tile": 40}, "the tile size must be a positive multiple of 16"),
    ({"tile": 32, "style_loss": "histogram"}, "needs the whole image"),
])
def test_bad_options_are_one_line_errors(files, kw, message):
    with pytest.raises(NstliteError, match=message):
        run(files, **kw)


def test_cli_style_loss_and_tile(files, tmp_path, capsys):
    out = tmp_path / "out.png"
    rc = main(["stylize", "--content", str(files / "content.png"), "--style", str(files / "style.png"),
               "--weights", str(files / "tiny.h5"), "--size", "112", "--iterations", "2", "--output", str(out),
               "--style-loss", "gram:1,mean_std:1", "--tile", "48"])
    assert rc == 0 and Image.open(out).size == (112, 96)
    rc = main(["stylize", "--content", str(files / "content.png"), "--style", str(files / "style.png"),
               "--weights", str(files / "tiny.h5"), "--output", str(tmp_path / "x.png"), "--style-loss", "grm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("nstlite: error: unknown style loss 'grm'")


# ----------------------------------------------------------------------------- spatial control
@pytest.fixture(scope="module")
def region_map(files):
    labels = np.zeros((96, 112, 3), np.uint8)
    labels[:40] = (0x87, 0xCE, 0xEB)  # sky
    labels[40:] = (0x80, 0x80, 0x80)  # town
    Image.fromarray(labels).save(files / "regions.png")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(files / "style2.png")
    return files / "regions.png"


def test_two_regions_two_styles_end_to_end(files, region_map, tmp_path):
    out = tmp_path / "regions.png"
    rc = main(["stylize", "--content", str(files / "content.png"), "--weights", str(files / "tiny.h5"),
               "--size", "112", "--iterations", "3", "--output", str(out), "--region-map", str(region_map),
               "--style-region", f"#87CEEB={files / 'style.png'}", "--style-region", f"808080={files / 'style2.png'}",
               "--erode-regions", "--style-layers", "conv1_1,conv2_1,conv3_1", "--quiet"])
    assert rc == 0 and Image.open(out).size == (112, 96)


@pytest.mark.parametrize("kw, message", [
    ({"region_styles": {"#87ceeb": "style.png"}}, "without a style: give each --style-region"),
    ({"region_styles": {"#87ceeb": "style.png", "#808080": "style.png", "#ff0000": "style.png"}},
     "no pixel of the region map at 112x96 has colour"),
    ({"region_styles": {"sky": "style.png"}}, "a region is named by its colour"),
    ({"region_styles": ["#87ceeb"]}, "write a region style as COLOUR=IMAGE"),
    ({"region_styles": None}, "needs both a region map and the styles"),
])
def test_bad_regions_are_one_line_errors(files, region_map, kw, message):
    styles = {k: [files / v] for k, v in kw["region_styles"].items()} if isinstance(kw["region_styles"], dict) \
        else kw["region_styles"]
    with pytest.raises(NstliteError, match=message):
        stylize(files / "content.png", [], region_map=region_map, region_styles=styles, size=112, iterations=1,
                net=VGG19(random_params(0, widths=WIDTHS)), quiet=True)


def test_a_region_map_of_another_size_is_refused(files, region_map, tmp_path):
    small = tmp_path / "small.png"
    Image.open(region_map).resize((50, 40)).save(small)
    with pytest.raises(NstliteError, match="the region map is 50x40 but the content image is 112x96"):
        stylize(files / "content.png", [], region_map=small, region_styles={"#87ceeb": files / "style.png"},
                net=VGG19(random_params(0, widths=WIDTHS)), quiet=True)


# ----------------------------------------------------------------------------- coarse to fine
def test_auto_scales_double_up_to_the_size():
    from nstlite.options import auto_scales

    assert auto_scales(2048) == [256, 512, 1024, 2048]
    assert auto_scales(700) == [350, 700]
    assert auto_scales(511) == [511] and auto_scales(512) == [256, 512]


def test_iterations_per_scale(files):
    result = run(files, scales="56,112", iterations="3,1")
    assert {h.get("scale") for h in result.history} == {56, 112}
    assert max(h["iteration"] for h in result.history if h["scale"] == 56) <= 3
    with pytest.raises(NstliteError, match="3 iteration counts for 2 scales"):
        run(files, scales="56,112", iterations="3,2,1")
