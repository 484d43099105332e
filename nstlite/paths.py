"""Which files a run reads and writes, and the checks that keep the user's files safe.

A run writes its output image, its log and its checkpoints. Before any of them is opened,
``check_outputs`` refuses, with one line naming both files,

* an output that *is* one of the run's inputs (the content, a style, the region map, the init
  image, the weights file, the resumed checkpoint) by file identity - device and inode, so that
  ``..``, symbolic links and hard links are all seen through - or that is another output;
* an output that exists and is not a regular file (a folder, a FIFO, a device: opening one for
  writing can block forever or write somewhere else);
* an existing output without ``overwrite``.

``shown`` is how a path goes into a message: terminal control characters are escaped, so a file
name cannot drive the user's terminal.
"""
from __future__ import annotations

import os
import stat

from .errors import NstliteError


def shown(path) -> str:
    """``path`` as text for a message: printable characters as they are, every control character
    (ESC, newline, DEL, C1 controls ...) escaped the way Python writes it (``\\x1b``)."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def file_kind(path) -> str | None:
    """None for a regular file (or nothing there); else what it is: 'a folder', 'a FIFO (named
    pipe)', 'a device', 'a socket'. Symbolic links are followed."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def require_regular(path, what: str) -> None:
    """A one-line ``NstliteError`` when ``path`` exists and is not a regular file (reading a FIFO
    blocks until someone writes to it; a device may never end)."""
    kind = file_kind(path)
    if kind is not None:
        raise NstliteError(f"{what} {shown(path)} is {kind}, not a regular file")


def check_outputs(outputs: dict, inputs: dict, overwrite: bool = False, append: tuple = ()) -> None:
    """Refuse (one line, before anything is written) any output that would destroy a file.

    Parameters
    ----------
    outputs : what -> path of every file the run will write (e.g. ``{"--output": "out.png"}``)
    inputs : what -> path of every file the run reads (arrays and images in memory are left out)
    overwrite : an existing output may be replaced
    append : the names in ``outputs`` that are continued rather than replaced (a resumed log):
        they may exist without ``overwrite``
    """
    inputs = {what: os.fspath(src) for what, src in inputs.items() if src is not None}
    identities = {_identity(src): (what, src) for what, src in inputs.items() if _identity(src)}
    by_name, by_identity = {}, {}
    for what, path in outputs.items():
        if path is None:
            continue
        path = os.fspath(path)
        key = _identity(path)
        if key in identities:
            source, src = identities[key]
            raise NstliteError(f"{what} {shown(path)} is the {source} {shown(src)} (the same file): "
                               "writing it would destroy the input; choose another name")
        other = by_name.get(os.path.abspath(path)) or by_identity.get(key)
        if other is not None:
            raise NstliteError(f"{what} {shown(path)} is also the {other}; give them different names")
        kind = file_kind(path)
        if kind is not None:
            raise NstliteError(f"{what} {shown(path)} is {kind}; give the name of a file to write")
        if os.path.lexists(path) and not overwrite and what not in append:
            raise NstliteError(f"{what} {shown(path)} exists; pass --overwrite (overwrite=True) to replace it, "
                               "or choose another name")
        by_name[os.path.abspath(path)] = what
        if key is not None:
            by_identity[key] = what


def _identity(path):
    """(device, inode) of the file ``path`` names, links followed; None when there is none."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino
