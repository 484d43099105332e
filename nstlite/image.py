"""Images in and out: every Pillow mode to RGB floats, resizing, and atomic writing.

This is host-side code (NumPy only): images are small next to the network's feature maps and
cross to the device once, through ``VGG19.preprocess``.

Reading turns whatever the user has into an ``Image`` pair ``(rgb, alpha)``:

* ``rgb``   H x W x 3 float32 in 0..255 (floats, so 16-bit and float sources keep their
  precision through resizing; float32, as the resizing and the network are, so that a
  12-megapixel photo decodes to 150 MB, not 300 MB);
* ``alpha`` H x W float32 in 0..255, or ``None`` when the source has no transparency.

8-bit and 16-bit values are exact in float32; the 16-bit scaling and the compositing of 8-bit
colour over white are written so that float32 gives the exact result rounded once, which is
what a float64 decode gave once resized (the resizing has always been float32).

Decisions, so that nothing is damaged silently:

* EXIF orientation is applied (a phone photo comes out the way up its owner sees it).
* Palette images expand through their palette; palette transparency becomes alpha.
* 16-bit modes (``I;16*``) are scaled by 255/65535; mode ``I`` (32-bit integers) is read as
  16-bit when its values fit, else scaled by its own maximum; mode ``F`` (float) is read as
  0..1 when its maximum is at most 1, else as 0..255 (values outside are clipped).
* CMYK, YCbCr, LAB and HSV go through Pillow's own converters to RGB.
* Transparency: the network sees the colour composited over white (hidden colours under
  alpha 0 are often garbage and would leak into the result); the alpha channel itself is kept
  and given back to the output of a content image, whose colour is turned back into straight
  (not premultiplied, not composited) colour by ``straight_colour``, so that a viewer's own
  compositing over white shows what the network saw - not white composited twice.
* Float pixels that are NaN or infinite are refused (there is no honest value to give them).
* Before decoding, the memory the decoded image will take (from the size the file declares) is
  checked against the memory available: a small file declaring a huge image is refused, not
  allocated.
"""
import os
import warnings
from collections import namedtuple

import numpy as np

from .atomic import atomic_write, trial_write
from .errors import NstliteError
from .paths import file_kind, shown

Image = namedtuple("Image", "rgb alpha")

# Modes whose RGB conversion Pillow does correctly (colour-space conversions included).
_TO_RGB_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
# Modes with an alpha channel, converted through RGBA ("La"/"RGBa" are premultiplied).
_TO_RGBA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
# Most pixels we decode (a decompression-bomb guard; Pillow's default warning threshold).
MAX_PIXELS = 89_478_485
# Bytes per pixel a decode takes at its peak, at most: Pillow's own buffer (up to 4 bytes), its
# RGB(A) conversion (4; none for an RGB or RGBA source), the 8-bit copy NumPy reads it from (up
# to 4) and the float32 colour and alpha planes (16). Measured (peak RSS, 4096 x 3072): 19 for
# an RGB JPEG, 24 for an RGBA PNG.
DECODE_BYTES_PER_PIXEL = 28


class ImageError(NstliteError):
    """An image cannot be read or written. The message is one line."""


def _pil():
    from PIL import Image as PILImage
    from PIL import ImageOps

    return PILImage, ImageOps


