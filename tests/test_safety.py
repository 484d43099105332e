"""A catalogue of hostile and careless inputs to ``nstlite stylize`` (issue 11, classes 2-5).

Every case is made here, byte by byte where it matters, and checked for the same things: the
exit code, one clear line (no traceback), nothing the user had changed or added, and bounded
time (a ``deadline``) - with the costly cases also under an address-space limit.

The classes: outputs that would destroy an input or an existing file (DESTROY), writes that
would fail only after the work (WRITE), non-regular files that would block (BLOCK), small files
or options that declare a huge cost (COST), runs that would report success for a failure or give
a wrong result (SILENT), and inputs that used to end in a traceback or a vague message (VAGUE).
"""
import contextlib
import hashlib
import json
import os
import signal
import stat
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image
from weights_fixtures import address_space_limit

from nstlite.checkpoint import Checkpoint, load_checkpoint, run_fingerprint, save_checkpoint
from nstlite.cli import main
from nstlite.errors import NstliteError
from nstlite.image import check_writable, load_image
from nstlite.options import StylizeOptions
from nstlite.paths import shown
from nstlite.style_transfer import StylizeFailed, StylizeInterrupted, stylize
from nstlite.vgg import VGG19
from nstlite.weights import random_params, write_weights

MEAN = (103.939, 116.779, 123.68)
WIDTHS = (4, 4, 6, 6, 8)
SECONDS = 20  # every case ends well within this on a busy 2-core machine


