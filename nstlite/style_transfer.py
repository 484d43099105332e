"""``nstlite.stylize`` and the ``nstlite stylize`` command: the paper's algorithm end to end.

Gatys, Ecker & Bethge (2015), section 2: start from an image (the paper: white noise), and
change its pixels by gradient-based optimisation (L-BFGS) until its VGG19 responses match the
photograph's at the content layer (eq. 1) and the artwork's Gram matrices at the style layers
(eqs. 4-5), with the two weighted by alpha and beta (eq. 7).

Pipeline: load images (``nstlite.image``) -> resize -> optional colour control
(``nstlite.colors``) -> targets P^l and A^l (``nstlite.objective``) -> L-BFGS-B inside the
pixel box (``nstlite.optimize``) -> deprocess -> save atomically.
"""
import json
import math
import os
import signal
import sys
import time

import numpy as np

from . import colors
from . import image as im
from .backend import DEVICES, to_device, to_host
from .errors import NstliteError
from .objective import build_objective
from .optimize import STOP_INTERRUPTED, minimize_lbfgsb

# Defaults (see README.md, "Defaults, and why", for how they were chosen).
DEFAULT_SIZE = 512
DEFAULT_ITERATIONS = 500
DEFAULT_CONTENT_WEIGHT = 1.0      # alpha
DEFAULT_STYLE_WEIGHT = 1e4        # beta: alpha / beta = 1e-4, one of the paper's Fig. 3 ratios
DEFAULT_TV_WEIGHT = 0.0
DEFAULT_LBFGS_HISTORY = 10
DEFAULT_INIT = "content"
DEFAULT_PRINT_EVERY = 10
DEFAULT_CONTENT_LAYERS = ("conv4_2",)
DEFAULT_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
INIT_KINDS = ("content", "noise", "style")
STATE_FORMAT = "nstlite-checkpoint"


class StylizeInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during ``stylize``: ``.result`` holds the best image so far (already
    written to ``.result.output`` when an output path was given)."""

    def __init__(self, result):
        super().__init__("interrupted")
        self.result = result


class StylizeResult:
    """What ``stylize`` returns.

    image : H x W x 3 uint8 (H x W x 4 when the content had alpha); x : final network input,
    (3, H, W) float64 host array; history : one dict per evaluation (the --log lines); final :
    the losses of the returned image; iterations, evaluations, seconds, stop_reason; output :
    the path written (or None); checkpoints : paths of checkpoint files written.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        return (f"StylizeResult(image={self.image.shape}, iterations={self.iterations}, "
                f"evaluations={self.evaluations}, stop_reason={self.stop_reason!r}, "
                f"total={self.final.get('total')})")


# --------------------------------------------------------------------------- option parsing
def parse_layer_weights(spec, default):
    """Style layers with their w_l (eq. 5).

    ``spec`` may be None (the default layers), a comma string ``"conv1_1:0.2,conv2_1,..."``, a
    sequence of names, or a dict name -> weight. Names without a weight get equal weights summing
    to 1 over the layers given; weights given explicitly are kept as they are.
    """
    if spec is None:
        spec = default
    if isinstance(spec, dict):
        items = [(str(k), float(v)) for k, v in spec.items()]
    else:
        if isinstance(spec, str):
            spec = [s for s in (p.strip() for p in spec.split(",")) if s]
        items = []
        for entry in spec:
            name, _, w = str(entry).partition(":")
            try:
                items.append((name.strip(), float(w) if w else None))
            except ValueError:
                raise NstliteError(f"bad layer weight in {entry!r}; write name:weight, e.g. conv1_1:0.2") from None
    if not items:
        return {}
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise NstliteError(f"a layer is listed twice in {', '.join(names)}")
    share = 1.0 / len(items)
    out = {n: (share if w is None else w) for n, w in items}
    if any(w < 0 or not math.isfinite(w) for w in out.values()):
        raise NstliteError("layer weights must be finite and non-negative")
    return out


def parse_layers(spec, default):
    """Content layers: None (default), a comma string, or a sequence of names."""
    if spec is None:
        spec = default
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    return [str(s) for s in spec]


