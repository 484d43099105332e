"""The figure commands: grids, labels, the JSON/CSV numbers, one-line errors; and, with the real
weights, the paper's measurable claims at a small size. (On Dask: tests/test_figures_dask.py.)"""
import csv
import json
import math
import os
import sys

import numpy as np
import pytest
from PIL import Image

from nstlite import figures as F
from nstlite import weights as W
from nstlite.cli import main

from conftest import real_weights_path, requires_weights

SHARED_IMAGES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "images")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny weights file and three small images made here."""
    d = tmp_path_factory.mktemp("figs")
    weights = str(d / "tiny.h5")
    W.write_weights(weights, W.random_params(0, widths=(4, 5, 6, 6, 8)), "BGR", 255,
                    (103.939, 116.779, 123.68), (1, 1, 1), "test")
    yy, xx = np.mgrid[0:36, 0:48]
    photo = np.stack([xx * 5, yy * 7, (xx + yy) * 3], -1).astype(np.uint8)
    rng = np.random.default_rng(0)
    paths = {"weights": weights, "photo": str(d / "photo.png"), "art": str(d / "art.png"),
             "art2": str(d / "art2.jpg"), "dir": d}
    Image.fromarray(photo).save(paths["photo"])
    Image.fromarray(rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)).save(paths["art"])
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(paths["art2"])
    return paths


def run_cli(inputs, figure, output, *extra, size=40, iterations=4, styles=("art",), engine=("--serial",)):
    """A figure command on the tiny weights; its panels in this process unless ``engine`` says otherwise."""
    argv = [f"figure{figure}", "--content", inputs["photo"]]
    for s in styles:
        argv += ["--style", inputs[s]]
    argv += ["--output", str(output), "--size", str(size), "--iterations", str(iterations),
             "--weights", inputs["weights"], "--quiet", *engine, *extra]
    return main(argv)


def dark_pixels(grid, box):
    x0, y0, x1, y1 = box
    region = np.asarray(grid[y0:y1, x0:x1], dtype=np.int32)
    return int((region.sum(axis=2) < 3 * 128).sum())


# --------------------------------------------------------------------------- measures
def test_psnr_and_relative_error_by_hand():
    a = np.full((4, 5, 3), 100, np.uint8)
    b = a + 1
    assert F.psnr(a, b) == pytest.approx(10 * math.log10(255.0 ** 2 / 1.0))  # MSE 1: 48.13 dB
    assert F.psnr(a, a) == math.inf
    assert F.relative_error(b, a) == pytest.approx(0.01)
    with pytest.raises(F.NstliteError):
        F.psnr(a, a[:2])


def test_layout_correlation_sees_layout_not_texture():
    yy, xx = np.mgrid[0:64, 0:64]
    ramp = np.repeat((xx * 4)[..., None], 3, axis=2).astype(np.uint8)
    assert F.layout_correlation(ramp, ramp) == pytest.approx(1.0)
    assert F.layout_correlation(ramp, ramp[:, ::-1]) == pytest.approx(-1.0)
    noise = np.random.default_rng(1).integers(0, 256, ramp.shape).astype(np.uint8)
    assert abs(F.layout_correlation(ramp, noise)) < 0.3
    assert F.mean_colour_error(ramp, ramp) == 0.0


def test_render_grid_places_images_and_labels():
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 255
    tall = np.zeros((26, 10, 3), np.uint8)
    cells = {(0, 0): (red, "a conv1_1"), (0, 1): (tall, "b"), (1, 1): (red, "c conv1_1\u2026conv5_1")}
    grid, boxes = F.render_grid(cells, title="title", row_labels=["one", "two"], col_labels=["x", "y"])
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    assert set(boxes) == set(cells)
    for key, (img, _) in cells.items():
        x0, y0, x1, y1 = boxes[key]["image"]
        np.testing.assert_array_equal(grid[y0:y1, x0:x1], img)  # the panel itself, unscaled
        assert dark_pixels(grid, boxes[key]["caption"]) > 5  # its caption was drawn
    # the cell is as large as the largest image: both columns are at least 30 px apart
    assert boxes[(1, 1)]["image"][0] - boxes[(0, 0)]["image"][0] >= 30
    # rows are stacked: the second row starts below the first row's caption
    assert boxes[(1, 1)]["image"][1] >= boxes[(0, 0)]["caption"][3]
    # row labels sit left of the first column, the title above everything
    assert dark_pixels(grid, [0, boxes[(0, 0)]["image"][1], boxes[(0, 0)]["image"][0], boxes[(0, 0)]["image"][3]]) > 5
    assert dark_pixels(grid, [0, 0, grid.shape[1], 8]) > 3


# --------------------------------------------------------------------------- the commands
def test_figure1_grid_json_csv(inputs, tmp_path):
    out = tmp_path / "fig1.png"
    assert run_cli(inputs, 1, out) == 0
    grid = np.asarray(Image.open(out).convert("RGB"))
    doc = json.loads((tmp_path / "fig1.json").read_text())
    assert doc["figure"] == 1 and doc["settings"]["size"] == 40 and doc["settings"]["iterations"] == 4
    assert doc["command"].startswith("nstlite figure1 --content ")
    # where the weights came from: the weights file's own "source" attribute
    assert doc["settings"]["weights"] == inputs["weights"] and doc["settings"]["weights_source"] == "test"
    keys = [p["panel"] for p in doc["panels"]]
    assert keys == [f"content_{n}" for n in F.PAPER_LAYERS] + [f"style_{n}" for n in F.PAPER_LAYERS]
    for p, subset in zip(doc["panels"][5:], F.STYLE_LAYER_SETS):
        assert p["kind"] == "style" and p["style_layers"] == list(subset) and p["content_weight"] == 0
        assert set(p["style_errors"]) == set(subset)
        assert set(p["style_error_all_layers"]) == set(F.PAPER_LAYERS)
        assert 0 <= p["mean_colour_error"] < 255 and -1 <= p["layout_correlation"] <= 1
    for p in doc["panels"][:5]:
        assert p["kind"] == "content" and p["style_layers"] == [] and p["iterations"] >= 1
        assert 0 < p["psnr"] < 100 and p["content_loss"] >= 0 and p["feature_rel_error"] >= 0
    assert list(doc["checks"]["content_psnr_db"]) == list(F.PAPER_LAYERS)
    # photo and artwork first (40 px longest side), then 5 panels per row: 2 rows x 6 columns of >= 40 px
    assert grid.shape[0] >= 2 * 30 and grid.shape[1] >= 6 * 40
    for p in doc["panels"]:
        x0, y0, x1, y1 = p["box"]
        assert max(x1 - x0, y1 - y0) == 40 and x1 <= grid.shape[1] and y1 <= grid.shape[0]
        # below each panel: its caption (dark text on white)
        assert dark_pixels(grid, [x0, y1, x1, min(grid.shape[0], y1 + 14)]) > 5
    with open(tmp_path / "fig1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["panel"] for r in rows] == keys
    assert float(rows[0]["psnr"]) == pytest.approx(doc["panels"][0]["psnr"], rel=1e-5)
    assert rows[9]["E_conv5_1"] != "" and rows[0]["E_conv1_1"] == ""


def test_figure2_two_styles_with_one_ratio_each(inputs, tmp_path):
    out = tmp_path / "fig2.png"
    assert run_cli(inputs, 2, out, "--ratio", "1e-3,1e-4", styles=("art", "art2")) == 0
    doc = json.loads((tmp_path / "fig2.json").read_text())
    assert [p["caption"] for p in doc["panels"]] == ["B art", "C art2"]
    assert [p["ratio"] for p in doc["panels"]] == [1e-3, 1e-4]
    assert all(p["content_layers"] == ["conv4_2"] and len(p["style_layers"]) == 5 for p in doc["panels"])
    assert [p["style_weight"] for p in doc["panels"]] == pytest.approx([1e3, 1e4])
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape[1] >= 3 * 40


def test_figures_use_the_papers_objective_and_noise_unless_told(inputs, tmp_path):
    paper, scaled = tmp_path / "paper.png", tmp_path / "scaled.png"
    assert run_cli(inputs, 2, paper) == 0
    assert run_cli(inputs, 2, scaled, "--style-weight-scaling", "positions") == 0
    doc_paper = json.loads((tmp_path / "paper.json").read_text())
    doc_scaled = json.loads((tmp_path / "scaled.json").read_text())
    assert doc_paper["settings"]["style_weight_scaling"] == "paper" and doc_paper["settings"]["init"] == "noise"
    assert "--style-weight-scaling" not in doc_paper["command"]
    assert doc_scaled["settings"]["style_weight_scaling"] == "positions"
    assert "--style-weight-scaling positions" in doc_scaled["command"]
    # at 40 px the scaled beta is far below the paper's: the result keeps more of the photo
    assert doc_scaled["panels"][0]["psnr"] > doc_paper["panels"][0]["psnr"]


# --------------------------------------------------------------------------- errors
def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("nstlite: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_existing_output_is_kept(inputs, tmp_path, capsys):
    out = tmp_path / "fig.png"
    out.write_bytes(b"precious")
    assert run_cli(inputs, 1, out) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert out.read_bytes() == b"precious" and not (tmp_path / "fig.json").exists()


@pytest.mark.parametrize("figure,extra,styles,needle", [
    (1, [], ("art", "art2"), "exactly one style"),
    (3, ["--ratios", "1e-3,x"], ("art",), "--ratios"),
    (3, ["--ratios", "-1"], ("art",), "positive"),
    (1, ["--layers", "conv9_9"], ("art",), "conv9_9"),
    (2, ["--ratio", "1,2,3"], ("art", "art2"), "3 ratios for 2 styles"),
    (1, ["--jobs", "0"], ("art",), "--jobs"),
    (1, ["--workers", "2", "--jobs", "3"], ("art",), "only --workers"),
])
def test_bad_input_is_one_line(inputs, tmp_path, capsys, figure, extra, styles, needle):
    assert run_cli(inputs, figure, tmp_path / "f.png", *extra, styles=styles) == 2
    assert needle in _one_line_error(capsys)
    assert not os.listdir(tmp_path)


def test_missing_inputs_and_bad_outputs(inputs, tmp_path, capsys):
    assert main(["figure1", "--content", str(tmp_path / "nope.jpg"), "--style", inputs["art"],
                 "--output", str(tmp_path / "f.png"), "--weights", inputs["weights"], "-q"]) == 2
    assert "nope.jpg" in _one_line_error(capsys)
    assert run_cli(inputs, 1, tmp_path / "f.unknown") == 2
    _one_line_error(capsys)
    assert main(["figure1", "--content", inputs["photo"], "--style", inputs["art"], "--output",
                 str(tmp_path / "f.png"), "--weights", str(tmp_path / "none.h5"), "-q"]) == 2
    assert "weights" in _one_line_error(capsys)
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------- the engine
def test_without_distributed_only_serial_runs(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert run_cli(inputs, 3, tmp_path / "f.png", "--ratios", "1e-3,1e-1", engine=()) == 2
    assert "pip install nstlite[distributed]" in _one_line_error(capsys)
    assert not os.listdir(tmp_path)
    assert run_cli(inputs, 3, tmp_path / "f.png", "--ratios", "1e-3,1e-1", iterations=2) == 0  # --serial
    assert run_cli(inputs, 2, tmp_path / "one.png", iterations=2, engine=()) == 0  # one panel: here
    assert json.loads((tmp_path / "one.json").read_text())["engine"]["kind"] == "serial"


def test_jobs_is_a_deprecated_alias_of_workers(inputs, tmp_path, capsys):
    argv = ["figure3", "--content", inputs["photo"], "--style", inputs["art"], "--output", str(tmp_path / "f.png"),
            "--size", "24", "--iterations", "1", "--weights", inputs["weights"], "--ratios", "1e-3",
            "--layers", "conv1_1", "--serial", "-j", "2"]
    assert main(argv) == 0
    assert "--jobs is deprecated, use --workers 2" in capsys.readouterr().err
    assert json.loads((tmp_path / "f.json").read_text())["command"].endswith("--serial --workers 2")


class DyingEngine:
    """An engine whose workers die on the second panel (as Dask reports it after its retries)."""

    description, blas_threads, retries = "dying", 1, 2

    def __init__(self):
        self.cancelled = False

    def map(self, fn, calls, name):
        class KilledWorker(Exception):
            pass

        for i, args in enumerate(calls):
            yield args, (fn(*args) if i == 0 else KilledWorker(f"attempts to run {name(args)} died"))

    def cancel(self):
        self.cancelled = True


def test_a_panel_whose_workers_die_is_one_line(inputs):
    settings = F.Settings(size=24, iterations=1, weights=inputs["weights"])
    images = F.load_inputs(inputs["photo"], [inputs["art"]], settings.size)
    panels = F.figure3_panels(ratios=(1e-3,), layer_sets=(("conv1_1",), F.PAPER_LAYERS))
    engine, done = DyingEngine(), []
    with pytest.raises(F.NstliteError) as e:
        F.run_panels(panels, images, settings, engine=engine, progress=lambda *a: done.append(a[2].key))
    message = str(e.value)
    assert message.startswith("panel A1 failed: the workers running it kept dying (3 times or more")
    assert "--workers" in message and "\n" not in message
    assert done == ["B1"] and engine.cancelled  # the deeper panel went first; the rest was cancelled


# --------------------------------------------------------------------------- the paper's claims
@pytest.mark.weights
@requires_weights
def test_paper_claims_with_real_weights(tmp_path):
    """Figure 1: content reconstructions exact in the coarse picture up to conv3_1, PSNR falling
    with depth. Figure 3: the content loss falls as alpha/beta grows. Small sizes to stay quick."""
    tubingen = os.path.join(SHARED_IMAGES, "tubingen.jpg")
    starry = os.path.join(SHARED_IMAGES, "starry_night.jpg")
    if not (os.path.exists(tubingen) and os.path.exists(starry)):
        pytest.skip("../shared/images not present")
    settings = F.Settings(size=64, iterations=60, weights=real_weights_path())
    images = F.load_inputs(tubingen, [starry], settings.size)
    panels = [p for p in F.figure1_panels() if isinstance(p, F.Panel) and p.kind == "content"]
    results = F.run_panels(panels, images, settings)
    ps = [results[p.key]["numbers"]["psnr"] for p in panels]
    coarse = [results[p.key]["numbers"]["psnr_coarse"] for p in panels]
    # Pixel PSNR falls with depth; the coarse picture is near-perfect up to conv3_1 (the leftover
    # white noise of the start is fine detail those layers barely see) and much worse at conv5_1.
    assert all(a > b for a, b in zip(ps, ps[1:])), ps
    assert ps[0] > 22, ps
    assert min(coarse[:3]) > 26, coarse
    assert coarse[4] < coarse[2] - 8, coarse
    print("PSNR", [round(p, 1) for p in ps], "coarse", [round(c, 1) for c in coarse])

    # Figure 3, row A (style conv1_1, content conv4_2): a larger alpha/beta keeps more of the photo.
    row = F.figure3_panels(ratios=(1e-4, 1e-1), layer_sets=(("conv1_1",),))
    results = F.run_panels(row, images, F.Settings(size=64, iterations=20, weights=real_weights_path()))
    losses = [results[p.key]["numbers"]["content_loss"] for p in row]
    assert losses[0] > 1.2 * losses[1], losses
