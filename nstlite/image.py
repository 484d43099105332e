"""Images in and out: every Pillow mode to RGB floats, resizing, and atomic writing.

This is host-side code (NumPy only): images are small next to the network's feature maps and
cross to the device once, through ``VGG19.preprocess``.

Reading turns whatever the user has into an ``Image`` pair ``(rgb, alpha)``:

* ``rgb``   H x W x 3 float64 in 0..255 (floats, so 16-bit and float sources keep their
  precision through resizing);
* ``alpha`` H x W float64 in 0..255, or ``None`` when the source has no transparency.

Decisions, so that nothing is damaged silently:

* EXIF orientation is applied (a phone photo comes out the way up its owner sees it).
* Palette images expand through their palette; palette transparency becomes alpha.
* 16-bit modes (``I;16*``) are scaled by 255/65535; mode ``I`` (32-bit integers) is read as
  16-bit when its values fit, else scaled by its own maximum; mode ``F`` (float) is read as
  0..1 when its maximum is at most 1, else as 0..255 (values outside are clipped).
* CMYK, YCbCr, LAB and HSV go through Pillow's own converters to RGB.
* Transparency: the network sees the colour composited over white (hidden colours under
  alpha 0 are often garbage and would leak into the result); the alpha channel itself is kept
  and given back to the output of a content image.
"""
import os
import warnings
from collections import namedtuple

import numpy as np

from .atomic import atomic_write
from .errors import NstliteError

Image = namedtuple("Image", "rgb alpha")

# Modes whose RGB conversion Pillow does correctly (colour-space conversions included).
_TO_RGB_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
# Modes with an alpha channel, converted through RGBA ("La"/"RGBa" are premultiplied).
_TO_RGBA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
# Most pixels we decode (a decompression-bomb guard; Pillow's default warning threshold).
MAX_PIXELS = 89_478_485


class ImageError(NstliteError):
    """An image cannot be read or written. The message is one line."""


def _pil():
    from PIL import Image as PILImage
    from PIL import ImageOps

    return PILImage, ImageOps


# --------------------------------------------------------------------------- reading
def check_input_file(path, what="file"):
    """``path`` as a string when it names a non-empty file; else an ``ImageError`` (one line)
    saying it is missing, a folder or empty. Every input file is checked by this one function."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise ImageError(f"{what} {path} is a folder, not a file")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{what} {path} is an empty file")
    return path


def open_image(path, what="image"):
    """Open and fully decode an image file, with EXIF orientation applied.

    Every way a file can be unusable becomes an ``ImageError`` with one line naming the file:
    missing, a folder, empty, not an image, truncated/damaged, or a decompression bomb.
    """
    PILImage, ImageOps = _pil()
    path = check_input_file(path, what)
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; treat both alike.
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"{what} {path} is {w}x{h} pixels, more than the {MAX_PIXELS} "
                                     "accepted (a decompression bomb?); scale it down first")
                im.load()  # decode now: truncated files fail here, not later
                im = ImageOps.exif_transpose(im)
                return im
    except ImageError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise ImageError(f"{what} {path} is too large to decode safely (a decompression bomb?); "
                         "scale it down first") from None
    except PILImage.UnidentifiedImageError:
        raise ImageError(f"{what} {path} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{what} {path} is truncated or damaged ({msg})") from None


def _scale_integer_mode(a, mode):
    """Integer pixel values of a high-bit-depth mode -> floats in 0..255."""
    a = a.astype(np.float64)
    if mode.startswith("I;16"):
        return a * (255.0 / 65535.0)
    top = a.max(initial=0.0)  # mode "I": 32-bit ints, in practice 16-bit data
    if top <= 65535:
        return np.clip(a, 0, None) * (255.0 / 65535.0)
    return np.clip(a, 0, None) * (255.0 / top)


def _scale_float(a):
    """Float pixel values -> 0..255: read as 0..1 when the maximum is at most 1, else as 0..255."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if a.max(initial=0.0) <= 1.0:
        a = a * 255.0
    return np.clip(a, 0.0, 255.0)


