"""``nstlite.stylize``: the paper's algorithm end to end.

Gatys, Ecker & Bethge (2015), section 2: start from an image (the paper: white noise), and
change its pixels by gradient-based optimisation (L-BFGS) until its VGG19 responses match the
photograph's at the content layer (eq. 1) and the artwork's Gram matrices at the style layers
(eqs. 4-5), with the two weighted by alpha and beta (eq. 7).

The steps, each in its own module: check the options (``nstlite.options``) -> load the images
(``nstlite.image``) and the network -> check the sizes and the memory (``nstlite.memory``) ->
per scale, build the problem: colour control, targets P^l and A^l, start, box
(``nstlite.problem``) -> L-BFGS-B inside the pixel box (``nstlite.optimize``), reporting
progress, log, checkpoints and callback (``nstlite.reporter``, ``nstlite.checkpoint``) ->
deprocess -> save atomically.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import image as im
from .atomic import trial_write
from .checkpoint import checkpoint_stem, fingerprint_differences, load_checkpoint, run_fingerprint
from .errors import NstliteError
from .memory import available_memory_bytes, check_run_memory, scale_tile
from .optimize import StopReason, minimize_lbfgsb
from .options import INIT_KINDS, MAX_SIDE, StylizeOptions, parse_region_styles
from .paths import check_outputs, shown
from .problem import build_problem, min_side, scale_shapes, scaled_inputs, style_side
from .reporter import Reporter, run_header
from .weights import default_weights_path


class StylizeFailed(NstliteError):
    """The run made no progress (no iteration completed, or a loss that is not finite): nothing
    was written to the output; ``.result`` holds what there is."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


class StylizeInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during ``stylize``: ``.result`` holds the best image so far (already
    written to ``.result.output`` when an output path was given)."""

    def __init__(self, result):
        super().__init__("interrupted")
        self.result = result


@dataclass
class StylizeResult:
    """What ``stylize`` returns.

    image : H x W x 3 uint8 (H x W x 4 when the content had alpha); x : final network input,
    (3, H, W) float64 host array; history : one dict per evaluation (the --log lines); final :
    the losses of the returned image; iterations, evaluations, seconds, stop_reason; output :
    the path written (or None); checkpoints : paths of checkpoint files written; log_error :
    why the log stopped being written (e.g. a full disk), or None.
    """

    image: np.ndarray
    x: np.ndarray
    history: list[dict]
    final: dict
    iterations: int
    evaluations: int
    seconds: float
    stop_reason: StopReason
    output: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    log_error: str | None = None

    def __repr__(self):
        return (f"StylizeResult(image={self.image.shape}, iterations={self.iterations}, "
                f"evaluations={self.evaluations}, stop_reason={str(self.stop_reason)!r}, "
                f"total={self.final.get('total')})")


@dataclass
class _ScaleOutcome:
    """One scale's optimisation: its problem, best point and counts."""

    problem: object
    x: np.ndarray
    final: dict
    iterations: int
    evaluations: int
    stop_reason: StopReason


