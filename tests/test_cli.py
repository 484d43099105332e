"""The shared command runner: user errors, OS errors and Ctrl-C become one line, never a traceback."""
import argparse
import errno
import pathlib

import pytest

import nstlite
from nstlite.backend import DEVICES
from nstlite.cli import build_parser, main
from nstlite.errors import run_parser
from nstlite.errors import NstliteError


def parser_raising(exc):
    p = argparse.ArgumentParser(prog="x")
    sub = p.add_subparsers()
    s = sub.add_parser("go")

    def boom(args):
        raise exc

    s.set_defaults(func=boom)
    return p


@pytest.mark.parametrize("exc, code, text", [
    (NstliteError("bad input\nsecond line"), 2, "x: error: bad input second line"),
    (PermissionError(errno.EACCES, "Permission denied", "/out.png"), 2, "x: error: Permission denied: /out.png"),
    (MemoryError(), 2, "x: error: out of memory"),
    (KeyboardInterrupt(), 130, "x: interrupted"),
])
def test_one_line_errors(capsys, exc, code, text):
    assert run_parser(parser_raising(exc), ["go"], "x", NstliteError) == code
    err = capsys.readouterr().err
    assert err.strip() == text and err.count("\n") == 1


def test_unexpected_errors_propagate_unless_described(capsys):
    with pytest.raises(ZeroDivisionError):
        run_parser(parser_raising(ZeroDivisionError("bug")), ["go"], "x", NstliteError)
    assert run_parser(parser_raising(ZeroDivisionError("odd")), ["go"], "x", NstliteError,
                      describe_unexpected=lambda e: f"unexpected {e}") == 2
    assert capsys.readouterr().err.strip() == "x: error: unexpected odd"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "stylize" in capsys.readouterr().out


def test_argparse_lives_only_in_the_cli_module():
    package = pathlib.Path(nstlite.__file__).parent
    users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "argparse" in p.read_text())
    assert users == ["cli.py"]


IMAGES = ["--content", "c.png", "--style", "s.png", "--output", "o.png"]


@pytest.mark.parametrize("command, size, iterations", [
    ("stylize", 512, 500), ("demo", 256, 60), ("figure1", 128, 200), ("figure2", 128, 150), ("figure3", 96, 100)])
def test_shared_run_options_with_each_commands_defaults(command, size, iterations, capsys):
    argv = [command] + (IMAGES if command != "demo" else [])
    args = build_parser().parse_args(argv)
    for name in ("size", "iterations", "seed", "weights", "pooling", "device", "tv_weight", "quiet"):
        assert hasattr(args, name), (command, name)
    assert (args.size, args.iterations) == (size, iterations)
    for device in DEVICES:
        assert build_parser().parse_args(argv + ["--device", device]).device == device
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv + ["--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_gradcheck_device_choices_come_from_the_backend():
    for device in DEVICES:
        assert build_parser().parse_args(["gradcheck", "--device", device]).device == device
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gradcheck", "--device", "tpu"])
