"""One scale of a ``stylize`` run as an optimisation problem: minimise L_total(x) inside a box.

``build_problem`` takes the photograph and artworks already resized for this scale and makes

1. colour control (Gatys et al. 2017, ``nstlite.colors``): what the network sees of each image;
2. the objective (eq. 7) with its targets P^l (eq. 1) and A^l (eq. 3);
3. the starting image x0: the init, a resumed state, or the previous scale's result upsampled;
4. the box: the network-input values of pixel values 0 and 255, per channel.

``Evaluator`` is the SciPy boundary: float64 host vector in, (loss, float64 gradient, losses)
out, with one device-to-host copy per evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import colors, guides
from . import image as im
from .backend import to_device, to_host
from .errors import NstliteError
from .objective import Objective, Region, build_objective
from .options import INIT_KINDS, REFERENCE_SIZE, StylizeOptions


@dataclass
class ScaleProblem:
    """What L-BFGS-B solves at one scale (see the module docstring).

    content : the photograph at this scale as the result needs it (its alpha; its colours only
    in luminance mode, else None); style_count : the number of artworks;
    x0 : (3, H, W) float64 start (``release_start`` hands it over to the optimiser); lower,
    upper : the box bounds, (3, 1, 1) per channel (broadcast, never image-sized copies).
    """

    net: object
    index: int
    size: int
    content: im.Image
    style_count: int
    objective: Objective
    x0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    style_names: list[str]
    original_colors: str | None = None
    shape: tuple = ()

    def __post_init__(self):
        self.shape = tuple(self.x0.shape)

    def release_start(self) -> np.ndarray:
        """The start, dropped from the problem: the optimiser copies it into its own vectors, and
        at 4096 px a float64 image is 300 MB."""
        x0, self.x0 = self.x0, None
        return x0

    def evaluator(self) -> Evaluator:
        return Evaluator(self.objective, self.net, self.shape, self.style_names)

    def image(self, x) -> np.ndarray:
        """Network input -> H x W x 3 uint8 (x 4 with the photograph's alpha, the colour then
        straight: ``image.straight_colour``), colours restored in luminance mode."""
        rgb = self.net.deprocess_float(np.reshape(x, self.shape))
        if self.original_colors == "luminance":
            rgb = colors.combine_luminance(rgb, self.content.rgb)
        if self.content.alpha is None:
            return im.to_uint8(rgb)
        # the network saw the photograph over white: give back the straight colour under its alpha
        alpha = self.content.alpha
        return np.dstack([im.to_uint8(im.straight_colour(rgb, alpha)), im.to_uint8(alpha)])


def build_problem(net, opts: StylizeOptions, index: int, content: im.Image, style_rgbs, start_x=None,
                  previous_x=None, tile=None) -> ScaleProblem:
    """The problem of scale ``index`` (see the module docstring).

    content, style_rgbs : the images resized for this scale; start_x : a resumed (3, H, W)
    state; previous_x : the previous scale's result (upsampled to this scale's size); tile :
    this scale's tile size or None (untiled), as ``stylize`` resolved it (``memory.scale_tile``).
    """
    size = opts.scales[index]
    _check_style_sizes(net, opts, style_rgbs, index)
    net_content, style_rgbs = colour_control(opts.original_colors, content.rgb, style_rgbs)
    objective = build_scale_objective(net, net.preprocess(net_content), style_rgbs, opts, tile)
    h, w = content.rgb.shape[:2]
    if start_x is not None:
        x0 = np.asarray(start_x, dtype=np.float64)
    elif previous_x is not None:
        x0 = _to_network(net, im.resize(net.deprocess_float(previous_x), h, w))
    else:
        init_rgb = initial_rgb(opts.init, net_content, style_rgbs, opts.seed, mean_rgb=mean_rgb(net))
        if opts.original_colors == "luminance":
            init_rgb = colors.grey_rgb(colors.luminance(init_rgb))
        x0 = _to_network(net, init_rgb)
    low, high = (np.asarray(b, dtype=np.float64)[:, None, None] for b in net.input_bounds())
    # what the result needs of the photograph: its alpha, and its colours only for luminance mode
    # (the float32 images would otherwise stay for the whole optimisation, 12 bytes a pixel each)
    kept = im.Image(content.rgb if opts.original_colors == "luminance" else None, content.alpha)
    return ScaleProblem(net=net, index=index, size=size, content=kept, style_count=len(style_rgbs),
                        objective=objective, x0=x0, lower=low, upper=high, style_names=list(opts.style_layers),
                        original_colors=opts.original_colors)


def build_scale_objective(net, content_x, style_rgbs, opts: StylizeOptions, tile=None):
    """The objective of eq. (7) for one scale, its targets P^l (eq. 1) and A^l (eq. 3) made
    from the photograph and the artworks as the network sees them; evaluated by tiles of
    ``tile`` pixels (None: untiled)."""
    style_xs = [net.preprocess(s) for s in style_rgbs] if opts.style_layers else []
    regions = scale_regions(opts, content_x.shape[1:], style_xs) if opts.region_styles and style_xs else None
    beta = opts.style_weight * style_weight_factor(net, opts, content_x.shape[1:])
    return build_objective(net, content_x, style_xs, opts.content_layers, opts.style_layers, opts.content_weight,
                           beta, opts.tv_weight, style_loss=opts.style_loss,
                           blend_weights=opts.style_blend_weights, tile=tile, tile_crops=opts.tile_crops,
                           regions=regions,
                           erode=opts.erode_regions,
                           style_loss_options={"seed": opts.seed, "directions": opts.sw_directions})


def style_weight_factor(net, opts: StylizeOptions, shape) -> float:
    """What beta is multiplied by at a scale of ``shape`` (h, w): 1 for ``style_weight_scaling``
    "paper" (eq. 7 as written) or without content layers; for "positions" and "reference", the
    content layers' positions M_l at this size over their positions for the same photo at
    REFERENCE_SIZE px.

    The content loss (eq. 1) sums over the M_l positions and grows with the image, while E_l
    (eq. 4) is normalised by M_l^2 and does not; scaling beta with M_l keeps their balance, so
    the same options give the same look at every size (the paper's objective at REFERENCE_SIZE).
    """
    if opts.style_weight_scaling == "paper" or not opts.content_layers:
        return 1.0
    h, w = shape
    reference = im.fit_longest(h, w, REFERENCE_SIZE)

    def positions(hw):
        return sum(math.prod(net.map_size(layer, *hw)) for layer in opts.content_layers)

    return positions((h, w)) / max(1, positions(reference))


def scale_regions(opts: StylizeOptions, shape, style_xs) -> list:
    """The regions of one scale: the region map resized to ``shape`` (nearest, so its colours
    stay flat), one ``Region`` per colour with that colour's artworks."""
    h, w = shape
    masks = guides.masks_from_labels(im.resize_labels(opts.region_map, h, w))
    unstyled = sorted(set(masks) - set(opts.region_styles))
    if unstyled:
        raise NstliteError(f"the region map has colour(s) {', '.join(unstyled)} without a style: give each "
                           "--style-region COLOUR=IMAGE")
    missing = sorted(set(opts.region_styles) - set(masks))
    if missing:
        raise NstliteError(f"no pixel of the region map at {w}x{h} has colour(s) {', '.join(missing)}")
    return [Region(masks[c], [style_xs[i] for i in idx], name=c) for c, idx in opts.region_styles.items()]


def colour_control(method: str | None, content_rgb, style_rgbs):
    """(what the network sees of the photograph, of each artwork) for a colour-control method
    of Gatys et al. (2017): None, "histogram" (recolour the artworks) or "luminance" (grey
    images, the artworks' luminance matched to the photograph's)."""
    if method == "histogram":
        return content_rgb, [colors.match_color_histogram(s, content_rgb) for s in style_rgbs]
    if method == "luminance":
        y = colors.luminance(content_rgb)
        return colors.grey_rgb(y), [colors.grey_rgb(colors.match_luminance(colors.luminance(s), y))
                                    for s in style_rgbs]
    return content_rgb, list(style_rgbs)


# The white noise of --init noise: the network's mean pixel plus independent Gaussian noise of this
# standard deviation (0..255 levels). Gatys' code starts from small Gaussian noise around the mean,
# in the network's input space; 20 levels is small beside the image's range (the uniform noise of
# "uniform" has a standard deviation of 74), so the start is a grey field with a fine grain: little
# noise remains for the optimiser to remove where the content loss barely sees it (the pixels a
# deep layer does not pin down), yet two seeds differ at every pixel.
NOISE_SIGMA = 20.0


def mean_rgb(net) -> np.ndarray:
    """The RGB colour (3,) in 0..255 that the network sees as zero input: its mean pixel."""
    return net.deprocess_float(np.zeros((3, 1, 1)))[0, 0]


def initial_rgb(init, content_rgb, style_rgbs, seed: int, mean_rgb=None) -> np.ndarray:
    """The starting image (H x W x 3 float 0..255, the photograph's size) for one of
    INIT_KINDS, a path, a PIL image or an array.

    "noise" is ``mean_rgb`` (default mid-grey 127.5) plus N(0, NOISE_SIGMA^2) per pixel and
    channel, clipped to 0..255; "uniform" is independent uniform pixels over 0..255. Both are
    seeded by ``seed``.
    """
    h, w = content_rgb.shape[:2]
    if isinstance(init, str) and init in INIT_KINDS:
        if init == "content":
            return content_rgb.copy()
        rng = np.random.default_rng(seed)
        if init == "noise":  # the paper's code: small Gaussian noise around the mean image
            centre = np.full(3, 127.5) if mean_rgb is None else np.asarray(mean_rgb, dtype=np.float64)
            return np.clip(centre + rng.normal(0.0, NOISE_SIGMA, size=(h, w, 3)), 0.0, 255.0)
        if init == "uniform":  # white noise over the whole range
            return rng.uniform(0.0, 255.0, size=(h, w, 3))
        if not style_rgbs:
            raise NstliteError("init 'style' needs a style image")
        return im.resize(style_rgbs[0], h, w)
    return im.resize(im.load_image(init, "init image").rgb, h, w)


def scale_shapes(content_shape, scales) -> list:
    """(h, w) of the generated image at each scale: the photograph's aspect, longest side s."""
    h, w = content_shape[:2]
    return [im.fit_longest(h, w, s) for s in scales]


def style_side(opts: StylizeOptions, index: int) -> int:
    """Longest side of the artworks at scale ``index``: style_scale times that scale's size."""
    return max(1, int(round(opts.style_scale * opts.scales[index])))


def scaled_inputs(content: im.Image, style_images, opts: StylizeOptions, first: int = 0) -> dict:
    """index -> (photograph, [artwork rgb...]) resized for every scale from ``first`` on.

    Made before optimising, so that the full-resolution decodes (float32, 4 bytes a value: 150 MB
    for a 12-megapixel photo) can be dropped before the optimisation allocates anything.
    """
    shapes = scale_shapes(content.rgb.shape, opts.scales)
    return {i: (im.resize_image(content, *shapes[i]),
                [im.resize_longest(s, style_side(opts, i)).rgb for s in style_images])
            for i in range(first, len(shapes))}


def min_side(net, layers) -> int:
    """Smallest input side that reaches the deepest of ``layers``: 2^(pools before it)."""
    deepest = max(net.layer_names.index(n) for n in layers)
    return 2 ** sum(1 for n in net.layer_names[: deepest + 1] if n.startswith("pool"))


def _check_style_sizes(net, opts, style_rgbs, index):
    need = min_side(net, opts.loss_layers)
    for i, rgb in enumerate(style_rgbs):
        if min(rgb.shape[:2]) < need:
            raise NstliteError(f"style image {i + 1} at {style_side(opts, index)} px is "
                               f"{rgb.shape[1]}x{rgb.shape[0]}; the network needs at least {need}x{need}: "
                               "raise --style-scale")


def _to_network(net, rgb):
    return to_host(net.preprocess(rgb)).astype(np.float64)


class Evaluator:
    """The SciPy boundary: float64 host vector -> (loss, float64 gradient, losses dict).

    Per evaluation: one host->device copy of x (as the network's dtype, into a buffer kept
    between evaluations), and one device->host copy on the GPU, the gradient and the loss terms
    packed together (one transfer, one sync). The float64 gradient SciPy needs is written into
    a host buffer kept between evaluations (SciPy copies what it keeps). On NumPy nothing is
    packed: the float32 gradient goes straight into that buffer. The loss values are rounded to
    the gradient's dtype on both paths, so the two report the same numbers.
    """

    def __init__(self, objective, net, shape, style_names):
        self.objective, self.net, self.shape, self.style_names = objective, net, shape, style_names
        self._x = None         # the network input, on the device, in the network's dtype
        self._gradient = None  # the float64 host gradient handed to SciPy

    def __call__(self, x_flat):
        xp = self.net.xp
        x = self._device_input(x_flat)
        _, dx, parts = self.objective(x)
        terms = [parts["total"], parts["content"], parts["style"], parts["tv"]]
        terms += [parts["style_layers"][n] for n in self.style_names]
        if self._gradient is None or self._gradient.size != dx.size:
            self._gradient = np.empty(dx.size, dtype=np.float64)
        if xp is np:
            np.copyto(self._gradient, dx.reshape(-1))
            values = [float(np.asarray(t, dtype=dx.dtype)) for t in terms]
        else:
            scalars = xp.stack([xp.asarray(t, dtype=dx.dtype) for t in terms])
            packed = to_host(xp.concatenate([dx.reshape(-1), scalars]))  # the one device->host copy
            np.copyto(self._gradient, packed[:dx.size])
            values = packed[dx.size:].tolist()
        info = {"total": values[0], "content": values[1], "style": values[2], "tv": values[3],
                "style_layers": dict(zip(self.style_names, values[4:]))}
        return values[0], self._gradient, info

    def _device_input(self, x_flat):
        """x as the network's input: (3, H, W) in its dtype on its device, in a kept buffer."""
        x = np.reshape(x_flat, self.shape)
        if self.net.xp is not np:
            return to_device(x, self.net.device, self.net.dtype)
        if self._x is None or self._x.shape != x.shape:
            self._x = np.empty(x.shape, dtype=self.net.dtype)
        np.copyto(self._x, x, casting="same_kind")
        return self._x
