"""``nstlite`` command line: one sub-command per task, each registered by its own module.

Every ``NstliteError`` (bad input, missing weights, unknown device...) becomes one line
``nstlite: error: ...`` on stderr and exit code 2 - never a traceback.
"""
import argparse
import importlib
import os
import sys

from .errors import run_parser

# Modules that add sub-commands (each defines ``register_cli(subparsers)``), in --help order.
COMMAND_MODULES = ("nstlite.style_transfer", "nstlite.figures", "nstlite.gradient_check")


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="nstlite",
        description="Neural style transfer (Gatys, Ecker & Bethge 2015) on NumPy/CuPy with hand-written gradients.")
    parser.add_argument("--version", action="version", version=f"nstlite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMAND_MODULES:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:  # that command is not part of this build
                continue
            raise
        module.register_cli(sub)
    return parser


def main(argv=None):
    # OpenBLAS worker threads otherwise busy-wait after every GEMM and slow the NumPy work that
    # follows; this must be set before NumPy loads OpenBLAS (only effective on a fresh process).
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
    from .errors import NstliteError

    return run_parser(build_parser(), argv, "nstlite", NstliteError,
                      out_of_memory="out of memory: try a smaller --size")


if __name__ == "__main__":
    sys.exit(main())
