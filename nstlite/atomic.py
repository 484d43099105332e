"""Atomic file writes: a failed or interrupted write never destroys the file already there.

Every file is first written under a temporary name in its own folder (``.<stem>.XXXXXXXX.tmp<ext>``)
and renamed over the target only when complete. ``trial_write`` makes the same temporary name and
writes to it without renaming, so that a run can learn before its first evaluation that a name is
too long, a folder read-only or a format unwritable - instead of after the whole optimisation.
"""
import os
import tempfile


def _temporary(path):
    """A new empty temporary file beside ``path`` (the name ``atomic_write`` writes first)."""
    folder = os.path.dirname(os.path.abspath(path))
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    return tmp


def atomic_write(path, write):
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it over
    ``path``: an interrupted or failed write leaves any existing file untouched."""
    path = os.fspath(path)
    tmp = _temporary(path)
    try:
        write(tmp)
        try:  # mkstemp makes 0600; give the file the permissions a plain open() would
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def trial_write(path, write):
    """Call ``write(tmp_path)`` on the temporary name ``atomic_write`` would use for ``path``, then
    remove it: whatever would make the real write fail (the name's length, the folder's
    permissions, the format's encoder) fails here, and ``path`` itself is never touched."""
    tmp = _temporary(os.fspath(path))
    try:
        write(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
