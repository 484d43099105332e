"""What a ``stylize`` run is asked to do, checked in one place before any heavy work.

``StylizeOptions`` holds every keyword of ``nstlite.stylize`` with its default;
``StylizeOptions.validated(n_styles)`` turns the forms a caller may give (comma strings, single
numbers, dicts) into one normal form and raises a one-line ``NstliteError`` for anything that
cannot be run. The parsers of comma-separated numbers and layer lists live here too, so the
command line, the figures and the API read them alike.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from . import colors
from . import image as im
from .backend import DEVICES
from .errors import NstliteError
from .losses import parse_style_losses

# Defaults (see README.md, "Defaults, and why", for how they were chosen).
DEFAULT_SIZE = 512
DEFAULT_ITERATIONS = 500
DEFAULT_CONTENT_WEIGHT = 1.0      # alpha
DEFAULT_TV_WEIGHT = 0.0
BOUNDS = ("pixels", "none")  # the optimiser's box: the input range, or none (plain L-BFGS)
DEFAULT_LBFGS_HISTORY = 10
DEFAULT_INIT = "content"
DEFAULT_PRINT_EVERY = 10
DEFAULT_CONTENT_LAYERS = ("conv4_2",)
DEFAULT_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
INIT_KINDS = ("content", "noise", "uniform", "style")
# How beta is read (see docs/style_weight.md): "positions" scales it at each scale by the content
# layers' positions relative to the same photo at REFERENCE_SIZE px (the content loss, eq. 1, is a
# sum over positions and grows with the image, E_l does not), so a beta means the same balance at
# every size, the paper's at REFERENCE_SIZE; "reference" adds the size the look is set at: the run
# starts at REFERENCE_SIZE and goes up by octaves (below it, the result is resized down), because
# the deep layers' receptive fields are a fixed number of pixels; "paper" is eq. (7) exactly.
STYLE_WEIGHT_SCALINGS = ("positions", "reference", "paper")
DEFAULT_STYLE_WEIGHT_SCALING = "positions"
REFERENCE_SIZE = 256
# Bounds that keep a run meaningful: a weight above MAX_WEIGHT overflows float32 losses (about
# 3.4e38) for any image; a side above MAX_SIDE is more than any image format holds.
MAX_WEIGHT = 1e15
MAX_SIDE = 65535


# --------------------------------------------------------------------------- parsers
def parse_numbers(text, what: str, kind: Callable = float) -> list:
    """``"256,512"`` -> ``[256, 512]``; a one-line error for anything else, or for nothing.

    ``text`` may also be a sequence of numbers (returned converted by ``kind``).
    """
    items = str(text).replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        values = [kind(t) for t in items if t != ""]
    except (TypeError, ValueError):
        raise NstliteError(f"{what} must be numbers separated by commas, e.g. 1e-5,1e-4; got {text!r}") from None
    if not values:
        raise NstliteError(f"{what} is empty")
    return values


def parse_layers(spec, default: Sequence[str] = (), known: Sequence[str] | None = None) -> list:
    """Layer names from None (``default``), a comma string or a sequence of names.

    known : when given, every name must be one of these (a one-line error names the others).
    """
    if spec is None:
        spec = default
    if isinstance(spec, str):
        spec = spec.split(",")
    names = [str(s).strip() for s in spec if str(s).strip()]
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise NstliteError(f"unknown layer(s) {', '.join(unknown) or '(none given)'}; use layer names "
                               f"such as {','.join(DEFAULT_STYLE_LAYERS)}")
    return names


def parse_layer_weights(spec, default: Sequence[str] = ()) -> dict[str, float]:
    """Style layers with their w_l (eq. 5).

    ``spec`` may be None (the default layers), a comma string ``"conv1_1:0.2,conv2_1,..."``, a
    sequence of names (optionally ``name:weight``), or a dict name -> weight. Names without a
    weight share equally a total of 1 over the layers given; explicit weights are kept as given.
    """
    if isinstance(spec, dict):
        items = [(str(k), float(v)) for k, v in spec.items()]
    else:
        items = [_name_and_weight(entry) for entry in parse_layers(spec, default)]
    if not items:
        return {}
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise NstliteError(f"a layer is listed twice in {', '.join(names)}")
    share = 1.0 / len(items)
    weights = {n: (share if w is None else w) for n, w in items}
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise NstliteError("layer weights must be finite and non-negative")
    return weights


def _name_and_weight(entry):
    name, _, weight = entry.partition(":")
    try:
        return name.strip(), (float(weight) if weight else None)
    except ValueError:
        raise NstliteError(f"bad layer weight in {entry!r}; write name:weight, e.g. conv1_1:0.2") from None


# --------------------------------------------------------------------------- the options
@dataclass
class StylizeOptions:
    """Every keyword of ``nstlite.stylize``, with its default.

    Parameters
    ----------
    size : longest side of the result in pixels (no resampling when the content already is)
    iterations : L-BFGS iterations at each scale, or a list of one per scale (coarse to fine,
        e.g. "200,100,50" with three scales)
    content_weight, style_weight : alpha and beta of eq. (7); 0 drops that term. The default
        beta (None) is the style loss's own (``StyleLoss.default_weight``: 1e4 for the paper's
        Gram loss, alpha/beta = 1e-4; that of the first loss of a combination)
    style_weight_scaling : "positions" (default: beta times the content layers' positions at this
        scale over those of the same photo at ``REFERENCE_SIZE`` = 256 px, so that a beta gives the
        same balance at every size), "reference" (that factor, and the look set at 256 px: the
        run starts there and goes up by octaves to ``size``, ``reference_scales``; a ``size``
        below 256 is run at 256 and the result resized down, so a small preview predicts a large
        result; docs/style_weight.md) or "paper" (eq. 7 exactly). The log's content and style are
        the paper's unweighted sums in every mode
    content_layers : names, or a comma string
    style_layers : names, ``"conv1_1:0.2,..."`` or dict name -> w_l (default equal, sum 1)
    style_blend_weights : one weight per style image (normalised to sum 1), or a comma string
    style_scale : style images are resized to style_scale * size (longest side)
    init : "content", "noise" (white noise as in the paper's code: the mean pixel plus Gaussian
        noise, sigma ``problem.NOISE_SIGMA`` = 20 levels), "uniform" (uniform noise over 0..255),
        "style", or a path/PIL image/array
    seed : for the noise inits
    pooling : "avg" (the paper) or "max"
    tv_weight : total-variation weight (0: none, as in the paper)
    lbfgs_history : L-BFGS memory
    bounds : "pixels" (the default): L-BFGS-B keeps every pixel in the network's input range;
        "none": plain L-BFGS, unbounded, the result clipped to the range when it is written (as
        PyTorch tools do). The box makes L-BFGS-B's own work per iteration 1.8-2.4x what it
        is without (docs/performance.md); the objective is the same
    original_colors : None, "luminance" or "histogram" (Gatys et al. 2017)
    scales : e.g. (256, 512) or "256,512": optimise at each longest side in turn, upsampling in
        between; overrides ``size``. "auto": from about 256 px up to ``size`` in steps of 2x
        (``auto_scales``); with ``tile="auto"`` tiles engage at the scales that need them
    weights : weights file (default ``~/.cache/nstlite/vgg19.h5``)
    net : an already loaded ``VGG19`` (overrides weights, pooling and device)
    device : one of ``nstlite.backend.DEVICES``
    log : path of a JSON-lines log (one object per evaluation)
    save_every, checkpoint_prefix : every N iterations write ``<prefix>_<iteration>.png`` and
        ``.npz`` (the exact float state; the prefix defaults to the output's stem)
    print_every, quiet, stream : progress lines (to ``stream``, default stderr)
    callback : called as ``callback(info)`` after each iteration, info a dict with iteration,
        evaluation, scale, size, x (network input), image (uint8) and losses; True stops
    resume : a checkpoint ``.npz`` to continue from
    output : write the result there (atomically); on Ctrl-C the best image so far is written
    max_evaluations : limit on loss evaluations per scale (default 2 * iterations + 20)
    style_loss : a style loss of ``nstlite.losses.STYLE_LOSSES`` ("gram", the paper's; "mean_std",
        "gaussian_w2", "histogram", "sliced_wasserstein"), ``package.module:Class``, or a weighted
        combination such as ``"gram:1,histogram:0.5"``
    sw_directions : directions of the sliced Wasserstein loss (default: one per channel)
    region_map : spatial control (Gatys et al. 2017): an image of flat colours, the size of the
        content, labelling its regions (path, PIL image or array)
    region_styles : with ``region_map``, dict colour -> style image(s) for that region, e.g.
        ``{"#87ceeb": "starry_night.jpg", "#808080": ["a.jpg", "b.jpg"]}`` (the styles of the
        run are then these; ``styles`` must be empty)
    erode_regions : a position counts for a region only when its receptive field lies in it
    tile : None (the whole image at once), an inner tile size in pixels (a multiple of 16 to
        conv5_1) for the exact tiled evaluation of ``nstlite.tiled``, or "auto" (tiles only when
        the whole image does not fit in the memory available)
    check_memory_limit : refuse a run whose peak estimate exceeds the memory available (on the GPU:
        the device's share against its free memory, the host's against host memory)
    tile_crops : with tiles, crop each layer of a tile to what its inner responses need: about
        20 % faster, float32 gradients then as far from the untiled ones as a change of kernel
        (3.6e-4 against 9.2e-7 at 512 px, ``nstlite.tiled``)
    memory_limit : at most this much memory for the run: bytes, or a string such as "3.5G" or
        "800M" (K, M, G, T are powers of 1024; a plain number is GiB). It lowers the memory
        available to the pre-flight check and to ``tile="auto"``, which then picks the largest
        tile that fits under it
    preview : an image path rewritten with the current result every ``print_every`` iterations
    jpeg_quality : 1..100, the quality of JPEG outputs and checkpoint pictures (written without
        chroma subsampling); other formats are lossless or ignore it
    overwrite : replace an existing ``output``, ``log`` or checkpoint file. The default (False)
        refuses them before any work, as the command line does without ``--overwrite``; an
        output that is one of the run's inputs is refused either way

    Notes
    -----
    After ``validated``: ``scales`` is a list of longest sides (``size`` when no scales were
    given; ``reference_scales(size)`` under "reference" scaling), ``content_layers`` a list
    (empty when alpha is 0), ``style_layers`` a dict layer -> w_l (empty when beta is 0 or
    there is no style image), ``style_blend_weights`` a list or None, and ``checkpoint_prefix``
    set whenever ``save_every`` is.
    """

    size: int = DEFAULT_SIZE
    iterations: int = DEFAULT_ITERATIONS
    content_weight: float = DEFAULT_CONTENT_WEIGHT
    style_weight: float | None = None
    style_weight_scaling: str = DEFAULT_STYLE_WEIGHT_SCALING
    content_layers: Any = DEFAULT_CONTENT_LAYERS
    style_layers: Any = DEFAULT_STYLE_LAYERS
    style_blend_weights: Any = None
    style_scale: float = 1.0
    init: Any = DEFAULT_INIT
    seed: int = 0
    pooling: str = "avg"
    tv_weight: float = DEFAULT_TV_WEIGHT
    lbfgs_history: int = DEFAULT_LBFGS_HISTORY
    bounds: str = "pixels"
    original_colors: str | None = None
    scales: Any = None
    weights: Any = None
    net: Any = None
    device: str = "cpu"
    log: Any = None
    save_every: int = 0
    checkpoint_prefix: Any = None
    print_every: int = DEFAULT_PRINT_EVERY
    quiet: bool = False
    callback: Callable | None = None
    resume: Any = None
    output: Any = None
    max_evaluations: int | None = None
    check_memory_limit: bool = True
    memory_limit: Any = None
    tile_crops: bool = False
    stream: Any = None
    style_loss: str = "gram"
    sw_directions: int | None = None
    tile: Any = None
    region_map: Any = None
    region_styles: Any = None
    erode_regions: bool = False
    jpeg_quality: int = im.JPEG_QUALITY
    preview: Any = None
    overwrite: bool = False

    @classmethod
    def from_keywords(cls, keywords: dict) -> StylizeOptions:
        """The options from ``stylize``'s keywords (an unknown one is a TypeError, as in a call)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(keywords) - names)
        if unknown:
            raise TypeError(f"stylize() got an unexpected keyword argument {unknown[0]!r}")
        return cls(**keywords)

    def validated(self, n_styles: int) -> StylizeOptions:
        """The options in normal form, for ``n_styles`` style images; ``NstliteError`` (one
        line) for anything that cannot run. Nothing is read or loaded except the file checks."""
        for path in (self.output, self.preview):
            if path is not None:
                im.output_format(path)
        if self.style_weight_scaling not in STYLE_WEIGHT_SCALINGS:
            raise NstliteError(f"style weight scaling must be one of {', '.join(STYLE_WEIGHT_SCALINGS)}, "
                               f"not {self.style_weight_scaling!r}")
        scales = self._scales()
        iterations = _iterations(self.iterations, len(scales))
        alpha, beta, tv = (_weight(name, v) for name, v in (
            ("content weight", self.content_weight), ("style weight", self._style_weight()),
            ("tv weight", self.tv_weight)))
        if self.original_colors not in (None,) + colors.METHODS:
            raise NstliteError(f"original colors must be one of {', '.join(colors.METHODS)}, "
                               f"not {self.original_colors!r}")
        if self.device not in DEVICES:
            raise NstliteError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if any(s < 1 or s > MAX_SIDE for s in scales):
            raise NstliteError(f"sizes must be positive and at most {MAX_SIDE} pixels, "
                               f"not {','.join(map(str, scales))}")
        self._check_counts()
        content_layers = parse_layers(self.content_layers, DEFAULT_CONTENT_LAYERS) if alpha > 0 else []
        style_layers = parse_layer_weights(self.style_layers, DEFAULT_STYLE_LAYERS) if beta > 0 and n_styles else {}
        if not content_layers and not style_layers:
            raise NstliteError("nothing to optimise: give a style image (or a style weight > 0) "
                               "or a content weight > 0")
        _check_init(self.init)
        if self.bounds not in BOUNDS:
            raise NstliteError(f"bounds must be one of {', '.join(BOUNDS)}, not {self.bounds!r}")
        parse_style_losses(self.style_loss)  # unknown names fail here, before any work
        if (self.region_map is None) != (self.region_styles is None):
            raise NstliteError("spatial control needs both a region map and the styles of its regions")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise NstliteError(f"jpeg quality must be 1..100, not {self.jpeg_quality}")
        if self.sw_directions is not None and int(self.sw_directions) < 1:
            raise NstliteError(f"sw directions must be >= 1, not {self.sw_directions}")
        return replace(self, iterations=iterations, content_weight=alpha, style_weight=beta, tv_weight=tv,
                       tile=_tile(self.tile), memory_limit=parse_memory_size(self.memory_limit),
                       scales=scales, content_layers=content_layers, style_layers=style_layers,
                       lbfgs_history=_integer("lbfgs history", self.lbfgs_history, 1),
                       seed=_integer("seed", self.seed, 0), style_scale=float(self.style_scale),
                       style_blend_weights=self._blend_weights(n_styles), checkpoint_prefix=self._prefix())

    def _scales(self) -> list:
        """The longest side of each scale, coarse to fine."""
        size = _integer("size", self.size, 1)
        if self.style_weight_scaling == "reference":
            if self.scales is not None:
                raise NstliteError(f"style weight scaling 'reference' sets the scales itself ({REFERENCE_SIZE} px, "
                                   "then up by octaves to the size): drop --scales, or use 'positions'")
            return reference_scales(size)
        if self.scales == "auto":
            return auto_scales(size)
        return parse_numbers(self.scales, "scales", int) if self.scales else [size]

    @property
    def result_size(self) -> int | None:
        """The longest side the result is resized to when it is not the last scale's: a size
        below REFERENCE_SIZE under "reference" scaling (run at REFERENCE_SIZE); else None."""
        if self.style_weight_scaling == "reference" and int(self.size) < REFERENCE_SIZE:
            return int(self.size)
        return None

    def _check_counts(self):
        """The numbers that are not weights: style scale, history, seed, print/save intervals."""
        try:
            style_scale = float(self.style_scale)
        except (TypeError, ValueError):
            raise NstliteError(f"style scale must be a number, not {self.style_scale!r}") from None
        if not (math.isfinite(style_scale) and style_scale > 0):
            raise NstliteError(f"style scale must be finite and > 0, not {self.style_scale}")
        _integer("lbfgs history", self.lbfgs_history, 1)
        _integer("seed", self.seed, 0)
        _integer("print every", self.print_every, 0)
        _integer("save every", self.save_every, 0)
        if self.max_evaluations is not None:
            _integer("max evaluations", self.max_evaluations, 1)

    def _style_weight(self):
        if self.style_weight is not None:
            return self.style_weight
        return parse_style_losses(self.style_loss)[0][0].default_weight

    def _blend_weights(self, n_styles):
        if self.style_blend_weights is None:
            return None
        blend = parse_numbers(self.style_blend_weights, "style blend weights")
        if len(blend) != n_styles:
            raise NstliteError(f"{len(blend)} style blend weights for {n_styles} style images")
        if not all(math.isfinite(b) and b >= 0 for b in blend) or not sum(blend) > 0:
            raise NstliteError(f"style blend weights must be finite, >= 0 and not all 0, not "
                               f"{','.join(f'{b:g}' for b in blend)}")
        return blend

    def _prefix(self):
        if not self.save_every or self.checkpoint_prefix:
            return self.checkpoint_prefix
        if self.output is None:
            raise NstliteError("save_every needs checkpoint_prefix (or output)")
        return os.path.splitext(os.fspath(self.output))[0]

    @property
    def checkpoint_ext(self) -> str:
        """Image format of the checkpoint pictures: the output's, else PNG."""
        return os.path.splitext(os.fspath(self.output))[1] if self.output is not None else ".png"

    def iterations_at(self, index: int) -> int:
        """The iterations of scale ``index`` (``iterations`` is one number for every scale, or a list)."""
        return self.iterations[index] if isinstance(self.iterations, list) else self.iterations

    @property
    def loss_layers(self) -> list:
        """The content and style layers, in that order, each once."""
        return list(dict.fromkeys(list(self.content_layers) + list(self.style_layers)))


def parse_region_styles(spec) -> dict:
    """``{"#87ceeb": "a.jpg"}`` or ``["#87ceeb=a.jpg,b.jpg", ...]`` -> dict '#rrggbb' -> [images]."""
    items = spec.items() if isinstance(spec, dict) else [_region_item(entry) for entry in spec]
    out = {}
    for label, images in items:
        colour = normal_colour(label)
        images = [images] if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)) \
            else list(images)
        if colour in out:
            raise NstliteError(f"region {colour} is given twice")
        if not images:
            raise NstliteError(f"region {colour} has no style image")
        out[colour] = images
    if not out:
        raise NstliteError("no region styles given")
    return out


def _region_item(entry):
    label, sep, images = str(entry).partition("=")
    if not sep or not images:
        raise NstliteError(f"write a region style as COLOUR=IMAGE[,IMAGE...], e.g. '#87ceeb=sky.jpg'; not {entry!r}")
    return label, [p for p in images.split(",") if p]


def normal_colour(label) -> str:
    """'#87CEEB', '87ceeb' -> '#87ceeb'; a one-line error for anything else."""
    text = str(label).strip().lower().lstrip("#")
    if len(text) != 6 or any(c not in "0123456789abcdef" for c in text):
        raise NstliteError(f"a region is named by its colour in the region map, as #rrggbb; not {label!r}")
    return "#" + text


COARSEST_AUTO_SCALE = 256  # px: where ``scales="auto"`` starts (about; the steps are exactly 2x)


def auto_scales(size: int) -> list:
    """Coarse to fine up to ``size`` in steps of exactly 2x, from the first size below
    2 * COARSEST_AUTO_SCALE: 2048 -> 256, 512, 1024, 2048; 700 -> 350, 700; 300 -> 300."""
    scales = [int(size)]
    while scales[0] >= 2 * COARSEST_AUTO_SCALE:
        scales.insert(0, (scales[0] + 1) // 2)
    return scales


def reference_scales(size: int, start: int = REFERENCE_SIZE) -> list:
    """The scales of "reference" scaling: ``start`` (REFERENCE_SIZE), doubling while below
    ``size``, then ``size``: 512 -> 256, 512; 700 -> 256, 512, 700; 256 and below -> 256 (a
    smaller result is resized down from it). The deep layers' receptive fields are a fixed
    number of pixels (conv4_1's about 100), so the large-scale strokes a result gets depend on
    the size it is optimised at; starting every run at one size fixes them (docs/style_weight.md)."""
    scales = [start]
    while 2 * scales[-1] < size:
        scales.append(2 * scales[-1])
    return scales + [size] if size > scales[-1] else scales


def _iterations(spec, n_scales: int):
    """One number of iterations for every scale, or one per scale (coarse to fine)."""
    values = parse_numbers(spec, "iterations", int) if isinstance(spec, (str, list, tuple)) else [spec]
    values = [_integer("iterations", v, 0) for v in values]
    if len(values) == 1:
        return values[0]
    if len(values) != n_scales:
        raise NstliteError(f"{len(values)} iteration counts for {n_scales} scales: give one, or one per scale")
    return values


_MEMORY_UNITS = {"": 2**30, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory_size(spec) -> int | None:
    """None, a number of bytes, or "3.5G" / "800M" / "2GiB" / "1.5" (GiB) -> bytes."""
    if spec is None or isinstance(spec, int) and not isinstance(spec, bool):
        value = spec
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*", str(spec).upper())
        if not match:
            raise NstliteError(f"memory limit must be a size such as 3.5G or 800M, not {spec!r}")
        value = int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])
    if value is not None and value < 2**20:
        raise NstliteError(f"memory limit must be at least 1M, not {spec!r}")
    return value