def parse_numbers(text, what, kind=float):
    """'256,512' -> [256, 512] with a one-line error on anything else."""
    try:
        return [kind(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise NstliteError(f"{what} must be comma-separated numbers, not {text!r}") from None


# --------------------------------------------------------------------------- memory estimate
def available_memory_bytes():
    """MemAvailable from /proc/meminfo, or None where that cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def estimate_peak_bytes(channels, height, width, depth_layers, loss_layers, history=DEFAULT_LBFGS_HISTORY,
                        itemsize=4, overhead=160 * 2**20):
    """Estimated peak memory of one optimisation at height x width, in bytes, for the default
    channels-last VGG19 path (``nstlite.vgg``, ``nstlite.fast``).

    channels : dict conv name -> output channels, in VGG order, for every loaded conv layer;
    depth_layers : VGG layer names in order up to the deepest one used; loss_layers : the
    content and style layers; overhead : the interpreter, NumPy/SciPy/Pillow and decoded images.

    Fixed part: the Winograd transforms U of the layers that run (36 values per 9-tap kernel:
    4x the kernel), one kernel (the weights file is mapped: a kernel's pages are resident only
    while its U is made, ``nstlite.weights.release_pages``) and the shared conv workspace
    (~33 MiB).
    Per size, in ``itemsize`` bytes per value: the two ping-pong map buffers, each as large as
    the largest zero-padded map; one boolean ReLU mask per conv (1 byte per value); for each loss
    layer the feature copy handed out (which its gradient overwrites) and the content target or
    a temporary (2 maps); the host side in float64: L-BFGS-B's 2 * history correction pairs and
    about a dozen image-sized vectors. The per-size part carries a 15 % margin.

    Measured against it (real VGG19, whole process, ``/usr/bin/time -v``, L-BFGS history
    full): 0.97 GB at 512x384 (estimate 1.01 GB) and 0.48 GB at 256x192 (estimate 0.57 GB).
    """
    fixed, c_in, largest_kernel = 33 * 2**20, 3, 0
    for name, c_out in channels.items():
        kernel = 9 * c_in * c_out * itemsize
        if name in depth_layers:
            fixed += 4 * kernel
            largest_kernel = max(largest_kernel, kernel)
        c_in = c_out
    fixed += largest_kernel
    h, w, c = height, width, 3
    largest, masks, loss = (h + 2) * (w + 2) * c, 0, 0
    for name in depth_layers:
        if name.startswith("pool"):
            h, w = h // 2, w // 2
            continue
        c = channels[name]
        largest = max(largest, (h + 2) * (w + 2) * c)
        masks += c * h * w
        if name in loss_layers:
            loss += 2 * c * h * w
    n = 3 * height * width
    per_size = 2 * largest * itemsize + masks + loss * itemsize + (2 * history + 12) * n * 8
    return int(fixed + 1.15 * per_size + overhead)


def _net_channels(net):
    return {name: int(wb[0].shape[0]) for name, wb in net.weights.items()}


def _depth_layers(net, layers):
    deepest = max(net.layer_names.index(n) for n in layers)
    return net.layer_names[: deepest + 1]


def largest_fitting_size(fits, height, width, upper):
    """Largest longest-side size <= upper for which ``fits(h, w)`` is true (0 when none)."""
    lo, hi = 0, int(upper)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(*im.fit_longest(height, width, mid)):
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_memory(net, height, width, layers, loss_layers, history, available=None):
    """Refuse (one line, with the largest size that fits) when the estimate exceeds the memory
    available. Returns the estimate in bytes."""
    channels = _net_channels(net)
    depth = _depth_layers(net, layers)
    itemsize = net.dtype.itemsize

    def need(h, w):
        return estimate_peak_bytes(channels, h, w, depth, loss_layers, history, itemsize)

    estimate = need(height, width)
    if available is None:
        available = available_memory_bytes()
    if available is not None and estimate > available:
        biggest = largest_fitting_size(lambda h, w: need(h, w) <= available, height, width, max(height, width))
        hint = (f"use --size {biggest} or less" if biggest >= 16 else "free some memory")
        raise NstliteError(f"{width}x{height} needs about {estimate / 2**30:.1f} GiB but only "
                           f"{available / 2**30:.1f} GiB is available; {hint}")
    return estimate


# --------------------------------------------------------------------------- helpers
def _min_side(net, layers):
    """Smallest input side the network can take to reach the deepest layer: 2^(pools before it)."""
    return 2 ** sum(1 for n in _depth_layers(net, layers) if n.startswith("pool"))


def _fmt_time(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _resolve_init(init, content_rgb, style_rgbs, seed):
    """The starting image (H x W x 3 float 0..255) for one of INIT_KINDS, a path, PIL image
    or array."""
    h, w = content_rgb.shape[:2]
    if isinstance(init, str) and init in INIT_KINDS:
        if init == "content":
            return content_rgb.copy()
        if init == "noise":  # the paper's white noise image: independent uniform pixels
            return np.random.default_rng(seed).uniform(0.0, 255.0, size=(h, w, 3))
        if not style_rgbs:
            raise NstliteError("init 'style' needs a style image")
        return im.resize(style_rgbs[0], h, w)
    return im.resize(im.load_image(init, "init image").rgb, h, w)


class _Evaluator:
    """The SciPy boundary: float64 host vector -> (loss, float64 gradient, losses dict).

    One device->host copy per evaluation: the gradient and the loss terms travel together.
    """

    def __init__(self, objective, net, shape, style_names):
        self.objective, self.net, self.shape, self.style_names = objective, net, shape, style_names

    def __call__(self, x_flat):
        xp = self.net.xp
        x = to_device(x_flat.reshape(self.shape), self.net.device, self.net.dtype)
        total, dx, parts = self.objective(x)
        terms = [parts["total"], parts["content"], parts["style"], parts["tv"]]
        terms += [parts["style_layers"][n] for n in self.style_names]
        scalars = xp.stack([xp.asarray(t, dtype=dx.dtype) for t in terms])
        packed = to_host(xp.concatenate([dx.ravel(), scalars]))  # the one device->host copy
        n = dx.size
        g = packed[:n].astype(np.float64)
        vals = [float(v) for v in packed[n:]]
        info = {"total": vals[0], "content": vals[1], "style": vals[2], "tv": vals[3],
                "style_layers": dict(zip(self.style_names, vals[4:]))}
        return vals[0], g, info


def _load_checkpoint(path):
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            x = np.asarray(z["x"], dtype=np.float64)
    except FileNotFoundError:
        raise NstliteError(f"checkpoint not found: {path}") from None
    except Exception as e:
        raise NstliteError(f"{path} is not an nstlite checkpoint ({type(e).__name__})") from None
    if meta.get("format") != STATE_FORMAT:
        raise NstliteError(f"{path} is not an nstlite checkpoint")
    return x, meta


# --------------------------------------------------------------------------- the API
def stylize(content, styles, *, size=DEFAULT_SIZE, iterations=DEFAULT_ITERATIONS,
            content_weight=DEFAULT_CONTENT_WEIGHT, style_weight=DEFAULT_STYLE_WEIGHT,
            content_layers=DEFAULT_CONTENT_LAYERS, style_layers=DEFAULT_STYLE_LAYERS, style_blend_weights=None,
            style_scale=1.0, init=DEFAULT_INIT, seed=0, pooling="avg", tv_weight=DEFAULT_TV_WEIGHT,
            lbfgs_history=DEFAULT_LBFGS_HISTORY, original_colors=None, scales=None, weights=None, net=None,
            device="cpu", log=None, save_every=0, checkpoint_prefix=None, print_every=DEFAULT_PRINT_EVERY,
            quiet=False, callback=None, resume=None, output=None, max_evaluations=None, check_memory_limit=True,
            stream=None):
    """Stylise ``content`` with ``styles`` (Gatys et al. 2015). Returns a ``StylizeResult``.

    Parameters
    ----------
    content : path, PIL image or H x W x 3/4 array (alpha is kept in the result)
    styles : a path/image/array or a list of them; ``[]`` means no style term (content
        reconstruction, the paper's Fig. 1 content panels)
    size : longest side of the result in pixels (no resampling when the content already is)
    iterations : L-BFGS iterations (per scale with ``scales``)
    content_weight, style_weight : alpha and beta of eq. (7); 0 drops that term
    content_layers : names, or a comma string
    style_layers : names, ``"conv1_1:0.2,..."`` or dict name -> w_l (default equal, sum 1)
    style_blend_weights : one weight per style image (normalised to sum 1)
    style_scale : style images are resized to style_scale * size (longest side)
    init : "content", "noise" (white noise), "style", or a path/PIL image/array
    seed : for the noise init
    pooling : "avg" (the paper) or "max"
    tv_weight : total-variation weight (0: none, as in the paper)
    lbfgs_history : L-BFGS memory
    original_colors : None, "luminance" or "histogram" (Gatys et al. 2017)
    scales : e.g. (256, 512): optimise at each longest side in turn, upsampling in between;
        overrides ``size``
    weights : weights file (default ``~/.cache/nstlite/vgg19.h5``); net : an already loaded
        ``VGG19`` (overrides weights, pooling and device)
    log : path of a JSON-lines log (one object per evaluation)
    save_every, checkpoint_prefix : every N iterations write ``<prefix>_<iteration>.png`` and
        ``.npz`` (the exact float state); resume : such an ``.npz`` to continue from
    print_every, quiet, stream : progress lines (to ``stream``, default stderr)
    callback : called as ``callback(info)`` after each iteration, info a dict with iteration,
        evaluation, scale, size, x (network input) and image (uint8); returning True stops
    output : write the result there (atomically); on Ctrl-C the best image so far is written
    """
    t_start = time.perf_counter()
    out = sys.stderr if stream is None else stream

    def say(msg):
        if not quiet:
            print(msg, file=out, flush=True)

    # ---- validate everything cheap before any heavy work
    if output is not None:
        im.output_format(output)
    if styles is None:
        styles = []
    elif not isinstance(styles, (list, tuple)):
        styles = [styles]
    iterations = int(iterations)
    if iterations < 0:
        raise NstliteError("iterations must be >= 0")
    content_weight, style_weight, tv_weight = float(content_weight), float(style_weight), float(tv_weight)
    for name, v in (("content weight", content_weight), ("style weight", style_weight), ("tv weight", tv_weight)):
        if v < 0 or not math.isfinite(v):
            raise NstliteError(f"{name} must be finite and >= 0, not {v}")
    if original_colors not in (None,) + colors.METHODS:
        raise NstliteError(f"original colors must be one of {', '.join(colors.METHODS)}, not {original_colors!r}")
    if device not in DEVICES:
        raise NstliteError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if save_every and not checkpoint_prefix:
        if output is None:
            raise NstliteError("save_every needs checkpoint_prefix (or output)")
        checkpoint_prefix = os.path.splitext(os.fspath(output))[0]
    ckpt_ext = os.path.splitext(os.fspath(output))[1] if output is not None else ".png"
    if scales:
        scales = [int(s) for s in scales]
    else:
        scales = [int(size)]
    if any(s < 1 for s in scales):
        raise NstliteError("sizes must be positive")
    if style_scale <= 0:
        raise NstliteError("style scale must be > 0")
    c_layers = parse_layers(content_layers, DEFAULT_CONTENT_LAYERS) if content_weight > 0 else []
    s_weights = parse_layer_weights(style_layers, DEFAULT_STYLE_LAYERS) if (style_weight > 0 and styles) else {}
    if not c_layers and not s_weights:
        raise NstliteError("nothing to optimise: give a style image (or a style weight > 0) or a content weight > 0")
    if style_blend_weights is not None:
        if isinstance(style_blend_weights, str):
            style_blend_weights = parse_numbers(style_blend_weights, "style blend weights")
        style_blend_weights = [float(b) for b in style_blend_weights]
        if len(style_blend_weights) != len(styles):
            raise NstliteError(f"{len(style_blend_weights)} style blend weights for {len(styles)} style images")
    resume_state = _load_checkpoint(resume) if resume is not None else None

    content_img = im.load_image(content, "content image")
    style_imgs = [im.load_image(s, f"style image {i + 1}" if len(styles) > 1 else "style image")
                  for i, s in enumerate(styles)]

    if net is None:
        from .vgg import load_vgg19
        # only the conv layers up to the deepest loss layer are read (conv5_1 by default)
        net = load_vgg19(weights, pooling=pooling, device=device, layers=c_layers + list(s_weights))
    all_layers = list(dict.fromkeys(c_layers + list(s_weights)))
    net._depth(all_layers)  # unknown layer names fail here, before any work
    min_side = _min_side(net, all_layers)

    log_file = None
    if log is not None:
        try:
            log_file = open(os.fspath(log), "a" if resume_state else "w", encoding="utf-8")
        except OSError as e:
            raise NstliteError(f"cannot open log file {log}: {e.strerror}") from None

    # ---- shapes of every scale, checked before any optimisation
    h0, w0 = content_img.rgb.shape[:2]
    shapes = [im.fit_longest(h0, w0, s) for s in scales]
    for (h, w), s in zip(shapes, scales):
        if min(h, w) < min_side:
            raise NstliteError(f"the content image at size {s} is {w}x{h}; the network needs at least "
                               f"{min_side}x{min_side} to reach {all_layers[-1] if all_layers else 'its layers'} "
                               f"({min_side}x downsampling): use a larger --size")
    if check_memory_limit and net.device == "cpu":
        h, w = shapes[-1]
        estimate = check_memory(net, h, w, all_layers, all_layers, lbfgs_history)
    else:
        estimate = None

    low, high = net.input_bounds()
    history, checkpoints = [], []
    eval_offset, iter_offset = 0, 0
    first_scale, start_iteration, x_start = 0, 0, None
    if resume_state is not None:
        x_saved, meta = resume_state
        first_scale = int(meta.get("scale_index", 0))
        if first_scale >= len(shapes) or tuple(x_saved.shape) != (3,) + tuple(shapes[first_scale]):
            raise NstliteError(f"checkpoint {resume} holds a {x_saved.shape[2]}x{x_saved.shape[1]} image, "
                               "which does not match this content image and size")
        start_iteration = int(meta.get("iteration", 0))
        eval_offset = int(meta.get("evaluations", 0))
        x_start = x_saved
        say(f"resuming from {resume}: iteration {start_iteration}")

    # Every scale's content and style images, resized now: the full-resolution decodes (8 bytes
    # a value, 19 MB for a 1024 x 768 photo, 290 MB for a 12-megapixel one) are dropped before
    # the optimisation allocates anything.
    style_longs = [max(1, int(round(style_scale * s))) for s in scales]
    scaled_inputs = {si: (im.resize_image(content_img, *shapes[si]),
                          [im.resize_longest(s, style_longs[si]).rgb for s in style_imgs])
                     for si in range(first_scale, len(shapes))}
    del content_img, style_imgs

    result_x, result_info, stop_reason, total_iters, total_evals = None, {}, None, 0, 0
    rgb_for_output = None
    content_rgb_final = None
    alpha_final = None
    interrupted = False
    try:
        for si in range(first_scale, len(shapes)):
            h, w = shapes[si]
            c_img, style_rgbs = scaled_inputs.pop(si)
            content_rgb = c_img.rgb
            s_long = style_longs[si]
            for i, srgb in enumerate(style_rgbs):
                if min(srgb.shape[:2]) < min_side:
                    raise NstliteError(f"style image {i + 1} at {s_long} px is {srgb.shape[1]}x{srgb.shape[0]}; "
                                       f"the network needs at least {min_side}x{min_side}: raise --style-scale")
            # colour control (Gatys et al. 2017)
            net_content = content_rgb
            if original_colors == "histogram":
                style_rgbs = [colors.match_color_histogram(s, content_rgb) for s in style_rgbs]
            elif original_colors == "luminance":
                cy = colors.luminance(content_rgb)
                net_content = colors.grey_rgb(cy)
                style_rgbs = [colors.grey_rgb(colors.match_luminance(colors.luminance(s), cy)) for s in style_rgbs]

            # the terms and their targets: P^l (eq. 1) and A^l (eq. 3)
            xc = net.preprocess(net_content)
            objective = build_objective(net, xc, [net.preprocess(s) for s in style_rgbs], c_layers, s_weights,
                                        content_weight, style_weight, tv_weight, blend_weights=style_blend_weights)

            # starting point
            if x_start is not None and si == first_scale:
                x0 = x_start
            elif si > first_scale:
                x0 = to_host(net.preprocess(im.resize(net.deprocess_float(result_x), h, w))).astype(np.float64)
            else:
                init_rgb = _resolve_init(init, net_content, style_rgbs, seed)
                if original_colors == "luminance":
                    init_rgb = colors.grey_rgb(colors.luminance(init_rgb))
                x0 = to_host(net.preprocess(init_rgb)).astype(np.float64)
            lo = np.broadcast_to(np.asarray(low, dtype=np.float64)[:, None, None], x0.shape).ravel()
            hi = np.broadcast_to(np.asarray(high, dtype=np.float64)[:, None, None], x0.shape).ravel()

            def finish_rgb(x, content_rgb=content_rgb):
                rgb = net.deprocess_float(x)
                if original_colors == "luminance":
                    rgb = colors.combine_luminance(rgb, content_rgb)
                return rgb

            def to_image(x, c_img=c_img, finish_rgb=finish_rgb):
                rgb8 = im.to_uint8(finish_rgb(x))
                if c_img.alpha is None:
                    return rgb8
                return np.dstack([rgb8, im.to_uint8(c_img.alpha)])

            evaluator = _Evaluator(objective, net, x0.shape, list(s_weights))
            n_scale = len(shapes)
            tag = f"[{w}x{h} {si + 1}/{n_scale}] " if n_scale > 1 else ""
            t_scale = time.perf_counter()
            todo = iterations - (start_iteration if si == first_scale else 0)
            done0 = start_iteration if si == first_scale else 0
            say(f"{tag}stylizing {w}x{h}: {todo} iterations, {len(style_rgbs)} style image(s), "
                f"alpha={content_weight:g} beta={style_weight:g} tv={tv_weight:g}, init="
                f"{init if isinstance(init, str) else 'array'}"
                + (f", ~{estimate / 2**30:.2f} GiB peak estimate" if estimate and si == first_scale else ""))
            last_info = {}

            def on_evaluation(it, ev, f, info, si=si, t_scale=t_scale):
                rec = {"iteration": it, "evaluation": ev + eval_offset, "seconds": round(time.perf_counter() - t_start, 4),
                       **info}
                if n_scale > 1:
                    rec["scale"] = scales[si]
                history.append(rec)
                last_info.clear()
                last_info.update(rec)
                if log_file is not None:
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()

            def on_iteration(it, ev, x_flat, si=si, t_scale=t_scale, todo=todo, done0=done0, tag=tag,
                             to_image=to_image, shape=x0.shape):
                elapsed = time.perf_counter() - t_scale
                done = it - done0
                if print_every and (it % print_every == 0 or it == done0 + todo or done == 1):
                    rate = done / elapsed if elapsed > 0 else 0.0
                    eta = (todo - done) / rate if rate > 0 else 0.0
                    li = last_info
                    say(f"{tag}it {it:>5}/{done0 + todo}  evals {ev + eval_offset:>5}  total {li.get('total', 0):.4e}  "
                        f"content {li.get('content', 0):.3e}  style {li.get('style', 0):.3e}  tv {li.get('tv', 0):.3e}  "
                        f"{rate:.2f} it/s  ETA {_fmt_time(eta)}")
                if save_every and it % save_every == 0:
                    x = x_flat.reshape(shape)
                    stem = f"{checkpoint_prefix}_{it}" if n_scale == 1 else f"{checkpoint_prefix}_s{scales[si]}_{it}"
                    img = to_image(x)
                    im.save_image(stem + ckpt_ext, img[..., :3], img[..., 3] if img.shape[2] == 4 else None)
                    meta = {"format": STATE_FORMAT, "version": 1, "iteration": it, "evaluations": ev + eval_offset,
                            "scale_index": si, "size": scales[si], "height": shape[1], "width": shape[2]}
                    im.atomic_write(stem + ".npz", lambda tmp: np.savez(tmp, x=x, meta=json.dumps(meta)))
                    checkpoints.extend([stem + ckpt_ext, stem + ".npz"])
                if callback is not None:
                    x = x_flat.reshape(shape)
                    return bool(callback({"iteration": it, "evaluation": ev + eval_offset, "scale": scales[si],
                                          "size": (shape[1], shape[2]), "x": x, "image": to_image(x),
                                          "losses": dict(last_info)}))
                return False

            res = minimize_lbfgsb(evaluator, x0.ravel(), lo, hi, max(todo, 0), history=lbfgs_history,
                                  max_evaluations=max_evaluations, on_evaluation=on_evaluation,
                                  on_iteration=on_iteration, start_iteration=done0)
            eval_offset += res.evaluations
            total_evals += res.evaluations
            total_iters += res.iterations - done0
            result_x = res.x.reshape(x0.shape)
            if res.info is not None:
                result_info = dict(res.info)
            else:  # nothing was evaluated (0 iterations): evaluate the start once
                result_info = evaluator(res.x)[2]
            stop_reason = res.stop_reason
            content_rgb_final, alpha_final, to_image_final = content_rgb, c_img.alpha, to_image
            if res.restarts:
                say(f"{tag}note: L-BFGS-B restarted {res.restarts} time(s) from the best point ({res.message})")
            if stop_reason == STOP_INTERRUPTED:
                interrupted = True
                break
            if stop_reason not in ("iterations",) and si < len(shapes) - 1:
                say(f"{tag}stopped early ({stop_reason}); going on to the next scale")
    finally:
        if log_file is not None:
            log_file.close()

    image = to_image_final(result_x)
    seconds = time.perf_counter() - t_start
    result = StylizeResult(image=image, x=np.asarray(result_x, dtype=np.float64), history=history,
                           final=result_info, iterations=total_iters, evaluations=total_evals, seconds=seconds,
                           stop_reason=stop_reason, output=None, checkpoints=checkpoints,
                           alpha=alpha_final, content_rgb=content_rgb_final)
    if output is not None:
        im.save_image(output, image[..., :3], image[..., 3] if image.shape[2] == 4 else None)
        result.output = os.fspath(output)
    fin = result_info
    say(f"done: {total_iters} iterations, {total_evals} evaluations in {_fmt_time(seconds)} "
        f"({stop_reason})")
    say(f"final losses: total {fin.get('total', float('nan')):.4e}  content {fin.get('content', float('nan')):.4e}  "
        f"style {fin.get('style', float('nan')):.4e}  tv {fin.get('tv', float('nan')):.4e}")
    if result.output:
        say(f"wrote {result.output} ({image.shape[1]}x{image.shape[0]} {'RGBA' if image.shape[2] == 4 else 'RGB'})")
    if interrupted:
        raise StylizeInterrupted(result)
    return result


# --------------------------------------------------------------------------- command line
def _add_stylize_options(p):
    p.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help="longest side of the result in pixels (default %(default)s)")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help="L-BFGS iterations (per scale with --scales; default %(default)s)")
    p.add_argument("--content-weight", type=float, default=DEFAULT_CONTENT_WEIGHT,
                   help="alpha of eq. 7 (default %(default)g)")
    p.add_argument("--style-weight", type=float, default=DEFAULT_STYLE_WEIGHT,
                   help="beta of eq. 7 (default %(default)g)")
    p.add_argument("--content-layers", default=",".join(DEFAULT_CONTENT_LAYERS),
                   help="comma-separated (default %(default)s)")
    p.add_argument("--style-layers", default=",".join(DEFAULT_STYLE_LAYERS),
                   help="comma-separated, optionally name:weight (default %(default)s, equal weights)")
    p.add_argument("--style-blend-weights", default=None, help="one weight per --style, e.g. 0.7,0.3")
    p.add_argument("--style-scale", type=float, default=1.0,
                   help="style images are resized to this times --size (default %(default)g)")
    p.add_argument("--init", default=DEFAULT_INIT,
                   help="content | noise | style | PATH of an image (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise init (default %(default)s)")
    p.add_argument("--pooling", choices=("avg", "max"), default="avg", help="default avg, as in the paper")
    p.add_argument("--tv-weight", type=float, default=DEFAULT_TV_WEIGHT,
                   help="total-variation weight (default %(default)g)")
    p.add_argument("--lbfgs-history", type=int, default=DEFAULT_LBFGS_HISTORY,
                   help="L-BFGS memory (default %(default)s)")
    p.add_argument("--original-colors", choices=colors.METHODS, default=None,
                   help="keep the photograph's colours: luminance-only transfer, or match the style's colours")
    p.add_argument("--scales", default=None, help="coarse to fine, e.g. 256,512 (overrides --size)")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="every N iterations write OUTPUT_<it>.<ext> and OUTPUT_<it>.npz (exact state)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue from a .npz checkpoint")
    p.add_argument("--print-every", type=int, default=DEFAULT_PRINT_EVERY, metavar="N",
                   help="progress line every N iterations (0: none; default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress or summary lines")
    p.add_argument("--weights", default=None, help="weights file (default ~/.cache/nstlite/vgg19.h5)")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--log", default=None, metavar="FILE", help="JSON lines, one per evaluation")


def _run_cli(args, content, styles, output, **extra):
    """Run ``stylize`` for the CLI: SIGTERM behaves like Ctrl-C, whose best image is saved."""
    scales = parse_numbers(args.scales, "--scales", int) if args.scales else None
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        result = stylize(
            content, styles, size=args.size, iterations=args.iterations, content_weight=args.content_weight,
            style_weight=args.style_weight, content_layers=args.content_layers, style_layers=args.style_layers,
            style_blend_weights=args.style_blend_weights, style_scale=args.style_scale, init=args.init,
            seed=args.seed, pooling=args.pooling, tv_weight=args.tv_weight, lbfgs_history=args.lbfgs_history,
            original_colors=args.original_colors, scales=scales, weights=args.weights, device=args.device,
            log=args.log, save_every=args.save_every, print_every=args.print_every, quiet=args.quiet,
            resume=args.resume, output=output, **extra)
    except StylizeInterrupted as e:
        print(f"nstlite: interrupted after {e.result.iterations} iterations; best image so far saved to "
              f"{e.result.output}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if result.stop_reason not in ("iterations", "converged", "callback"):
        print(f"nstlite: note: stopped after {result.iterations} iterations ({result.stop_reason}); "
              "the best image found was saved", file=sys.stderr)
    return 0


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def _cmd_stylize(args):
    init = args.init
    if init not in INIT_KINDS and not os.path.exists(init):
        raise NstliteError(f"--init must be content, noise, style or an image file; {init!r} is none of these")
    return _run_cli(args, args.content, args.style, args.output)


def register_cli(subparsers):
    p = subparsers.add_parser(
        "stylize", help="stylise a photograph with one or more artworks",
        description="Gatys, Ecker & Bethge (2015): optimise an image with L-BFGS-B so that its VGG19 "
                    "responses match the photograph's content and the artworks' style.")
    p.add_argument("--content", required=True, help="photograph (any image Pillow reads)")
    p.add_argument("--style", required=True, action="append", help="artwork; repeat for several")
    p.add_argument("--output", required=True, help="result image; the format follows the extension")
    _add_stylize_options(p)
    p.set_defaults(func=_cmd_stylize)

    from . import demo
    demo.register_cli(subparsers, _add_stylize_options, _run_cli)
