"""What a run shows and leaves behind: progress bar or lines, the ETA, the log's header and
marks, checkpoints that know their run, JPEG quality, loss curves and the preview."""
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from nstlite.checkpoint import load_checkpoint
from nstlite import image as im
from nstlite.cli import main
from nstlite.errors import NstliteError
from nstlite.options import StylizeOptions
from nstlite.plot import loss_curve_image, read_log, save_loss_curve
from nstlite.reporter import EtaClock, Reporter, format_rate
from nstlite.style_transfer import stylize
from nstlite.vgg import VGG19
from nstlite.weights import random_params, write_weights

WIDTHS = (4, 4, 6, 6, 8)


@pytest.fixture(scope="module")
def net():
    return VGG19(random_params(0, widths=WIDTHS))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("reporter")
    write_weights(d / "tiny.h5", random_params(0, widths=WIDTHS), "BGR", 255, (103.939, 116.779, 123.68),
                  (1, 1, 1), "test")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:48]
    Image.fromarray(np.stack([x * 5, y * 6, (x + y) * 3], axis=2).astype(np.uint8)).save(d / "content.png")
    Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(d / "style.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(d / "other.png")
    return d


class Terminal(io.StringIO):
    def isatty(self):
        return True


def fake_problem():
    from types import SimpleNamespace

    return SimpleNamespace(shape=(3, 4, 5), index=0, size=5, style_count=1, objective=None,
                           image=lambda x: np.full((4, 5, 3), 7, np.uint8))


def drive(stream, iterations=6, tv_weight=0.0, **keywords):
    """Feed a reporter one evaluation per iteration, as L-BFGS-B would."""
    opts = StylizeOptions.from_keywords(dict(stream=stream, iterations=iterations, print_every=2,
                                             tv_weight=tv_weight, **keywords)).validated(n_styles=1)
    with Reporter(opts, started=0.0) as reporter:
        reporter.begin_scale(fake_problem(), 0, iterations)
        for it in range(1, iterations + 1):
            reporter.on_evaluation(it - 1, it, 1.0 / it, {"total": 1.0 / it, "content": 0.5, "style": 0.25,
                                                          "tv": 0.125})
            reporter.on_iteration(it, it, np.zeros(60))
        reporter.end_scale(iterations)
        reporter.say("after the bar")
    return reporter, stream.getvalue()


def test_a_terminal_gets_one_bar_line_redrawn_in_place():
    _, text = drive(Terminal())
    first, bar, after = text.split("\n")[:3]
    assert first.startswith("stylizing 5x4")
    redraws = bar.split("\r")[1:]
    assert len(redraws) >= 2 and all(r.lstrip().startswith("[") for r in redraws)
    assert redraws[-1].startswith("[" + "#" * 24 + "] 6/6") and "ETA" in redraws[-1]
    assert [format_rate(r) for r in (2.5, 0.25)] == ["2.50 it/s", "4.0 s/it"]
    assert after == "after the bar"  # a message after the bar starts on its own line


def test_a_pipe_gets_compact_lines_with_only_the_terms_that_are_on():
    _, text = drive(io.StringIO())
    lines = text.splitlines()[1:-1]
    assert [line.split()[1] for line in lines] == ["1/6", "2/6", "4/6", "6/6"]
    assert "\r" not in text and all(len(line) < 100 for line in lines)
    assert not any(" tv" in line for line in text.splitlines())
    _, with_tv = drive(io.StringIO(), tv_weight=1.0)
    assert " tv=1" in with_tv.splitlines()[0] and "tv 1.250e-01" in with_tv.splitlines()[1]


def test_eta_leaves_out_the_warm_up_and_the_first_line_search():
    # the first evaluation takes 10 s (warm-up), every other one 1 s; iteration 1 takes 4 evaluations
    clock = EtaClock(started=0.0)
    t = 10.0
    for _ in range(4):
        clock.evaluation_done(t)
        t += 1.0
    clock.iteration_done()
    elapsed = t - 1.0
    # 9 iterations left at about one evaluation of 1 s each; the plain rate would say 9 * 13 s
    assert clock.eta(done=1, left=9, elapsed=elapsed) == pytest.approx(9.0)
    for _ in range(3):  # iteration 2 needed 3 evaluations: the ratio moves off 1
        clock.evaluation_done(t)
        t += 1.0
    clock.iteration_done()
    assert clock.eta(done=2, left=8, elapsed=t - 1.0) == pytest.approx(8 * (3 + 2) / (1 + 2))


def test_the_log_starts_with_a_header_and_marks_accepted_iterates(files, net, tmp_path):
    log = tmp_path / "run.jsonl"
    r = stylize(files / "content.png", [files / "style.png"], net=net, size=48, iterations=6, quiet=True, log=log)
    header, *rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert header["kind"] == "header" and header["format"] == "nstlite-log"
    content = header["inputs"]["content"]
    assert content["sha256"] == hashlib.sha256((files / "content.png").read_bytes()).hexdigest()
    assert content["bytes"] == (files / "content.png").stat().st_size
    assert header["options"]["iterations"] == 6 and header["options"]["style_layers"]["conv1_1"] == 0.2
    assert {"numpy", "scipy", "python", "platform"} <= set(header["machine"]) and header["nstlite"]
    assert rows == r.history and rows[0]["kind"] == "start" and rows[0]["iteration"] == 0
    assert [row["iteration"] for row in rows if row["kind"] == "accepted"] == list(range(1, 7))
    assert {row["kind"] for row in rows} <= {"start", "trial", "accepted"}
    # every trial belongs to the iteration its accepted iterate closes
    for row in rows[1:]:
        assert row["iteration"] >= 1


def test_checkpoints_know_their_run_and_resume_refuses_another(files, net, tmp_path):
    out = tmp_path / "o.png"
    stylize(files / "content.png", [files / "style.png"], net=net, size=48, iterations=4, save_every=2, quiet=True,
            output=out)
    checkpoint = tmp_path / "o_2.npz"
    fingerprint = load_checkpoint(checkpoint).fingerprint  # what the run was made of
    assert fingerprint["options"]["style_weight"] and fingerprint["inputs"]
    ok = stylize(files / "content.png", [files / "style.png"], net=net, size=48, iterations=4, quiet=True,
                 resume=checkpoint)
    assert ok.iterations == 2
    cases = {"belongs to another run": dict(styles=[files / "other.png"]),
             "style_weight (10000.0 then, 5.0 now)": dict(style_weight=5.0),
             "is at iteration 2: ask for more": dict(iterations=1)}
    for words, change in cases.items():
        keywords = dict(styles=[files / "style.png"], net=net, size=48, iterations=4, quiet=True, resume=checkpoint)
        keywords.update(change)
        with pytest.raises(NstliteError) as e:
            stylize(files / "content.png", **keywords)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_jpeg_is_written_at_high_quality_without_chroma_subsampling(tmp_path):
    rng = np.random.default_rng(0)
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2, 0] = 255  # one-pixel red/blue stripes: what 4:2:0 subsampling smears
    stripes[:, 1::2, 2] = 255
    im.save_image(tmp_path / "a.jpg", stripes)
    saved = Image.open(tmp_path / "a.jpg")
    assert JpegImagePlugin.get_sampling(saved) == 0  # 4:4:4
    assert np.abs(np.asarray(saved, np.float64) - stripes).mean() < 12
    noise = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    im.save_image(tmp_path / "q95.jpg", noise)
    im.save_image(tmp_path / "q40.jpg", noise, jpeg_quality=40)
    assert (tmp_path / "q40.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size
    im.save_image(tmp_path / "a.png", noise, jpeg_quality=1)  # PNG stays lossless
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), noise)
    with pytest.raises(NstliteError, match="jpeg quality must be 1..100"):
        StylizeOptions(jpeg_quality=0).validated(1)


