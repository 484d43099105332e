"""Errors that mean "the user asked for something that cannot be done".

The CLI turns any ``NstliteError`` into one line ``nstlite: error: <message>`` and exit code 2.
Messages are single lines that say what was wrong and, where possible, what to do instead.
"""


class NstliteError(Exception):
    """Base class of every error that is reported to the user as one line, without a traceback."""
