"""Image input/output: every Pillow mode to correct RGB, alpha, EXIF, bad files, atomic saving."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nstlite import image as im


def rgb_of(src):
    return im.load_image(src, "test").rgb


# --------------------------------------------------------------------------- modes
@pytest.mark.parametrize("mode, value, expected", [
    ("L", 100, (100, 100, 100)),
    ("1", 1, (255, 255, 255)),
    ("RGB", (10, 200, 30), (10, 200, 30)),
    ("RGBX", (10, 200, 30, 0), (10, 200, 30)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),     # cyan-free, full magenta+yellow = red
    ("YCbCr", (255, 128, 128), (255, 255, 255)),
    ("HSV", (0, 255, 255), (255, 0, 0)),
    ("LAB", (255, 128, 128), (255, 255, 255)),
])
def test_colour_modes_convert_to_rgb(mode, value, expected):
    img = im.load_image(Image.new(mode, (5, 4), value), "t")
    assert img.rgb.shape == (4, 5, 3) and img.alpha is None
    np.testing.assert_allclose(img.rgb[0, 0], expected, atol=3)


def test_palette_expands_through_palette_and_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((1, 1), 1)
    path = tmp_path / "p.png"
    p.save(path, transparency=1)
    img = im.load_image(path, "t")
    np.testing.assert_allclose(img.rgb[0, 0], (255, 0, 0))
    assert img.alpha[0, 0] == 255 and img.alpha[1, 1] == 0
    np.testing.assert_allclose(img.rgb[1, 1], (255, 255, 255))  # transparent: over white


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16bit_grey_is_scaled_not_clipped(tmp_path, mode):
    a = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    src = Image.fromarray(a) if mode == "I;16" else Image.fromarray(a.astype(np.int32), mode="I")
    path = tmp_path / ("g16.png" if mode == "I;16" else "g32.tif")
    src.save(path)
    rgb = rgb_of(path)
    np.testing.assert_allclose(rgb[0, :, 0], a[0] * 255.0 / 65535.0, atol=1e-6)
    assert np.all(rgb[..., 0] == rgb[..., 2])


def test_float_modes_scaled(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    np.testing.assert_allclose(rgb_of(unit)[0, :, 1], [0, 127.5, 255])
    big = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32), mode="F")
    np.testing.assert_allclose(rgb_of(big)[0, :, 1], [0, 100, 255])
    path = tmp_path / "f.tif"
    unit.save(path)
    np.testing.assert_allclose(rgb_of(path)[0, :, 1], [0, 127.5, 255])


@pytest.mark.parametrize("mode", ["LA", "RGBA", "PA", "RGBa"])
def test_alpha_modes_keep_alpha_and_composite_over_white(mode):
    base = Image.new("RGBA", (3, 2), (0, 0, 0, 0))
    base.putpixel((0, 0), (200, 200, 200, 255))
    base.putpixel((1, 0), (0, 0, 0, 128))
    src = base.convert(mode) if mode != "PA" else base.convert("PA")
    img = im.load_image(src, "t")
    assert img.alpha is not None
    assert img.alpha[0, 0] == 255 and img.alpha[1, 2] == 0
    np.testing.assert_allclose(img.rgb[1, 2], (255, 255, 255), atol=1)  # fully transparent -> white
    assert img.rgb[0, 0, 0] == pytest.approx(200, abs=2)
    assert 120 < img.rgb[0, 1, 0] < 135  # half-transparent black over white


def test_premultiplied_La_is_unpremultiplied():
    img = im.load_image(Image.frombytes("La", (1, 1), bytes([50, 128])), "t")
    assert img.alpha[0, 0] == 128
    # colour 50 * 255 / 128 ~ 99.6, then half over white: ~ 99.6 * 0.5 + 127.5
    assert img.rgb[0, 0, 0] == pytest.approx(99.6 * 128 / 255 + 255 * 127 / 255, abs=1.5)


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((2, 6, 3), np.uint8)
    a[:, :3] = 255  # left half white
    src = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "o.jpg"
    src.save(path, exif=exif, quality=100)
    rgb = rgb_of(path)
    assert rgb.shape[:2] == (6, 2)
    assert rgb[0, 0, 0] > 200 and rgb[-1, 0, 0] < 60  # top was left


@pytest.mark.parametrize("arr, expected", [
    (np.full((2, 3), 7, np.uint8), 7.0),
    (np.full((2, 3, 3), 65535, np.uint16), 255.0),
    (np.full((2, 3, 3), 0.5, np.float32), 127.5),
    (np.full((2, 3, 3), 80.0), 80.0),
    (np.ones((2, 3), bool), 255.0),
])
def test_arrays(arr, expected):
    rgb = rgb_of(arr)
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_allclose(rgb, expected)


def test_array_with_alpha():
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., 3] = [[255, 0], [0, 255]]
    img = im.load_image(a, "t")
    np.testing.assert_array_equal(img.alpha, [[255, 0], [0, 255]])
    np.testing.assert_allclose(img.rgb[0, 1], 255)


# --------------------------------------------------------------------------- bad files
def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (a decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 10)
    chunk = b"IDAT" + idat
    data += struct.pack(">I", len(idat)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"),
    ("empty", "empty file"),
    ("text", "not an image"),
    ("truncated", "truncated or damaged"),
    ("bomb", "decompression bomb"),
    ("folder", "folder"),
])
def test_bad_files_give_one_line_errors(tmp_path, case, words):
    path = tmp_path / "x.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("hello, not an image\n")
    elif case == "truncated":
        path = tmp_path / "x.jpg"
        _truncated_jpeg(path)
    elif case == "bomb":
        _png_header_only(path, 30000, 30000)
    elif case == "folder":
        path = tmp_path
    with pytest.raises(im.ImageError) as e:
        im.load_image(path, "content image")
    msg = str(e.value)
    assert words in msg and "\n" not in msg and "content image" in msg


# --------------------------------------------------------------------------- resizing
def test_resize_longest_side_and_no_resample_at_size():
    rgb = np.random.default_rng(0).uniform(0, 255, (30, 40, 3))
    img = im.Image(rgb, None)
    assert im.resize_longest(img, 40).rgb is rgb  # already that size: untouched
    out = im.resize_longest(img, 20).rgb
    assert out.shape == (15, 20, 3) and out.dtype == np.float32
    assert im.fit_longest(300, 100, 64) == (64, 21)


def test_resize_keeps_float_precision():
    a = np.full((8, 8, 3), 100.25)
    np.testing.assert_allclose(im.resize(a, 4, 4), 100.25, atol=1e-4)


# --------------------------------------------------------------------------- saving
def test_output_format_checks():
    assert im.output_format("a.png") == "PNG"
    assert im.output_format("a.JPG") == "JPEG"
    for bad in ("a.xyz", "noext", "a."):
        with pytest.raises(im.ImageError, match="extension"):
            im.output_format(bad)
    with pytest.raises(im.ImageError, match="folder does not exist"):
        im.output_format("/no/such/folder/a.png")


def test_save_png_keeps_alpha_jpeg_composites(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    alpha = np.full((3, 4), 255, np.uint8)
    alpha[0, 0] = 0
    im.save_image(tmp_path / "a.png", rgb, alpha)
    back = Image.open(tmp_path / "a.png")
    assert back.mode == "RGBA" and np.asarray(back)[0, 0, 3] == 0
    im.save_image(tmp_path / "a.jpg", rgb, alpha)
    back = np.asarray(Image.open(tmp_path / "a.jpg"))
    assert back.shape == (3, 4, 3) and back[0, 0, 0] > 200 and back[2, 3, 0] < 40


def test_failed_save_leaves_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.png"
    path.write_bytes(b"precious")

    def boom(self, fp, format=None, **kw):
        with open(fp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(im.ImageError, match="disk full"):
        im.save_image(path, np.zeros((2, 2, 3), np.uint8))
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["keep.png"]  # no temp file left behind


# --------------------------------------------------------------------------- safety (issue 11)
def test_straight_colour_undoes_the_white_composite_exactly():
    """(0, 0, 255) at alpha 128 is seen as its composite over white; the output gives back the
    straight colour, so a viewer compositing over white shows (127, 127, 255), not (191, 191, 255)."""
    a = np.array([[[0, 0, 255, 128], [200, 10, 30, 255], [9, 9, 9, 0], [255, 255, 255, 1]]], np.uint8)
    img = im.load_image(a, "t")
    np.testing.assert_allclose(img.rgb[0, 0], [127.0, 127.0, 255.0], atol=0.5)
    back = im.straight_colour(img.rgb, img.alpha)
    np.testing.assert_allclose(back[0, :2], a[0, :2, :3], atol=1e-9)
    np.testing.assert_allclose(back[0, 2], img.rgb[0, 2])  # fully transparent: left as composited
    assert np.all((back >= 0) & (back <= 255))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_pixels_are_refused(tmp_path, bad):
    a = np.full((3, 4), 0.25, np.float32)
    a[1, 2] = bad
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif")
    with pytest.raises(im.ImageError, match="1 NaN or infinite"):
        im.load_image(tmp_path / "f.tif", "content image")
    with pytest.raises(im.ImageError, match="NaN or infinite"):
        im.load_image(np.dstack([a, a, a]), "array")


def test_non_regular_files_are_refused_without_opening(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(im.ImageError, match="FIFO"):
        im.load_image(tmp_path / "pipe.png", "content image")
    with pytest.raises(im.ImageError, match="device"):
        im.check_input_file("/dev/zero", "init image")


def test_decode_memory_is_checked_from_the_declared_size():
    im.check_decode_memory(100, 100, "small")
    with pytest.raises(im.ImageError, match="decoding it needs about"):
        im.check_decode_memory(10**6, 10**6, "huge")


# --------------------------------------------------------------------------- float32 (issue 12)
@pytest.mark.parametrize("source", [
    Image.new("RGB", (6, 5), (10, 200, 30)),
    Image.new("RGBA", (6, 5), (10, 200, 30, 128)),
    Image.new("LA", (6, 5), (90, 40)),
    Image.new("I;16", (6, 5), 40000),
    Image.new("I", (6, 5), 70000),
    Image.new("F", (6, 5), 0.5),
    np.zeros((5, 6), np.bool_),
    np.zeros((5, 6, 4), np.uint8),
    np.zeros((5, 6, 3), np.uint16),
    np.zeros((5, 6, 2), np.int64),
    np.zeros((5, 6, 3), np.float64),
], ids=lambda s: getattr(s, "mode", None) or str(s.dtype))
def test_decoding_and_resizing_give_float32(source):
    img = im.load_image(source, "t")
    small = im.resize_image(img, 3, 4)
    for a in (img.rgb, img.alpha, small.rgb, small.alpha):
        assert a is None or a.dtype == np.float32


def test_float32_decode_keeps_the_float64_values_rounded_once():
    """8-bit colour over white and 16-bit values scaled: the float64 formula's result rounded to
    float32, every possible value, so that 8-bit and 16-bit sources give the same bits as the
    float64 decode did once resized (the resizing was float32 already)."""
    colour, alpha = (x.astype(np.float64) for x in np.meshgrid(np.arange(256), np.arange(256)))
    rgba = np.stack([colour, colour, colour, alpha], axis=2).astype(np.uint8)
    a = alpha / 255.0
    over_white = (colour * a + 255.0 * (1.0 - a)).astype(np.float32)
    np.testing.assert_array_equal(im.load_image(rgba, "t").rgb[..., 0], over_white)
    sixteen = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(im.load_image(sixteen, "t").rgb[..., 0],
                                  (sixteen * (255.0 / 65535.0)).astype(np.float32))


@pytest.mark.parametrize("mode, planes_bytes", [("RGB", 12), ("RGBA", 16)])
def test_load_and_resize_peak_memory_has_no_float64_planes(tmp_path, mode, planes_bytes):
    """Reading a 2000 x 1500 PNG and resizing it peaks (tracemalloc: NumPy's arrays and Python's
    bytes, not Pillow's own buffers) at the float32 planes it returns plus 8 bytes a pixel (the
    8-bit copy NumPy reads, one plane being resized, the compositing's temporary). The float64
    decode peaked at 29 bytes a pixel for RGB and 96 for RGBA (its float64 planes, their
    copies and the compositing's temporaries), over this bound."""
    import tracemalloc

    h, w = 1500, 2000
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0).astype(np.uint8)
    pixels = np.dstack([ramp, ramp[::-1], ramp.T[:h, :h].repeat(2, 1)[:, :w], ramp][: len(mode)])
    path = tmp_path / "large.png"
    Image.fromarray(pixels, mode).save(path, compress_level=1)
    tracemalloc.start()
    try:
        img = im.load_image(path, "t")
        small = im.resize_longest(img, 400)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = (planes_bytes + 8) * h * w
    assert peak < bound, f"peak {peak / 2**20:.1f} MiB over the bound {bound / 2**20:.1f} MiB"
    assert small.rgb.dtype == np.float32 and (img.alpha is not None) == (mode == "RGBA")


def test_straight_colour_is_float32_and_leaves_its_inputs():
    composite = np.full((2, 3, 3), 127.0)
    alpha = np.array([[128.0, 0.0, 255.0], [1.0, 64.0, 255.0]])
    back = im.straight_colour(composite, alpha)
    assert back.dtype == np.float32 and np.all(composite == 127.0)
    np.testing.assert_allclose(back[0, 1], 127.0)  # fully transparent: the composite kept
    np.testing.assert_allclose(back[0, 2], 127.0)  # opaque: the colour itself
