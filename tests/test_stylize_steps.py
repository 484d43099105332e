"""The steps ``stylize`` is made of, each on its own: options and their one validation, the
checkpoint format, the reporter's lines, log, checkpoints and callback, the memory refusal,
and the stop reasons."""
import dataclasses
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from nstlite import memory
from nstlite.checkpoint import FORMAT, Checkpoint, checkpoint_stem, load_checkpoint, save_checkpoint
from nstlite.errors import NstliteError
from nstlite.optimize import Result, StopReason
from nstlite.options import StylizeOptions, parse_layers, parse_numbers
from nstlite.reporter import Reporter, format_duration
from nstlite.style_transfer import StylizeResult
from nstlite.vgg import VGG19
from nstlite.weights import random_params


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("keywords, needle", [
    ({"iterations": -1}, "iterations must be >= 0"),
    ({"content_weight": -1}, "content weight"),
    ({"style_weight": float("inf")}, "style weight"),
    ({"tv_weight": float("nan")}, "tv weight"),
    ({"original_colors": "sepia"}, "original colors"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"scales": "256,x"}, "scales must be numbers"),
    ({"scales": [0, 64]}, "sizes must be positive"),
    ({"style_scale": 0}, "style scale"),
    ({"style_blend_weights": [1, 2, 3]}, "3 style blend weights for 1 style images"),
    ({"style_blend_weights": ""}, "style blend weights is empty"),
    ({"save_every": 5}, "save_every needs checkpoint_prefix"),
    ({"init": "sideways"}, "init (one of content, noise, uniform, style or an image file) not found: sideways"),
    ({"style_layers": "conv1_1:x"}, "bad layer weight"),
    ({"style_layers": "conv1_1,conv1_1"}, "listed twice"),
    ({"content_weight": 0, "style_weight": 0}, "nothing to optimise"),
    ({"output": "result.unknownext"}, "cannot tell the image format"),
])
def test_each_bad_option_is_one_line(keywords, needle):
    with pytest.raises(NstliteError) as e:
        StylizeOptions.from_keywords(keywords).validated(n_styles=1)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_validated_options_are_in_normal_form(tmp_path):
    opts = StylizeOptions.from_keywords({"scales": "24, 48", "style_layers": "conv1_1:0.5,conv2_1",
                                         "style_blend_weights": "0.7,0.3", "save_every": 4,
                                         "output": tmp_path / "out.jpg"}).validated(n_styles=2)
    assert opts.scales == [24, 48] and opts.content_layers == ["conv4_2"]
    assert opts.style_layers == {"conv1_1": 0.5, "conv2_1": 0.5} and opts.style_blend_weights == [0.7, 0.3]
    assert opts.checkpoint_prefix == str(tmp_path / "out") and opts.checkpoint_ext == ".jpg"
    assert opts.loss_layers == ["conv4_2", "conv1_1", "conv2_1"]
    # alpha 0 drops the content layers; no style image drops the style layers
    assert StylizeOptions(content_weight=0).validated(1).content_layers == []
    only_content = StylizeOptions(size=64).validated(0)
    assert only_content.style_layers == {} and only_content.scales == [64]


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="sizee"):
        StylizeOptions.from_keywords({"sizee": 3})


def test_number_and_layer_lists():
    assert parse_numbers("1e-3, 1e-4", "--ratios") == [1e-3, 1e-4]
    assert parse_numbers([256, "512"], "scales", int) == [256, 512]
    with pytest.raises(NstliteError, match="--ratios is empty"):
        parse_numbers(" , ", "--ratios")
    assert parse_layers(None, ("conv4_2",)) == ["conv4_2"]
    assert parse_layers(" conv1_1, conv2_1 ,", known=("conv1_1", "conv2_1")) == ["conv1_1", "conv2_1"]
    with pytest.raises(NstliteError, match="conv9_9"):
        parse_layers("conv1_1,conv9_9", known=("conv1_1",))


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_exact(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 5, 7))  # float64: the exact optimiser state
    path = save_checkpoint(tmp_path / "c.npz", Checkpoint(x=x, iteration=12, evaluations=15, scale_index=1, size=7))
    back = load_checkpoint(path)
    np.testing.assert_array_equal(back.x, x)
    assert (back.iteration, back.evaluations, back.scale_index, back.size) == (12, 15, 1, 7)
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
    assert meta == {"format": FORMAT, "version": 2, "iteration": 12, "evaluations": 15, "scale_index": 1,
                    "size": 7, "height": 5, "width": 7}
    assert checkpoint_stem("out", 40, 512, multi_scale=False) == "out_40"
    assert checkpoint_stem("out", 40, 512, multi_scale=True) == "out_s512_40"


def test_what_is_not_a_checkpoint_is_one_line(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros((3, 2, 2)), meta=json.dumps({"format": "something else"}))
    (tmp_path / "text.npz").write_text("not a zip")
    cases = {tmp_path / "missing.npz": "checkpoint not found", tmp_path / "other.npz": "not an nstlite checkpoint",
             tmp_path / "text.npz": "not an nstlite checkpoint"}
    for path, needle in cases.items():
        with pytest.raises(NstliteError) as e:
            load_checkpoint(path)
        assert needle in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- the reporter
def fake_problem(index=0, size=5):
    """What the reporter reads of a scale's problem."""
    return SimpleNamespace(shape=(3, 4, 5), index=index, size=size, style_count=1, objective=None,
                           image=lambda x: np.full((4, 5, 3), 7, np.uint8))