# --------------------------------------------------------------------------- reading
def check_input_file(path, what="file"):
    """``path`` as a string when it names a non-empty regular file; else an ``ImageError`` (one
    line) saying it is missing, a folder, a FIFO or device, or empty. Every input file is
    checked by this one function."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"{what} not found: {shown(path)}")
    kind = file_kind(path)
    if kind is not None:  # a FIFO or a device would block or never end
        raise ImageError(f"{what} {shown(path)} is {kind}, not a regular file")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{what} {shown(path)} is an empty file")
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
                    raise ImageError(f"{what} {shown(path)} is {w}x{h} pixels, more than the {MAX_PIXELS} "
                                     "accepted (a decompression bomb?); scale it down first")
                check_decode_memory(w, h, f"{what} {shown(path)}")
                im.load()  # decode now: truncated files fail here, not later
                im = ImageOps.exif_transpose(im)
                return im
    except ImageError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise ImageError(f"{what} {shown(path)} is too large to decode safely (a decompression bomb?); "
                         "scale it down first") from None
    except PILImage.UnidentifiedImageError:
        raise ImageError(f"{what} {shown(path)} is not an image file Pillow can read") from None
    except MemoryError:
        raise ImageError(f"{what} {shown(path)}: not enough memory to decode it; scale it down first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{what} {shown(path)} is truncated or damaged ({shown(msg)})") from None


def check_decode_memory(width: int, height: int, what: str) -> None:
    """Refuse (one line) an image whose decode would not fit in the memory available
    (``nstlite.memory.available_memory_bytes``: MemAvailable and the address-space limit)."""
    from .memory import available_memory_bytes  # memory imports this module

    need = int(width) * int(height) * DECODE_BYTES_PER_PIXEL
    available = available_memory_bytes()
    if available is not None and need > available:
        raise ImageError(f"{what} is {width}x{height} pixels; decoding it needs about {need / 2**30:.1f} GiB "
                         f"but only {available / 2**30:.1f} GiB is available; scale it down first")


# 255 / 65535 is exactly 1 / 257: dividing by 257 rounds once, where multiplying by a rounded
# 255 / 65535 would round twice (and differ from float64 in the last bit).
_SIXTEEN_BIT_DIVISOR = 257


def _scale_integer_mode(a, mode):
    """Integer pixel values of a high-bit-depth mode -> float32 in 0..255."""
    if mode.startswith("I;16"):
        out = a.astype(np.float32)
        out /= _SIXTEEN_BIT_DIVISOR
        return out
    top = int(a.max(initial=0))  # mode "I": 32-bit ints, in practice 16-bit data
    out = np.clip(a, 0, None).astype(np.float32)
    if top <= 65535:
        out /= _SIXTEEN_BIT_DIVISOR
    else:
        out *= np.float32(255.0 / top)
    return out


def _scale_float(a, what):
    """Float pixel values -> float32 in 0..255: read as 0..1 when the maximum is at most 1, else
    as 0..255. NaN or infinite values are refused: any number put in their place would be made
    up. ``a`` is never changed (the scaling works on its float32 copy)."""
    bad = np.count_nonzero(~np.isfinite(a))
    if bad:
        raise ImageError(f"{what} has {bad} NaN or infinite pixel value(s); replace them before using it")
    in_unit_range = a.max(initial=0.0) <= 1.0  # the source's maximum, before float32 rounds it
    with np.errstate(over="ignore"):  # finite values beyond float32's range become inf, clipped to 255
        out = a.astype(np.float32)
    if in_unit_range:
        out *= 255.0
    return np.clip(out, 0.0, 255.0, out=out)


def _from_pil(im, what):
    """A decoded PIL image -> Image(rgb float32 0..255, alpha or None). 8-bit modes are read as
    uint8 and converted once, so no full-size intermediate wider than float32 is made."""
    if im.mode == "La":  # premultiplied; Pillow converts it only to LA
        im = im.convert("LA")
    mode = im.mode
    has_transparency = "transparency" in im.info
    if mode in _TO_RGBA_MODES or (has_transparency and mode in ("P", "L", "RGB", "1")):
        rgba = np.asarray(_converted(im, "RGBA"))  # uint8: the float32 planes are made from it directly
        return Image(rgba[..., :3].astype(np.float32), rgba[..., 3].astype(np.float32))
    if mode in _TO_RGB_MODES:
        return Image(np.asarray(_converted(im, "RGB"), dtype=np.float32), None)
    if mode == "I" or mode.startswith("I;16"):
        grey = _scale_integer_mode(np.asarray(im), mode)
        return Image(np.repeat(grey[..., None], 3, axis=2), None)
    if mode == "F":
        grey = _scale_float(np.asarray(im), what)
        return Image(np.repeat(grey[..., None], 3, axis=2), None)
    try:  # anything newer Pillow may add
        return Image(np.asarray(im.convert("RGB"), dtype=np.float32), None)
    except (ValueError, OSError):
        raise ImageError(f"{what}: Pillow mode {mode!r} cannot be converted to RGB") from None


def _converted(im, mode):
    """``im`` in ``mode``; itself when it is in that mode already (Pillow's convert would copy it,
    4 bytes a pixel more at the decode's peak)."""
    return im if im.mode == mode else im.convert(mode)


def _from_array(a, what):
    """An H x W, H x W x 1/2/3/4 array -> Image (float32). uint8 is 0..255, uint16 0..65535,
    bool 0/1, other integers 0..255 (clipped), floats 0..1 when their maximum is at most 1, else
    0..255. The array given is never changed."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise ImageError(f"{what}: expected an H x W (x 1, 2, 3 or 4) array, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
        a *= 255.0
    elif a.dtype == np.uint8:
        a = a.astype(np.float32)
    elif a.dtype == np.uint16:
        a = a.astype(np.float32)
        a /= _SIXTEEN_BIT_DIVISOR
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255).astype(np.float32)
    elif np.issubdtype(a.dtype, np.floating):
        a = _scale_float(a, what)
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
        img = _from_pil(open_image(src, what), f"{what} {shown(src)}")
    elif isinstance(src, PILImage.Image):
        try:
            src.load()
        except Exception as e:
            raise ImageError(f"{what}: the PIL image cannot be decoded ({e})".splitlines()[0]) from None
        img = _from_pil(ImageOps.exif_transpose(src), what)
    else:
        img = _from_array(src, what)
    if img.alpha is not None:
        img = Image(_over_white(img.rgb, img.alpha), img.alpha)
    return img


def _over_white(rgb, alpha):
    """``rgb`` composited over white with ``alpha`` (both 0..255), in place in the float32
    ``rgb``: rgb a + 255 (1 - a) with a = alpha / 255, written as (rgb alpha + 255 (255 - alpha))
    / 255 so that for 8-bit values the numerator is an exact integer and the division rounds
    once (the float64 result rounded to float32, bit for bit)."""
    alpha = alpha[..., None]
    white = 255.0 - alpha  # one plane-sized temporary
    white *= 255.0
    rgb *= alpha
    rgb += white
    rgb /= 255.0
    return rgb


# --------------------------------------------------------------------------- resizing
def fit_longest(height, width, size):
    """(h, w) with the longest side ``size`` and the aspect ratio kept (rounded, >= 1)."""
    scale = size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize(a, height, width):
    """Resize an H x W or H x W x C float array to height x width: float32 (Lanczos, per channel
    in Pillow's float mode, float32, so nothing is quantised). An array already that size is
    returned as is."""
    if a.shape[0] == height and a.shape[1] == width:
        return a
    planes = a[..., None] if a.ndim == 2 else a
    out = np.empty((height, width, planes.shape[2]), dtype=np.float32)
    for c in range(planes.shape[2]):
        out[..., c] = _resized_plane(planes[..., c], height, width)
    np.clip(out, 0.0, 255.0, out=out)  # Lanczos overshoots at edges
    return out[..., 0] if a.ndim == 2 else out


def _resized_plane(plane, height, width):
    """One H x W plane resized (Lanczos, Pillow's float32 mode 'F'). A function of its own so
    that the plane's two full-size copies (contiguous float32, Pillow's) are freed before the
    next plane's are made."""
    PILImage, _ = _pil()
    source = PILImage.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.asarray(source.resize((width, height), PILImage.LANCZOS))


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
        raise ImageError(f"cannot tell the image format of output {shown(path)!r} from its extension "
                         "(use .png, .jpg, .webp, .tif, .bmp ...)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ImageError(f"output folder does not exist: {shown(folder)}")
    if os.path.isdir(path):
        raise ImageError(f"output {shown(path)} is a folder")
    return fmt


def to_uint8(a):
    """Float 0..255 -> uint8 (rounded and clipped)."""
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


JPEG_QUALITY = 95  # with no chroma subsampling: Pillow's defaults (75, 4:2:0) smear brush strokes


def straight_colour(composite, alpha):
    """The straight colour whose compositing over white with ``alpha`` is ``composite`` (the
    inverse of what ``load_image`` does; H x W x 3 and H x W floats 0..255), float32 in
    0..255: 255 + 255 (composite - 255) / alpha. Fully transparent pixels keep ``composite``
    (any colour is right there). Float32 is ample for colours rounded to 8 bits next."""
    alpha = np.asarray(alpha, dtype=np.float32)[..., None]
    rgb = np.array(composite, dtype=np.float32)  # a copy: ``composite`` is kept where alpha is 0
    with np.errstate(divide="ignore", invalid="ignore"):
        rgb -= 255.0
        rgb *= 255.0
        rgb /= alpha
        rgb += 255.0
    np.clip(rgb, 0.0, 255.0, out=rgb)
    np.copyto(rgb, composite, where=~(alpha > 0), casting="same_kind")
    return rgb


def _writer(fmt, rgb8, a8, jpeg_quality=JPEG_QUALITY):
    """``write(tmp)``: the image in ``fmt``, with alpha where the format holds it, else over white;
    JPEG at ``jpeg_quality`` with full-resolution colour (4:4:4)."""
    PILImage, _ = _pil()
    params = {"quality": int(jpeg_quality), "subsampling": 0} if fmt == "JPEG" else {}

    def write(tmp):
        if a8 is not None:
            try:
                PILImage.fromarray(np.dstack([rgb8, a8]), mode="RGBA").save(tmp, format=fmt, **params)
                return
            except (OSError, ValueError, KeyError):  # the format has no alpha (e.g. JPEG)
                pass
            over_white = to_uint8(_over_white(rgb8.astype(np.float32), a8.astype(np.float32)))
            PILImage.fromarray(over_white, mode="RGB").save(tmp, format=fmt, **params)
        else:
            PILImage.fromarray(rgb8, mode="RGB").save(tmp, format=fmt, **params)

    return write


def _write_failure(path, e):
    if isinstance(e, OSError) and e.strerror:
        return ImageError(f"cannot write {shown(path)}: {e.strerror}")
    return ImageError(f"cannot write {shown(path)}: {shown(str(e).splitlines()[0] if str(e) else type(e).__name__)}")


def save_image(path, rgb, alpha=None, jpeg_quality=JPEG_QUALITY):
    """Write an H x W x 3 image (uint8, or floats 0..255) to ``path`` atomically, in the format
    its extension names. ``alpha`` (H x W) is kept where the format can hold it; otherwise the
    image is composited over white. JPEG is written at ``jpeg_quality`` with full-resolution
    colour (4:4:4); PNG and the other lossless formats are unaffected. Returns the path."""
    fmt = output_format(path)
    rgb = np.asarray(rgb)
    a8 = None
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ImageError(f"alpha of shape {alpha.shape} does not fit an image of shape {rgb.shape}")
        a8 = alpha if alpha.dtype == np.uint8 else to_uint8(alpha)
    rgb8 = rgb if rgb.dtype == np.uint8 else to_uint8(rgb)
    try:
        return atomic_write(path, _writer(fmt, rgb8, a8, jpeg_quality))
    except (OSError, ValueError, KeyError) as e:
        raise _write_failure(path, e) from None


def check_writable(path, height: int, width: int, alpha: bool = False) -> None:
    """Before any work: write a blank ``height`` x ``width`` image in ``path``'s format under the
    temporary name ``save_image`` will use, and remove it. An ``ImageError`` (one line) for
    anything that would make the real write fail - a format Pillow registers but cannot write
    in this mode (``.xbm``, ``.msp``, stub plugins such as ``.h5``), a size the format cannot
    hold, a name too long for the file system, a read-only folder. ``path`` is never touched."""
    fmt = output_format(path)
    rgb8 = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    a8 = np.full((int(height), int(width)), 255, dtype=np.uint8) if alpha else None
    try:
        trial_write(path, _writer(fmt, rgb8, a8))
    except Exception as e:  # whatever a plugin's encoder raises, the real write would raise too
        raise _write_failure(path, e) from None