def _tile(tile):
    """None, "auto" or a positive number of pixels (the network checks the multiple)."""
    if tile in (None, 0, "0", "none", "off"):
        return None
    if tile == "auto":
        return "auto"
    try:
        tile = int(tile)
    except (TypeError, ValueError):
        raise NstliteError(f"tile must be a number of pixels or auto, not {tile!r}") from None
    if tile < 0:
        raise NstliteError(f"tile must be positive, not {tile}")
    return tile or None


def _weight(name, value):
    """A loss weight: a number in [0, MAX_WEIGHT]."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise NstliteError(f"{name} must be a number, not {value!r}") from None
    if not 0 <= value <= MAX_WEIGHT:  # NaN fails both comparisons
        raise NstliteError(f"{name} must be between 0 and {MAX_WEIGHT:g}, not {value:g}")
    return value


def _integer(name, value, minimum):
    """A whole number >= ``minimum`` (floats that are whole are accepted, 2.0 -> 2)."""
    try:
        number = int(value)
        whole = float(value) == number
    except (TypeError, ValueError, OverflowError):
        raise NstliteError(f"{name} must be a whole number, not {value!r}") from None
    if not whole:
        raise NstliteError(f"{name} must be a whole number, not {value!r}")
    if number < minimum:
        raise NstliteError(f"{name} must be >= {minimum}, not {number}")
    return number


def _check_init(init):
    """An init named by a string is one of INIT_KINDS or an existing image file."""
    if isinstance(init, (str, os.PathLike)) and os.fspath(init) not in INIT_KINDS:
        im.check_input_file(init, f"init (one of {', '.join(INIT_KINDS)} or an image file)")
