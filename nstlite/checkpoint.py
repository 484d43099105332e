"""Checkpoints: the exact float state of a run, so that ``resume`` continues where it stopped.

A checkpoint is an ``.npz`` file with two entries: ``x``, the network input (3, H, W) in
float64 as L-BFGS-B had it, and ``meta``, a JSON string::

    {"format": "nstlite-checkpoint", "version": 1, "iteration": 40, "evaluations": 47,
     "scale_index": 0, "size": 512, "height": 384, "width": 512}

Beside it ``stylize`` writes the same state as a picture (``<stem>.png`` or the output's format).
L-BFGS-B's own memory is not saved: a resumed run rebuilds it over its first iterations.
"""
import json
import os
import zipfile
from dataclasses import asdict, dataclass

import numpy as np

from .atomic import atomic_write
from .errors import NstliteError
from .image import check_input_file

FORMAT = "nstlite-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """One saved state. ``x`` : (3, H, W) float64; the counts are those of the whole run so far."""

    x: np.ndarray
    iteration: int
    evaluations: int
    scale_index: int = 0
    size: int = 0

    @property
    def meta(self) -> dict:
        """The JSON header written beside ``x``."""
        fields = {k: v for k, v in asdict(self).items() if k != "x"}
        return {"format": FORMAT, "version": VERSION, **fields, "height": int(self.x.shape[1]),
                "width": int(self.x.shape[2])}


def save_checkpoint(path, checkpoint: Checkpoint) -> str:
    """Write ``checkpoint`` to ``path`` (an ``.npz``) atomically. Returns the path."""
    meta = json.dumps(checkpoint.meta)
    x = np.asarray(checkpoint.x, dtype=np.float64)
    return atomic_write(path, lambda tmp: np.savez(tmp, x=x, meta=meta))


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a one-line ``NstliteError`` for a file
    that is missing or is not one."""
    path = check_input_file(path, "checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            x = np.asarray(z["x"], dtype=np.float64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # not ours, damaged, no "meta"
        raise NstliteError(f"{path} is not an nstlite checkpoint ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or x.ndim != 3 or x.shape[0] != 3:
        raise NstliteError(f"{path} is not an nstlite checkpoint")
    return Checkpoint(x=x, iteration=int(meta.get("iteration", 0)), evaluations=int(meta.get("evaluations", 0)),
                      scale_index=int(meta.get("scale_index", 0)), size=int(meta.get("size", 0)))


def checkpoint_stem(prefix, iteration: int, size: int, multi_scale: bool) -> str:
    """``<prefix>_<iteration>``, or ``<prefix>_s<size>_<iteration>`` in a run of several scales."""
    prefix = os.fspath(prefix)
    return f"{prefix}_s{size}_{iteration}" if multi_scale else f"{prefix}_{iteration}"