def stylize(content, styles, **keywords) -> StylizeResult:
    """Stylise ``content`` with ``styles`` (Gatys et al. 2015).

    Parameters
    ----------
    content : path, PIL image or H x W x 3/4 array (alpha is kept in the result)
    styles : a path/image/array or a list of them; ``[]`` means no style term (content
        reconstruction, the paper's Fig. 1 content panels)
    **keywords : the fields of ``nstlite.options.StylizeOptions`` (size, iterations,
        content_weight, style_weight, content_layers, style_layers, init, seed, scales,
        original_colors, tv_weight, net, weights, device, log, save_every, resume, output,
        callback, quiet ...), each described there

    Returns
    -------
    StylizeResult

    Raises
    ------
    NstliteError
        (one line) for anything that cannot run, before any optimisation.
    StylizeInterrupted
        on Ctrl-C; its ``result`` holds the best image so far, already written to ``output``.
    """
    started = time.perf_counter()
    styles = _as_list(styles)
    keywords, styles = _region_styles_as_styles(keywords, styles)
    opts = StylizeOptions.from_keywords(keywords).validated(len(styles))
    sources = _input_files(content, styles, opts)
    resume = load_checkpoint(opts.resume) if opts.resume is not None else None
    content_img = im.load_image(content, "content image")
    style_imgs = [im.load_image(s, f"style image {i + 1}" if len(styles) > 1 else "style image")
                  for i, s in enumerate(styles)]
    header = run_header(opts, content, styles) if opts.log or opts.save_every or resume else None
    region_source, opts = opts.region_map, _with_region_map(opts, content_img)
    net = _network(opts)
    shapes = _checked_shapes(net, opts, content_img.rgb.shape)
    first = _resume_scale(resume, shapes, opts)
    fingerprint = _fingerprint(opts, content, styles, region_source, resume)
    available = available_memory_bytes(opts.memory_limit)  # host memory, lowered to --memory-limit
    tiles = _scale_tiles(net, opts, shapes, first, available)
    estimate = _memory_estimate(net, opts, shapes, [s.rgb.shape for s in style_imgs], tiles, available)
    check_run_outputs(opts, sources, shapes, first, resume, content_img.alpha is not None)
    with Reporter(opts, started, append_log=resume is not None, header=header) as reporter:
        reporter.fingerprint = fingerprint
        if resume is not None:
            reporter.evaluation_offset = resume.evaluations
            reporter.say(f"resuming from {shown(opts.resume)}: iteration {resume.iteration}")
        inputs = scaled_inputs(content_img, style_imgs, opts, first)
        del content_img, style_imgs  # the full-resolution decodes (see ``scaled_inputs``)
        if opts.result_size is not None:
            reporter.say(f"style weight scaling 'reference': optimising at {opts.scales[-1]} px, the result "
                         f"resized to {opts.result_size} px")
        outcomes = _run_scales(net, opts, inputs, resume, reporter, estimate, tiles)
        result = _result(outcomes, reporter, time.perf_counter() - started, opts.result_size)
    failure = _failure(result, opts, resume, shapes)
    if opts.output is not None and failure is None and _improved(result, opts):
        image = result.image
        im.save_image(opts.output, image[..., :3], image[..., 3] if image.shape[2] == 4 else None,
                      jpeg_quality=opts.jpeg_quality)
        result.output = os.fspath(opts.output)
    result.log_error = reporter.log_error
    reporter.summary(result)
    if failure is not None:
        raise StylizeFailed(failure, result)
    if result.stop_reason == StopReason.INTERRUPTED:
        raise StylizeInterrupted(result)
    return result


def _input_files(content, styles, opts) -> dict:
    """role -> path of every file the run reads (images given as arrays are not files)."""
    def path(src):
        return os.fspath(src) if isinstance(src, (str, os.PathLike)) else None

    files = {"content image": path(content), "region map": path(opts.region_map), "checkpoint": path(opts.resume)}
    files.update({f"style image {i + 1}": path(s) for i, s in enumerate(styles)})
    if not (isinstance(opts.init, str) and opts.init in INIT_KINDS):
        files["init image"] = path(opts.init)
    if opts.net is None:
        files["weights file"] = os.fspath(opts.weights) if opts.weights is not None else default_weights_path()
    return files


def _fingerprint(opts, content, styles, region_source, resume):
    """What the run's objective is made of (``checkpoint.run_fingerprint``), when a checkpoint is
    written or resumed (hashing the weights file costs a second for the real VGG19); a resumed
    checkpoint made of anything else is refused here."""
    if resume is None and not opts.save_every:
        return None
    inputs = {"content image": content, "region map": region_source,
              "weights file": None if opts.net is not None else (opts.weights or default_weights_path())}
    inputs.update({f"style image {i + 1}": s for i, s in enumerate(styles)})
    fingerprint = run_fingerprint(opts, inputs)
    if resume is not None:
        name = shown(opts.resume)
        if resume.fingerprint is None:
            raise NstliteError(f"checkpoint {name} does not record the inputs and options it was made with "
                               "(an older nstlite?), so resuming it cannot be checked; start a new run")
        differences = fingerprint_differences(resume.fingerprint, fingerprint)
        if differences:
            raise NstliteError(f"checkpoint {name} belongs to another run: {'; '.join(differences)}; "
                               "resume with the same inputs and options, or start a new run")
    return fingerprint


