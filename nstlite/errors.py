"""Errors that mean "the user asked for something that cannot be done".

The CLI turns any ``NstliteError`` into one line ``nstlite: error: <message>`` and exit code 2.
Messages are single lines that say what was wrong and, where possible, what to do instead.
"""
import sys


class NstliteError(Exception):
    """Base class of every error that is reported to the user as one line, without a traceback."""


def run_parser(parser, argv, prog, user_errors, out_of_memory="out of memory", describe_unexpected=None):
    """Parse ``argv``, run the chosen sub-command and turn what the user can act on into one line
    ``<prog>: error: ...`` with exit code 2 (130 on Ctrl-C), never a traceback.

    user_errors : exception classes whose message is the whole story (bad input, missing files)
    describe_unexpected : called with any other exception to make its one-line message; when
        None such exceptions propagate (a bug should show where it is)
    """
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except user_errors as e:
        message = str(e)
    except OSError as e:  # e.g. permission denied, disk full
        message = f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}"
    except MemoryError:
        message = out_of_memory
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if describe_unexpected is None:
            raise
        message = describe_unexpected(e)
    # one line, and no terminal control sequence from a file name reaches the terminal
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(message.split()))
    print(f"{prog}: error: {line}", file=sys.stderr)
    return 2
