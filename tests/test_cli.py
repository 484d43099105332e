"""The shared command runner: user errors, OS errors and Ctrl-C become one line, never a traceback."""
import argparse
import errno

import pytest

from nstlite.cli import main
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