def check_run_outputs(opts, sources, shapes, first, resume, alpha) -> None:
    """Before any evaluation, refuse every write that would lose a file or fail after the work:
    an output (``output``, ``log``, every checkpoint name) that is an input or exists without
    ``overwrite`` (``nstlite.paths.check_outputs``), and a trial write of the output image and of
    the longest checkpoint names under their real temporary names (``image.check_writable``)."""
    outputs = {"output": opts.output, "log": opts.log}
    stems = _checkpoint_stems(opts, shapes, first, resume)
    for stem, _ in stems:
        outputs[f"checkpoint {stem}{opts.checkpoint_ext}"] = stem + opts.checkpoint_ext
        outputs[f"checkpoint {stem}.npz"] = stem + ".npz"
    check_outputs(outputs, sources, opts.overwrite, append=("log",) if resume is not None else ())
    if opts.output is not None:
        im.check_writable(opts.output, *shapes[-1], alpha=alpha)
    if stems:
        stem, (h, w) = max(stems, key=lambda item: len(item[0]))
        im.check_writable(stem + opts.checkpoint_ext, h, w, alpha=alpha)
        try:
            trial_write(stem + ".npz", lambda tmp: np.savez(tmp, x=np.zeros((3, 1, 1)), meta="{}"))
        except OSError as e:
            raise NstliteError(f"cannot write checkpoint {shown(stem)}.npz: {e.strerror or e}") from None