@contextlib.contextmanager
def deadline(seconds=SECONDS):
    """Fail (instead of hanging the suite) when the block takes longer than ``seconds``; an
    ``open`` blocked on a FIFO is interrupted too."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder):
    """name -> sha256 of every file under ``folder`` (links by their target's bytes)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            key = os.path.relpath(path, folder)
            if not stat.S_ISREG(os.stat(path).st_mode) if os.path.exists(path) else True:
                out[key] = "special"  # a FIFO or a dangling link: never opened, its presence counts
                continue
            with open(path, "rb") as f:
                out[key] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    write_weights(d / "tiny.h5", random_params(0, widths=WIDTHS), "BGR", 255, MEAN, (1, 1, 1), "test")
    y, x = np.mgrid[0:40, 0:48]
    Image.fromarray(np.stack([x * 5, y * 6, (x + y) * 3], axis=2).astype(np.uint8)).save(d / "content.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(d / "style.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(d / "style2.png")
    return d


@pytest.fixture
def work(assets, tmp_path):
    """A folder of the user's files (copies of the assets) in which each case runs."""
    for name in ("tiny.h5", "content.png", "style.png", "style2.png"):
        (tmp_path / name).write_bytes((assets / name).read_bytes())
    return tmp_path


@pytest.fixture(scope="module")
def net():
    return VGG19(random_params(0, widths=WIDTHS))


def stylize_args(work, *extra, output="out.png", content="content.png", style="style.png"):
    args = ["stylize", "--content", str(work / content), "--output", str(work / output), "--weights",
            str(work / "tiny.h5"), "--size", "48", "--iterations", "4", "--quiet"]
    args += ["--style", str(work / style)] if style else []
    return args + [str(a) for a in extra]


def refused(capsys, work, args, needles=(), code=2, seconds=SECONDS):
    """Run the command; assert exit ``code``, one ``nstlite: error:`` line containing every needle,
    no traceback, nothing under ``work`` changed or added, within ``seconds``. Returns the line."""
    before = snapshot(work)
    capsys.readouterr()
    with deadline(seconds):
        rc = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("nstlite: error: "), err
    assert "Traceback" not in err and "\x1b" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(work) == before
    return lines[0]


def checkpoint_file(path, meta=None, x=None, **entries):
    """An .npz written entry by entry as ``np.savez`` would (``x``, ``meta``), or other entries."""
    x = np.zeros((3, 40, 48)) if x is None else x
    meta = {"format": "nstlite-checkpoint", "version": 2, "iteration": 2, "evaluations": 3, "scale_index": 0,
            "size": 48} if meta is None else meta
    if not isinstance(meta, np.ndarray):
        meta = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    entries = entries or {"x": x, "meta": meta}
    np.savez(path, **entries)
    return path


# =========================================================================== DESTROY
def test_destroy_output_is_an_input_by_any_spelling(work, capsys):
    """--output, --log and checkpoint names onto an input, however spelled: refused, both named."""
    (work / "sub").mkdir()
    os.symlink(work / "content.png", work / "link.png")
    os.link(work / "style.png", work / "hard.png")
    cases = [
        (stylize_args(work, output="content.png"), ["content image"]),
        (stylize_args(work, output="sub/../content.png"), ["content image"]),
        (stylize_args(work, output="link.png"), ["content image", "link.png"]),
        (stylize_args(work, output="hard.png"), ["style image", "hard.png"]),
        (stylize_args(work, "--log", work / "tiny.h5"), ["log", "weights file"]),
        (stylize_args(work, "--log", work / "sub/../content.png"), ["log", "content image"]),
        (stylize_args(work, "--init", work / "style2.png", output="style2.png"), ["init image"]),
        (stylize_args(work, "--save-every", 2, output="style.jpg"), ["checkpoint", "style image"]),
        (stylize_args(work, "--log", work / "out.png"), ["also the output"]),
    ]
    os.symlink(work / "style.png", work / "style_2.jpg")  # the checkpoint picture at iteration 2
    for args, needles in cases:
        refused(capsys, work, args, needles + ["same file" if "also" not in needles[0] else "different"])


def test_destroy_region_map_and_resume_checkpoint(work, capsys, net):
    region = np.zeros((40, 48, 3), np.uint8)
    Image.fromarray(region).save(work / "regions.png")
    args = ["stylize", "--content", str(work / "content.png"), "--region-map", str(work / "regions.png"),
            "--style-region", f"#000000={work / 'style.png'}", "--output", str(work / "regions.png"),
            "--weights", str(work / "tiny.h5"), "--size", "48", "--iterations", "2", "--quiet"]
    refused(capsys, work, args, ["region map"])
    run = stylize(work / "content.png", [work / "style.png"], size=48, iterations=2, net=net, quiet=True,
                  save_every=2, checkpoint_prefix=work / "ck")
    assert run.checkpoints
    refused(capsys, work, stylize_args(work, "--resume", work / "ck_2.npz", "--log", work / "ck_2.npz"),
            ["checkpoint"])


def test_destroy_existing_outputs_need_overwrite(work, capsys):
    (work / "out.png").write_bytes(b"the user's picture")
    line = refused(capsys, work, stylize_args(work), ["exists", "--overwrite"])
    assert "out.png" in line
    (work / "run.jsonl").write_text("an earlier log\n")
    refused(capsys, work, stylize_args(work, "--log", work / "run.jsonl", output="new.png"), ["log", "exists"])
    (work / "new_2.npz").write_bytes(b"an earlier checkpoint")
    refused(capsys, work, stylize_args(work, "--save-every", 2, output="new.png"), ["new_2.npz", "exists"])
    # with --overwrite the output is replaced (the inputs never are)
    assert main(stylize_args(work, "--overwrite")) == 0
    assert Image.open(work / "out.png").size == (48, 40)


def test_destroy_interrupt_before_any_progress_leaves_the_output(work, net):
    class InterruptedAtFirstEvaluation(VGG19):
        def backward(self, grads):
            raise KeyboardInterrupt

    out = work / "out.png"
    out.write_bytes(b"the user's picture")
    with pytest.raises(StylizeInterrupted) as e:
        stylize(work / "content.png", [work / "style.png"], size=48, iterations=5, quiet=True, overwrite=True,
                net=InterruptedAtFirstEvaluation(random_params(0, widths=WIDTHS)), output=out)
    assert e.value.result.output is None and e.value.result.iterations == 0
    assert out.read_bytes() == b"the user's picture"


def test_destroy_full_disk_during_the_log_still_saves_the_image(work, capsys, monkeypatch):
    """The log's writes fail as on a full disk (ENOSPC): the run goes on, the image is saved, and
    the exit code and the message say which file is incomplete."""
    import builtins

    log, real_open = work / "run.jsonl", builtins.open

    def open_filling_up(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if os.fspath(file) == str(log) and "w" in mode:
            def write(_line):
                raise OSError(28, "No space left on device")
            f.write = write
        return f

    monkeypatch.setattr(builtins, "open", open_filling_up)
    rc = main(stylize_args(work, "--log", log))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "run.jsonl" in last and "No space left" in last and "out.png" in last
    assert Image.open(work / "out.png").size == (48, 40)


# =========================================================================== WRITE
@pytest.mark.parametrize("ext", [".xbm", ".msp", ".palm", ".blp", ".h5"])
def test_write_unwritable_formats_refused_before_the_work(work, capsys, ext):
    started = time.perf_counter()
    refused(capsys, work, stylize_args(work, output="out" + ext), ["cannot write"], seconds=10)
    assert time.perf_counter() - started < 10


def test_write_names_too_long_for_the_temporary_file(work, capsys):
    name = "o" * 245 + ".png"  # fits the 255-byte limit, its temporary name does not
    refused(capsys, work, stylize_args(work, output=name), ["cannot write"])
    refused(capsys, work, stylize_args(work, "--save-every", 2, "--scales", "24,48", output="o" * 240 + ".png"),
            ["cannot write"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_write_read_only_folder(work, capsys):
    (work / "ro").mkdir()
    os.chmod(work / "ro", 0o555)
    try:
        refused(capsys, work, stylize_args(work, output="ro/out.png"), ["cannot write"])
    finally:
        os.chmod(work / "ro", 0o755)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_write_folder_that_takes_no_files(work, capsys):
    """A folder no one (not even root) can create files in: /proc."""
    args = stylize_args(work)
    args[args.index("--output") + 1] = "/proc/out.png"
    refused(capsys, work, args, ["cannot write", "/proc/out.png"])


def test_write_trial_leaves_nothing(tmp_path):
    check_writable(tmp_path / "a.png", 5, 7, alpha=True)
    check_writable(tmp_path / "a.jpg", 5, 7, alpha=True)
    assert os.listdir(tmp_path) == []
    with pytest.raises(NstliteError, match="cannot write"):
        check_writable(tmp_path / "a.webp", 5, 20000)  # WebP holds at most 16383 px a side


# =========================================================================== BLOCK
def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("role", ["resume", "log", "init", "content", "style", "output", "weights",
                                  "region"])
def test_block_fifo_never_read_or_written(work, capsys, role):
    fifo = _fifo(work / ("pipe.png" if role not in ("resume", "log", "weights") else "pipe.npz"))
    extra, kw = [], {}
    if role == "resume":
        extra = ["--resume", fifo]
    elif role == "log":
        extra = ["--log", fifo]
    elif role == "init":
        extra = ["--init", fifo]
    elif role in ("content", "style", "output"):
        kw = {role: "pipe.png"}
    elif role == "weights":
        args = stylize_args(work)
        args[args.index("--weights") + 1] = str(fifo)
        refused(capsys, work, args, ["not a regular file"], seconds=10)
        return
    elif role == "region":
        extra = ["--region-map", fifo, "--style-region", f"#000000={work / 'style.png'}"]
        kw = {"style": None}
    line = refused(capsys, work, stylize_args(work, *extra, **kw), ["pipe"], seconds=10)
    assert "FIFO" in line or "regular file" in line


@pytest.mark.parametrize("role", ["resume", "content", "log"])
def test_block_devices_refused(work, capsys, role):
    extra, kw = [], {}
    if role == "resume":
        extra = ["--resume", "/dev/zero"]
    elif role == "log":
        extra = ["--log", "/dev/null"]
    else:
        kw = {"content": "/dev/zero"}
    refused(capsys, work, stylize_args(work, *extra, **kw), ["device"], seconds=10)


# =========================================================================== COST
def _png_1bit(path, width, height):
    """A 1-bit PNG of a blank width x height image: a few kB that decode to width * height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + b"\0" * ((width + 7) // 8)
    compressor, body = zlib.compressobj(9), b""
    for _ in range(height):
        body += compressor.compress(row)
    body += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_cost_small_1bit_png_declaring_80_megapixels(work, capsys):
    _png_1bit(work / "tiny_bomb.png", 20000, 4000)
    assert os.path.getsize(work / "tiny_bomb.png") < 200_000
    with address_space_limit(768 << 20):
        line = refused(capsys, work, stylize_args(work, content="tiny_bomb.png"), ["tiny_bomb.png"])
    assert "GiB" in line or "memory" in line


def test_cost_checkpoint_declaring_more_than_it_holds(work, capsys):
    path = work / "liar.npz"
    with zipfile.ZipFile(path, "w") as z:
        with z.open("x.npy", "w") as f:  # an honest header for (3, 9000, 9000), then 64 bytes
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                     "shape": (3, 9000, 9000)})
            f.write(b"\0" * 64)
        with z.open("meta.npy", "w") as f:
            np.lib.format.write_array(f, np.array(json.dumps({"format": "nstlite-checkpoint"})))
    with address_space_limit(512 << 20):
        refused(capsys, work, stylize_args(work, "--resume", path), ["liar.npz", "declares"])


def test_cost_compressed_checkpoint_bomb(work, capsys):
    path = work / "bomb.npz"
    shape = (3, 3000, 3000)  # 216 MB of float64 zeros, about 210 kB deflated
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
            block = b"\0" * (1 << 22)
            left = 8 * int(np.prod(shape))
            while left:
                f.write(block[:min(left, len(block))])
                left -= min(left, len(block))
        with z.open("meta.npy", "w") as f:
            np.lib.format.write_array(f, np.array(json.dumps({"format": "nstlite-checkpoint"})))
    assert os.path.getsize(path) < 2_000_000
    with address_space_limit(256 << 20):
        refused(capsys, work, stylize_args(work, "--resume", path), ["bomb.npz"])


@pytest.mark.parametrize("extra", [["--style-scale", 100], ["--scales", "4000,64"], ["--size", 9000],
                                   ["--lbfgs-history", 10**7]])
def test_cost_options_escaping_the_memory_preflight(work, capsys, extra):
    with address_space_limit(1 << 30):
        line = refused(capsys, work, stylize_args(work, *extra))
    assert "GiB" in line


# =========================================================================== SILENT
@pytest.mark.parametrize("extra,needle", [
    (["--style-weight", "1e308"], "style weight"),
    (["--content-weight", "inf"], "content weight"),
    (["--tv-weight", "nan"], "tv weight"),
    (["--lbfgs-history", 0], "lbfgs history"),
    (["--style", "{style2}", "--style-blend-weights", "nan,1"], "blend weights"),
    (["--style", "{style2}", "--style-blend-weights", "0,0"], "blend weights"),
    (["--style", "{style2}", "--style-blend-weights=-1,2"], "blend weights"),
])
def test_silent_options_refused_up_front(work, capsys, extra, needle):
    extra = [str(e).format(style2=work / "style2.png") for e in extra]
    refused(capsys, work, stylize_args(work, *extra), [needle])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point (the API does not hide it)
def test_silent_no_progress_is_a_failure_and_writes_nothing(work, capsys):
    """A network whose responses overflow float32: the loss at the start is infinite."""
    params = {k: (w * 1e8, b) for k, (w, b) in random_params(0, widths=WIDTHS).items()}
    write_weights(work / "huge.h5", params, "BGR", 255, MEAN, (1, 1, 1), "test")
    args = stylize_args(work)
    args[args.index("--weights") + 1] = str(work / "huge.h5")
    line = refused(capsys, work, args, ["failed", "not finite"], code=1)
    assert "nothing written" in line
    with pytest.raises(StylizeFailed):
        stylize(work / "content.png", [work / "style.png"], size=48, iterations=3, weights=work / "huge.h5",
                quiet=True)


def test_silent_resume_refuses_another_run(work, capsys, net):
    stylize(work / "content.png", [work / "style.png"], size=48, iterations=2, quiet=True, save_every=2,
            weights=work / "tiny.h5", checkpoint_prefix=work / "ck")
    ck = work / "ck_2.npz"
    refused(capsys, work, stylize_args(work, "--resume", ck, style="style2.png"), ["style image 1", "another run"])
    refused(capsys, work, stylize_args(work, "--resume", ck, "--style-weight", "1e5"), ["style_weight"])
    refused(capsys, work, stylize_args(work, "--resume", ck, "--iterations", 1), ["iteration 2"])
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(work / "other.png")
    refused(capsys, work, stylize_args(work, "--resume", ck, content="other.png"), ["content image"])
    assert main(stylize_args(work, "--resume", ck)) == 0  # the same run goes on


@pytest.mark.parametrize("index", [-1, 1, 7])
def test_silent_scale_index_out_of_range(work, capsys, index):
    meta = {"format": "nstlite-checkpoint", "version": 2, "iteration": 1, "evaluations": 1, "scale_index": index,
            "size": 48, "fingerprint": {"options": {}, "inputs": {}}}
    refused(capsys, work, stylize_args(work, "--resume", checkpoint_file(work / "c.npz", meta)), ["c.npz"])


def test_silent_nan_checkpoint(work, capsys):
    x = np.zeros((3, 40, 48))
    x[1, 2, 3] = np.nan
    refused(capsys, work, stylize_args(work, "--resume", checkpoint_file(work / "nan.npz", x=x)), ["NaN"])


def test_silent_semi_transparent_content_keeps_straight_colour(work, net):
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[...] = (0, 0, 255, 128)
    rgba[:, :8, 3] = 255
    Image.fromarray(rgba, "RGBA").save(work / "glass.png")
    out = work / "glass_out.png"
    r = stylize(work / "glass.png", [], content_weight=1, size=48, iterations=0, net=net, quiet=True, output=out)
    back = np.asarray(Image.open(out))
    assert r.image.shape == (40, 48, 4)
    np.testing.assert_allclose(back[5, 20], (0, 0, 255, 128), atol=1)  # not (127, 127, 255)
    np.testing.assert_allclose(back[5, 2], (0, 0, 255, 255), atol=1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_silent_float_tiff_with_nan_refused(work, capsys, bad):
    a = np.full((40, 48), 0.5, np.float32)
    a[3, 4] = bad
    Image.fromarray(a, mode="F").save(work / "float.tif")
    refused(capsys, work, stylize_args(work, content="float.tif"), ["float.tif", "NaN or infinite"])
    with pytest.raises(NstliteError, match="NaN or infinite"):
        load_image(np.where(np.isfinite(a), a, bad)[..., None].repeat(3, axis=2), "array")


# =========================================================================== VAGUE
@pytest.mark.parametrize("extra,needle", [
    (["--style-scale", "nan"], "style scale"), (["--style-scale", "inf"], "style scale"),
    (["--style-scale", "-2"], "style scale"), (["--lbfgs-history", -5], "lbfgs history"),
    (["--seed", -1, "--init", "noise"], "seed"), (["--print-every", -1], "print every"),
    (["--save-every", -3], "save every"), (["--iterations", -1], "iterations"),
])
def test_vague_options_are_one_line(work, capsys, extra, needle):
    refused(capsys, work, stylize_args(work, *extra), [needle])


META = {"format": "nstlite-checkpoint", "version": 2, "iteration": 1, "evaluations": 1, "scale_index": 0, "size": 48}
IMAGE_X = np.zeros((3, 40, 48))
# case -> how to write it (path -> None)
BAD_CHECKPOINTS = {
    "list": lambda p: checkpoint_file(p, meta="[1, 2]"),
    "string iteration": lambda p: checkpoint_file(p, meta=dict(META, iteration="abc")),
    "float iteration": lambda p: checkpoint_file(p, meta=dict(META, iteration=1.5)),
    "bool iteration": lambda p: checkpoint_file(p, meta=dict(META, iteration=True)),
    "negative evaluations": lambda p: checkpoint_file(p, meta=dict(META, evaluations=-4)),
    "1-D x": lambda p: checkpoint_file(p, x=np.zeros(12)),
    "float32 x": lambda p: checkpoint_file(p, x=IMAGE_X.astype(np.float32)),
    "4 channels": lambda p: checkpoint_file(p, x=np.zeros((4, 40, 48))),
    "no meta": lambda p: checkpoint_file(p, x=IMAGE_X, only=np.zeros(1)),
    "extra entry": lambda p: checkpoint_file(p, x=IMAGE_X, meta=np.array(json.dumps(META)), more=np.zeros(1)),
    "pickled": lambda p: np.savez(p, x=IMAGE_X, meta=np.array([{"format": "nstlite-checkpoint"}], dtype=object)),
    "meta not text": lambda p: checkpoint_file(p, meta=np.zeros(3)),
    "huge meta": lambda p: checkpoint_file(p, meta=json.dumps(dict(META, pad="x" * (2 << 20)))),
    "bad fingerprint": lambda p: checkpoint_file(p, meta=dict(META, fingerprint=[1, 2])),
    "not a zip": lambda p: p.write_bytes(b"PK\x03\x04 but nothing after"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_vague_checkpoint_metadata_of_wrong_types(work, capsys, case):
    path = work / "c.npz"
    BAD_CHECKPOINTS[case](path)
    refused(capsys, work, stylize_args(work, "--resume", path), ["c.npz"])
    with pytest.raises(NstliteError):
        load_checkpoint(path)


def test_vague_weights_missing_a_needed_layer_names_the_file(work, capsys):
    params = random_params(0, widths=WIDTHS)
    write_weights(work / "short.h5", {n: params[n] for n in list(params)[:10]}, "BGR", 255, MEAN, (1, 1, 1), "t")
    args = stylize_args(work)
    args[args.index("--weights") + 1] = str(work / "short.h5")
    refused(capsys, work, args, ["short.h5", "conv5_1"])


def test_vague_terminal_escapes_in_names_are_escaped(work, capsys):
    evil = "x\x1b[2J\x1b]0;owned\x07.png"
    line = refused(capsys, work, stylize_args(work, content=evil), ["not found", "\\x1b[2J"])
    assert "\x07" not in line
    (work / evil).write_bytes(b"not an image")
    refused(capsys, work, stylize_args(work, content=evil), ["\\x1b"])
    assert shown("a\nb\x9b") == "a\\nb\\x9b"


# =========================================================================== the fingerprint
def test_fingerprint_records_inputs_and_objective_options(work):
    opts = StylizeOptions(size=48).validated(1)
    a = run_fingerprint(opts, {"content image": work / "content.png", "weights file": work / "tiny.h5"})
    b = run_fingerprint(opts, {"content image": work / "style.png", "weights file": work / "tiny.h5"})
    c = run_fingerprint(StylizeOptions(size=48, iterations=9, lbfgs_history=3).validated(1),
                        {"content image": work / "content.png", "weights file": work / "tiny.h5"})
    assert a["inputs"]["content image"] != b["inputs"]["content image"]
    assert a == c  # iterations and the optimiser's memory do not change the objective
    saved = save_checkpoint(work / "f.npz", Checkpoint(x=np.zeros((3, 2, 2)), iteration=1, evaluations=1,
                                                       fingerprint=a))
    assert load_checkpoint(saved).fingerprint == a