def test_loss_curves_leave_out_line_search_trials(tmp_path):
    rows = [{"iteration": 0, "kind": "start", "total": 1e6, "content": 10.0, "style": 1e2, "tv": 0.0}]
    for i in range(1, 8):
        rows.append({"iteration": i, "kind": "accepted", "total": 1e6 / 3 ** i, "content": 10.0 + i,
                     "style": 1e2 / 3 ** i, "tv": 0.0})
    spiked = rows[:3] + [{"iteration": 3, "kind": "trial", "total": 1.9e14, "content": 1.0, "style": 1e10}] + rows[3:]
    np.testing.assert_array_equal(np.asarray(loss_curve_image(spiked)), np.asarray(loss_curve_image(rows)))
    path = save_loss_curve(rows, tmp_path / "c.png")
    picture = np.asarray(Image.open(path))
    assert picture.shape == (400, 720, 3)
    red = (picture[..., 0] > 180) & (picture[..., 1] < 80) & (picture[..., 2] < 80)  # the style curve
    assert red.sum() > 100


def test_cli_writes_curves_preview_and_plots_a_log(files, tmp_path, capsys):
    out, log, preview = tmp_path / "out.jpg", tmp_path / "run.jsonl", tmp_path / "preview.png"
    rc = main(["stylize", "--content", str(files / "content.png"), "--style", str(files / "style.png"),
               "--output", str(out), "--weights", str(files / "tiny.h5"), "--size", "48", "--iterations", "4",
               "--print-every", "2", "--log", str(log), "--preview", str(preview), "--jpeg-quality", "90"])
    assert rc == 0
    assert Image.open(tmp_path / "out_losses.png").size == (720, 400)
    assert Image.open(preview).size == (48, 40)
    assert "wrote loss curves to" in capsys.readouterr().err
    assert read_log(log)[0]["kind"] == "start"  # the header is not an evaluation
    assert main(["plot", str(log), "-o", str(tmp_path / "curves.png")]) == 0
    assert Image.open(tmp_path / "curves.png").size == (720, 400)
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert main(["plot", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "not an nstlite log" in err and len(err.strip().splitlines()) == 1