def _checkpoint_stems(opts, shapes, first, resume) -> list:
    """(stem, (h, w)) of every checkpoint the run will write."""
    if not opts.save_every:
        return []
    stems = []
    for index in range(first, len(shapes)):
        start = resume.iteration if resume is not None and index == first else 0
        every = opts.save_every
        for iteration in range((start // every + 1) * every, opts.iterations_at(index) + 1, every):
            stems.append((checkpoint_stem(opts.checkpoint_prefix, iteration, opts.scales[index], len(shapes) > 1),
                          shapes[index]))
    return stems


def _failure(result, opts, resume, shapes) -> str | None:
    """Why a finished run is a failure (it made no progress), or None."""
    if result.stop_reason == StopReason.INTERRUPTED:
        return None  # an interrupt is reported as one (and writes only an improvement)
    if not math.isfinite(result.final.get("total", math.nan)):
        return f"the loss is not finite ({result.stop_reason}): check the weights and inputs"
    first = resume.scale_index if resume is not None else 0
    done = resume.iteration if resume is not None else 0
    asked = opts.iterations_at(first) > done or any(opts.iterations_at(i) > 0 for i in range(first + 1, len(shapes)))
    if asked and result.iterations == 0 and result.stop_reason not in (StopReason.CONVERGED,
                                                                       StopReason.INTERRUPTED,
                                                                       StopReason.CALLBACK):
        return f"no iteration completed ({result.stop_reason}): the start image was left as it was"
    return None


def _improved(result, opts) -> bool:
    """May the result replace the output? Only when it improved on the start: an interrupt
    before the first iteration leaves an existing output as it was."""
    return result.stop_reason != StopReason.INTERRUPTED or result.iterations > 0


def _region_styles_as_styles(keywords, styles):
    """With spatial control the run's styles are the regions' (in order): ``region_styles``
    becomes dict colour -> indices into that list."""
    spec = keywords.get("region_styles")
    if spec is None:
        return keywords, styles
    if styles:
        raise NstliteError("with a region map, give each region's style images as region styles, not also styles")
    per_region = parse_region_styles(spec)
    styles, indices = [], {}
    for colour, images in per_region.items():
        indices[colour] = list(range(len(styles), len(styles) + len(images)))
        styles += images
    return {**keywords, "region_styles": indices}, styles


def _with_region_map(opts, content_img):
    """The region map loaded, as uint8 colours the size of the content."""
    if opts.region_map is None:
        return opts
    labels = im.load_image(opts.region_map, "region map").rgb
    if labels.shape[:2] != content_img.rgb.shape[:2]:
        raise NstliteError(f"the region map is {labels.shape[1]}x{labels.shape[0]} but the content image is "
                           f"{content_img.rgb.shape[1]}x{content_img.rgb.shape[0]}: draw it at the photo's size")
    return replace(opts, region_map=np.rint(labels).astype(np.uint8))


def _as_list(styles):
    """None, one image or a list/tuple of them -> a list."""
    if styles is None:
        return []
    return list(styles) if isinstance(styles, (list, tuple)) else [styles]


def _network(opts):
    """The VGG19 of the run (``opts.net`` or loaded), checked to have every loss layer."""
    net = opts.net
    if net is None:
        from .vgg import load_vgg19

        # only the conv layers up to the deepest loss layer are read (conv5_1 by default)
        net = load_vgg19(opts.weights, pooling=opts.pooling, device=opts.device, layers=opts.loss_layers)
    unknown = [n for n in opts.loss_layers if n not in net.layer_names]
    if unknown:
        source = "this network" if opts.net is not None else \
            f"the weights file {shown(opts.weights or default_weights_path())}"
        raise NstliteError(f"{source} has no layer(s) {', '.join(unknown)}; it has {', '.join(net.layer_names)}")
    return net


def _checked_shapes(net, opts, content_shape):
    """(h, w) of every scale; a one-line error when one is too small for the deepest layer."""
    shapes = scale_shapes(content_shape, opts.scales)
    need, layers = min_side(net, opts.loss_layers), opts.loss_layers
    for (h, w), size in zip(shapes, opts.scales):
        if min(h, w) < need:
            raise NstliteError(f"the content image at size {size} is {w}x{h}; the network needs at least "
                               f"{need}x{need} to reach {layers[-1]} ({need}x downsampling): use a larger --size")
    return shapes


def _scale_tiles(net, opts, shapes, first, available):
    """Per scale, None (untiled) or its tile size: ``opts.tile`` as given, or for "auto" the
    choice of ``memory.scale_tile`` under ``available`` host bytes (MemAvailable and
    ``--memory-limit``). Resolved once here; the pre-flight estimate and each scale's objective
    use the same tiles."""
    return {i: scale_tile(net, *shapes[i], opts.loss_layers, opts.lbfgs_history, opts.tile, available=available,
                          content_layers=opts.content_layers) for i in range(first, len(shapes))}


def _memory_estimate(net, opts, shapes, style_shapes, tiles, available):
    """Peak bytes of the run, every scale in ``tiles`` (index -> tile or None) and every artwork
    at its scaled size counted (refusing when one does not fit; on the GPU the device's share
    against the device's free memory and the host's against host memory); None without the check."""
    if not opts.check_memory_limit:
        return None
    scales = sorted(tiles)
    artworks = [[im.fit_longest(h, w, style_side(opts, i)) for h, w, _ in style_shapes] for i in scales]
    if opts.style_layers and any(max(s) > MAX_SIDE for per_scale in artworks for s in per_scale):
        raise NstliteError(f"the style images would be resized to {max(max(s) for a in artworks for s in a)} px, "
                           f"more than {MAX_SIDE}: use a smaller --style-scale")
    return check_run_memory(net, [shapes[i] for i in scales], artworks if opts.style_layers else [],
                            opts.loss_layers, opts.lbfgs_history, [tiles[i] for i in scales],
                            available=available, content_layers=opts.content_layers)


def _resume_scale(checkpoint, shapes, opts):
    """The scale a checkpoint continues (0 without one); an error when it does not fit."""
    if checkpoint is None:
        return 0
    index, x, name = checkpoint.scale_index, checkpoint.x, shown(opts.resume)
    if index >= len(shapes):
        raise NstliteError(f"checkpoint {name} is of scale {index + 1} but this run has {len(shapes)}")
    if tuple(x.shape) != (3,) + tuple(shapes[index]):
        raise NstliteError(f"checkpoint {name} holds a {x.shape[2]}x{x.shape[1]} image, "
                           "which does not match this content image and size")
    wanted = opts.iterations_at(index)
    if checkpoint.iteration > wanted or (checkpoint.iteration == wanted and index == len(shapes) - 1):
        raise NstliteError(f"checkpoint {name} is at iteration {checkpoint.iteration}: ask for more "
                           f"--iterations than that (not {wanted})")
    return index


def _run_scales(net, opts, inputs, resume, reporter, estimate, tiles):
    """Optimise each scale in turn, each starting from the last one's result (``tiles``: index ->
    that scale's tile size or None)."""
    outcomes = []
    for index in sorted(inputs):
        resumed = resume is not None and not outcomes
        previous = outcomes[-1].x if outcomes else None
        problem = build_problem(net, opts, index, *inputs.pop(index), start_x=resume.x if resumed else None,
                                previous_x=previous, tile=tiles[index])
        outcomes.append(_optimise(problem, opts, reporter, resume.iteration if resumed else 0,
                                  None if outcomes else estimate))
        reason = outcomes[-1].stop_reason
        if reason == StopReason.INTERRUPTED:
            break
        if reason != StopReason.ITERATIONS and index < len(opts.scales) - 1:
            reporter.say(f"{reporter.tag}stopped early ({reason}); going on to the next scale")
    return outcomes


def _optimise(problem, opts, reporter, first_iteration, estimate):
    """L-BFGS-B on one scale's problem, from iteration ``first_iteration`` to its scale's iterations."""
    todo = opts.iterations_at(problem.index) - first_iteration
    reporter.begin_scale(problem, first_iteration, todo, estimate)
    evaluate = problem.evaluator()
    # bounds "none": infinite bounds, which L-BFGS-B treats as no bound at all (plain L-BFGS)
    lower, upper = (problem.lower, problem.upper) if opts.bounds == "pixels" else (-np.inf, np.inf)
    res = minimize_lbfgsb(evaluate, problem.release_start(), lower, upper, max(todo, 0),
                          history=opts.lbfgs_history, max_evaluations=opts.max_evaluations,
                          on_evaluation=reporter.on_evaluation, on_iteration=reporter.on_iteration,
                          start_iteration=first_iteration)
    reporter.end_scale(res.evaluations)
    # nothing was evaluated (0 iterations): evaluate the start once
    if res.info is not None:
        final = dict(res.info)
    elif res.stop_reason == StopReason.INTERRUPTED:  # during the first evaluation: none to report
        final = {}
    else:
        final = evaluate(res.x)[2]
    if res.restarts:
        reporter.say(f"{reporter.tag}note: L-BFGS-B restarted {res.restarts} time(s) from the best point "
                     f"({res.message})")
    return _ScaleOutcome(problem=problem, x=res.x.reshape(problem.shape), final=final,
                         iterations=res.iterations - first_iteration, evaluations=res.evaluations,
                         stop_reason=res.stop_reason)


def _result(outcomes, reporter, seconds, result_size=None):
    """The run's result; its image resized to ``result_size`` (longest side) when one is given
    (``StylizeOptions.result_size``); x, the history and the losses stay those of the last scale."""
    last = outcomes[-1]
    image = last.problem.image(last.x)
    if result_size is not None:
        h, w = im.fit_longest(*image.shape[:2], result_size)
        image = im.to_uint8(im.resize(image, h, w))
    return StylizeResult(image=image, x=np.asarray(last.x, dtype=np.float64),
                         history=reporter.history, final=last.final,
                         iterations=sum(o.iterations for o in outcomes),
                         evaluations=sum(o.evaluations for o in outcomes), seconds=seconds,
                         stop_reason=last.stop_reason, checkpoints=reporter.checkpoints)