def _from_pil(im, what):
    """A decoded PIL image -> Image(rgb float64 0..255, alpha or None)."""
    if im.mode == "La":  # premultiplied; Pillow converts it only to LA
        im = im.convert("LA")
    mode = im.mode
    has_transparency = "transparency" in im.info
    if mode in _TO_RGBA_MODES or (has_transparency and mode in ("P", "L", "RGB", "1")):
        a = np.asarray(im.convert("RGBA"), dtype=np.float64)
        return Image(a[..., :3].copy(), a[..., 3].copy())
    if mode in _TO_RGB_MODES:
        return Image(np.asarray(im.convert("RGB"), dtype=np.float64), None)
    if mode == "I" or mode.startswith("I;16"):
        grey = _scale_integer_mode(np.asarray(im), mode)
        return Image(np.repeat(grey[..., None], 3, axis=2), None)
    if mode == "F":
        grey = _scale_float(np.asarray(im))
        return Image(np.repeat(grey[..., None], 3, axis=2), None)
    try:  # anything newer Pillow may add
        return Image(np.asarray(im.convert("RGB"), dtype=np.float64), None)
    except (ValueError, OSError):
        raise ImageError(f"{what}: Pillow mode {mode!r} cannot be converted to RGB") from None


def _from_array(a, what):
    """An H x W, H x W x 1/2/3/4 array -> Image. uint8 is 0..255, uint16 0..65535, bool 0/1,
    floats 0..1 when their maximum is at most 1, else 0..255."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise ImageError(f"{what}: expected an H x W (x 1, 2, 3 or 4) array, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.float64) * 255.0
    elif a.dtype == np.uint8:
        a = a.astype(np.float64)
    elif a.dtype == np.uint16:
        a = a.astype(np.float64) * (255.0 / 65535.0)
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a.astype(np.float64), 0, 255)
    elif np.issubdtype(a.dtype, np.floating):
        a = _scale_float(a)
    else:
        raise ImageError(f"{what}: unsupported array dtype {a.dtype}")
    colour, alpha = (a[..., :-1], a[..., -1]) if a.shape[2] in (2, 4) else (a, None)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    return Image(np.ascontiguousarray(colour), None if alpha is None else np.ascontiguousarray(alpha))


def load_image(src, what="image"):
    """Path, PIL image or array -> ``Image(rgb, alpha)`` (see the module docstring).

    The colour the network sees is composited over white where the image is transparent;
    ``alpha`` keeps the transparency itself.
    """
    PILImage, ImageOps = _pil()
    if isinstance(src, Image):
        return src
    if isinstance(src, (str, os.PathLike)):
        img = _from_pil(open_image(src, what), f"{what} {os.fspath(src)}")
    elif isinstance(src, PILImage.Image):
        try:
            src.load()
        except Exception as e:
            raise ImageError(f"{what}: the PIL image cannot be decoded ({e})".splitlines()[0]) from None
        img = _from_pil(ImageOps.exif_transpose(src), what)
    else:
        img = _from_array(src, what)
    if img.alpha is not None:
        a = img.alpha[..., None] / 255.0
        img = Image(img.rgb * a + 255.0 * (1.0 - a), img.alpha)  # over white
    return img


# --------------------------------------------------------------------------- resizing
def fit_longest(height, width, size):
    """(h, w) with the longest side ``size`` and the aspect ratio kept (rounded, >= 1)."""
    scale = size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize(a, height, width):
    """Resize an H x W or H x W x C float array to height x width (Lanczos, per channel in
    Pillow's float mode so nothing is quantised). An array already that size is returned as is."""
    PILImage, _ = _pil()
    if a.shape[0] == height and a.shape[1] == width:
        return a
    planes = a[..., None] if a.ndim == 2 else a
    out = np.empty((height, width, planes.shape[2]), dtype=np.float64)
    for c in range(planes.shape[2]):
        ch = PILImage.fromarray(np.ascontiguousarray(planes[..., c], dtype=np.float32), mode="F")
        out[..., c] = np.asarray(ch.resize((width, height), PILImage.LANCZOS), dtype=np.float64)
    out = np.clip(out, 0.0, 255.0)  # Lanczos overshoots at edges
    return out[..., 0] if a.ndim == 2 else out


def resize_labels(rgb, height, width):
    """Resize an image of flat colours (a region map) with nearest-neighbour sampling, so that
    no new colour appears; uint8 H x W x 3 in and out."""
    PILImage, _ = _pil()
    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(PILImage.fromarray(rgb[..., :3]).resize((width, height), PILImage.NEAREST))


def resize_image(img, height, width):
    """Resize both parts of an ``Image``."""
    return Image(resize(img.rgb, height, width), None if img.alpha is None else resize(img.alpha, height, width))


def resize_longest(img, size):
    """Resize an ``Image`` so its longest side is ``size`` (no resampling when it already is)."""
    h, w = img.rgb.shape[:2]
    return resize_image(img, *fit_longest(h, w, size))


# --------------------------------------------------------------------------- writing
def output_format(path):
    """The Pillow format name for an output path's extension; an error for unknown or
    read-only formats, and for a folder that does not exist. Call it before any work."""
    PILImage, _ = _pil()
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = PILImage.registered_extensions().get(ext)
    if not ext or fmt is None or fmt not in PILImage.SAVE:
        raise ImageError(f"cannot tell the image format of output {path!r} from its extension "
                         "(use .png, .jpg, .webp, .tif, .bmp ...)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ImageError(f"output folder does not exist: {folder}")
    if os.path.isdir(path):
        raise ImageError(f"output {path} is a folder")
    return fmt


def to_uint8(a):
    """Float 0..255 -> uint8 (rounded and clipped)."""
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


JPEG_QUALITY = 95  # with no chroma subsampling: Pillow's defaults (75, 4:2:0) smear brush strokes


def save_image(path, rgb, alpha=None, jpeg_quality=JPEG_QUALITY):
    """Write an H x W x 3 image (uint8, or floats 0..255) to ``path`` atomically, in the format
    its extension names. ``alpha`` (H x W) is kept where the format can hold it; otherwise the
    image is composited over white. JPEG is written at ``jpeg_quality`` with full-resolution
    colour (4:4:4); PNG and the other lossless formats are unaffected. Returns the path."""
    PILImage, _ = _pil()
    fmt = output_format(path)
    params = {"quality": int(jpeg_quality), "subsampling": 0} if fmt == "JPEG" else {}
    rgb = np.asarray(rgb)
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ImageError(f"alpha of shape {alpha.shape} does not fit an image of shape {rgb.shape}")
    rgb8 = rgb if rgb.dtype == np.uint8 else to_uint8(rgb)
    if alpha is not None:
        a8 = alpha if alpha.dtype == np.uint8 else to_uint8(alpha)
        rgba = PILImage.fromarray(np.dstack([rgb8, a8]), mode="RGBA")
    flat = PILImage.fromarray(rgb8, mode="RGB")

    def write(tmp):
        if alpha is not None:
            try:
                rgba.save(tmp, format=fmt, **params)
                return
            except (OSError, ValueError, KeyError):  # the format has no alpha (e.g. JPEG)
                pass
            a = a8[..., None].astype(np.float64) / 255.0
            over_white = to_uint8(rgb8 * a + 255.0 * (1.0 - a))
            PILImage.fromarray(over_white, mode="RGB").save(tmp, format=fmt, **params)
        else:
            flat.save(tmp, format=fmt, **params)

    try:
        return atomic_write(path, write)
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot write {path}: {e}".splitlines()[0]) from None