def reporter_for(tmp_path, **keywords):
    keywords.setdefault("stream", io.StringIO())
    opts = StylizeOptions.from_keywords(keywords).validated(n_styles=1)
    return Reporter(opts, started=0.0), keywords["stream"]


def test_reporter_progress_lines_and_log(tmp_path):
    log = tmp_path / "run.jsonl"
    reporter, stream = reporter_for(tmp_path, iterations=4, print_every=2, log=log)
    with reporter:
        reporter.begin_scale(fake_problem(), 0, 4, estimate=3 * 2**30)
        for it in range(1, 5):
            reporter.on_evaluation(it - 1, it, 10.0 / it, {"total": 10.0 / it, "content": 1.0, "style": 2.0,
                                                          "tv": 0.0, "style_layers": {}})
            assert reporter.on_iteration(it, it, np.zeros(60)) is False
        reporter.end_scale(4)
    lines = stream.getvalue().splitlines()
    # TV is off: no tv anywhere
    assert lines[0].startswith("stylizing 5x4: 4 iterations, 1 style image(s), alpha=1 beta=10000, init=content")
    assert lines[0].endswith("~3.00 GiB peak estimate") and not any(" tv" in line for line in lines)
    # the first iteration, then every second one (the last is one of them)
    assert [line.split()[1] for line in lines[1:]] == ["1/4", "2/4", "4/4"]
    assert "total 5.000e+00" in lines[2] and "ETA" in lines[2]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["evaluation"] for r in rows] == [1, 2, 3, 4] and rows == reporter.history
    assert reporter.evaluation_offset == 4 and reporter.log_file is None  # closed on exit


def test_reporter_checkpoints_and_callback(tmp_path):
    seen = []

    def callback(info):
        seen.append(info)
        return info["iteration"] == 2

    reporter, stream = reporter_for(tmp_path, save_every=2, output=tmp_path / "o.png", callback=callback,
                                    print_every=0)
    reporter.begin_scale(fake_problem(), 0, 3)
    reporter.on_evaluation(0, 1, 1.0, {"total": 1.0})
    assert reporter.on_iteration(1, 1, np.arange(60.0)) is False
    assert reporter.on_iteration(2, 2, np.arange(60.0)) is True  # the callback asked to stop
    assert reporter.checkpoints == [str(tmp_path / "o_2.png"), str(tmp_path / "o_2.npz")]
    assert "checkpoint at iteration 2" in stream.getvalue()
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "o_2.npz").x, np.arange(60.0).reshape(3, 4, 5))
    assert Image.open(tmp_path / "o_2.png").size == (5, 4)
    assert [s["iteration"] for s in seen] == [1, 2] and seen[0]["size"] == (4, 5)
    assert seen[0]["x"].shape == (3, 4, 5) and seen[0]["losses"]["total"] == 1.0


def test_reporter_tags_scales_and_stays_quiet(tmp_path):
    reporter, stream = reporter_for(tmp_path, scales=(3, 5))
    reporter.begin_scale(fake_problem(index=1, size=5), 0, 2)
    assert stream.getvalue().startswith("[5x4 2/2] stylizing 5x4")
    reporter.on_evaluation(0, 1, 1.0, {"total": 1.0})
    assert reporter.history[0]["scale"] == 5
    quiet, stream = reporter_for(tmp_path, quiet=True)
    quiet.say("nothing")
    assert stream.getvalue() == ""
    assert [format_duration(s) for s in (42, 125, 7300)] == ["42s", "2m05s", "2h01m"]


# --------------------------------------------------------------------------- memory
@pytest.fixture(scope="module")
def net():
    return VGG19(random_params(0, widths=(4, 4, 6, 6, 8)))


def test_memory_refusal_is_one_line_with_a_size_that_fits(net):
    layers = ["conv1_1", "conv5_1"]
    fits_at_100 = memory.estimate_peak_bytes(net, 75, 100, layers)
    with pytest.raises(NstliteError) as e:
        memory.check_memory(net, 300, 400, layers, available=fits_at_100)
    message = str(e.value)
    assert message.startswith("400x300 needs about ") and "\n" not in message
    assert message.endswith("use --size 100 or less")
    with pytest.raises(NstliteError, match="free some memory"):
        memory.check_memory(net, 300, 400, layers, available=1)
    assert memory.check_memory(net, 300, 400, layers, available=10**12) > 0
    available = memory.available_memory_bytes()
    assert available is None or available > 0


def test_memory_host_side_is_lbfgs_history_and_vectors(net):
    assert memory.host_bytes(10, 20, history=10) == (2 * 10 + memory.HOST_VECTORS) * 3 * 10 * 20 * 8
    layers = ["conv1_1"]
    # one more correction pair costs exactly two float64 images (the margin is on the network's maps)
    step = memory.estimate_peak_bytes(net, 64, 64, layers, history=11) - memory.estimate_peak_bytes(
        net, 64, 64, layers, history=10)
    assert step == pytest.approx(2 * 3 * 64 * 64 * 8, abs=2)


# --------------------------------------------------------------------------- results
def test_stop_reasons_are_the_strings_the_logs_carry():
    assert StopReason.ITERATIONS == "iterations" and StopReason("evaluation limit") is StopReason.EVALUATIONS
    assert f"{StopReason.LINE_SEARCH}" == "line search failed" and str(StopReason.CALLBACK) == "callback"
    assert json.dumps({"stop": StopReason.INTERRUPTED}) == '{"stop": "interrupted"}'
    assert dataclasses.is_dataclass(StylizeResult) and dataclasses.is_dataclass(Result)
