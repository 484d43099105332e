"""Checkpoints: the exact float state of a run, so that ``resume`` continues where it stopped.

A checkpoint is an ``.npz`` file with two entries: ``x``, the network input (3, H, W) in
float64 as L-BFGS-B had it, and ``meta``, a JSON string::

    {"format": "nstlite-checkpoint", "version": 2, "iteration": 40, "evaluations": 47,
     "scale_index": 0, "size": 512, "height": 384, "width": 512,
     "fingerprint": {"options": {...}, "inputs": {"content": "<sha256>", ...}}}

``fingerprint`` (``run_fingerprint``) records what the run's objective was made of: the sha256
of every input (images, region map, weights file) and the options that shape the loss. A
resumed run must have the same (``fingerprint_differences``), or it would continue another
optimisation from this one's pixels.

Beside it ``stylize`` writes the same state as a picture (``<stem>.png`` or the output's format).
L-BFGS-B's own memory is not saved: a resumed run rebuilds it over its first iterations.

Reading is bounded: the two entries' headers are read and checked (names, dtype, shape, sizes
against what the zip declares and against the memory available) before any array is allocated.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass

import numpy as np

from .atomic import atomic_write
from .errors import NstliteError
from .image import MAX_PIXELS, check_input_file
from .paths import shown

FORMAT = "nstlite-checkpoint"
VERSION = 2
MAX_META_CHARS = 1 << 20   # the JSON header; a real one is under 2 kB
INTEGER_FIELDS = ("iteration", "evaluations", "scale_index", "size")
# The options that shape the objective (a resumed run must have the same); iterations, the
# optimiser's memory, tiles and the device change how it is solved, not what.
OBJECTIVE_OPTIONS = ("scales", "content_weight", "style_weight", "content_layers", "style_layers",
                     "style_blend_weights", "style_scale", "pooling", "tv_weight", "original_colors",
                     "style_loss", "sw_directions", "seed", "region_styles", "erode_regions")


@dataclass(frozen=True)
class Checkpoint:
    """One saved state. ``x`` : (3, H, W) float64; the counts are those of the whole run so far;
    ``fingerprint`` : what the run was made of (``run_fingerprint``), or None."""

    x: np.ndarray
    iteration: int
    evaluations: int
    scale_index: int = 0
    size: int = 0
    fingerprint: dict | None = None

    @property
    def meta(self) -> dict:
        """The JSON header written beside ``x``."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("x", "fingerprint")}
        meta = {"format": FORMAT, "version": VERSION, **fields, "height": int(self.x.shape[1]),
                "width": int(self.x.shape[2])}
        if self.fingerprint is not None:
            meta["fingerprint"] = self.fingerprint
        return meta


def save_checkpoint(path, checkpoint: Checkpoint) -> str:
    """Write ``checkpoint`` to ``path`` (an ``.npz``) atomically. Returns the path."""
    meta = json.dumps(checkpoint.meta)
    x = np.asarray(checkpoint.x, dtype=np.float64)
    return atomic_write(path, lambda tmp: np.savez(tmp, x=x, meta=meta))


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a one-line ``NstliteError`` for a file
    that is missing, not a regular file, not one, damaged, too large or holding non-finite values."""
    path = check_input_file(path, "checkpoint")
    name = shown(path)
    try:
        meta_text, x = _read_entries(path, name)
        meta = json.loads(meta_text)
    except NstliteError:
        raise
    except MemoryError:
        raise NstliteError(f"checkpoint {name}: not enough memory to read it") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, RecursionError) as e:
        raise NstliteError(f"{name} is not an nstlite checkpoint ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise NstliteError(f"{name} is not an nstlite checkpoint")
    counts = _checked_meta(meta, name)
    if not np.all(np.isfinite(x)):
        raise NstliteError(f"checkpoint {name} holds NaN or infinite values; it cannot be resumed")
    return Checkpoint(x=x, **counts, fingerprint=meta.get("fingerprint"))


def _read_entries(path, name):
    """(meta text, x) of a checkpoint, every header checked before its array is allocated."""
    with zipfile.ZipFile(path) as z:
        entries = sorted(z.namelist())
        if entries != ["meta.npy", "x.npy"]:
            raise NstliteError(f"{name} is not an nstlite checkpoint (entries {', '.join(entries[:5])})")
        shape, dtype = _entry_header(z, "x.npy", name)
        if dtype != np.float64 or len(shape) != 3 or shape[0] != 3 or min(shape) < 1:
            raise NstliteError(f"{name}: x is {dtype} of shape {shape}, not a (3, H, W) float64 image")
        if shape[1] * shape[2] > MAX_PIXELS:
            raise NstliteError(f"{name}: x declares {shape[2]}x{shape[1]} pixels, more than {MAX_PIXELS}")
        _check_memory(2 * 8 * 3 * shape[1] * shape[2], name)
        meta_shape, meta_dtype = _entry_header(z, "meta.npy", name)
        if meta_shape != () or meta_dtype.kind != "U" or meta_dtype.itemsize > 4 * MAX_META_CHARS:
            raise NstliteError(f"{name}: meta is not a JSON string of at most {MAX_META_CHARS} characters")
        with z.open("meta.npy") as f:
            meta = np.lib.format.read_array(f, allow_pickle=False)
        with z.open("x.npy") as f:
            x = np.lib.format.read_array(f, allow_pickle=False)
    return str(meta), np.ascontiguousarray(x, dtype=np.float64)


def _entry_header(z, entry, name):
    """(shape, dtype) an ``.npy`` entry declares; its declared size must be what the zip declares."""
    info = z.getinfo(entry)
    with z.open(entry) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise NstliteError(f"{name}: {entry} has an unknown .npy version {version}")
        header = f.tell()
    if dtype.hasobject:
        raise NstliteError(f"{name}: {entry} holds Python objects, which are never read")
    if header + int(np.prod(shape, dtype=object)) * dtype.itemsize != info.file_size:
        raise NstliteError(f"{name}: {entry} declares {shape} but holds {info.file_size} bytes (damaged?)")
    return tuple(shape), dtype


def _check_memory(need, name):
    from .memory import available_memory_bytes  # memory imports the image module, as this does

    available = available_memory_bytes()
    if available is not None and need > available:
        raise NstliteError(f"checkpoint {name} needs about {need / 2**30:.1f} GiB to read but only "
                           f"{available / 2**30:.1f} GiB is available")


def _checked_meta(meta, name):
    """The integer fields of a checkpoint's header, each checked to be one (>= 0)."""
    counts = {}
    for key in INTEGER_FIELDS:
        value = meta.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise NstliteError(f"checkpoint {name}: {key} is {shown(repr(value))[:40]}, not a whole number >= 0")
        counts[key] = value
    fingerprint = meta.get("fingerprint")
    if fingerprint is not None and not (isinstance(fingerprint, dict)
                                        and isinstance(fingerprint.get("options"), dict)
                                        and isinstance(fingerprint.get("inputs"), dict)):
        raise NstliteError(f"checkpoint {name}: its fingerprint is not a record of options and inputs")
    return counts


def checkpoint_stem(prefix, iteration: int, size: int, multi_scale: bool) -> str:
    """``<prefix>_<iteration>``, or ``<prefix>_s<size>_<iteration>`` in a run of several scales."""
    prefix = os.fspath(prefix)
    return f"{prefix}_s{size}_{iteration}" if multi_scale else f"{prefix}_{iteration}"


# --------------------------------------------------------------------------- what a run is made of
def source_sha256(source) -> str | None:
    """sha256 (hex) of an input: a file's bytes, an array's (with its dtype and shape), a PIL
    image's pixels (with its mode and size); None for None."""
    if source is None:
        return None
    digest = hashlib.sha256()
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    if hasattr(source, "tobytes") and hasattr(source, "mode"):  # a PIL image
        digest.update(f"{source.mode} {source.size}".encode())
        digest.update(source.tobytes())
        return digest.hexdigest()
    if hasattr(source, "rgb") and hasattr(source, "alpha"):  # an nstlite.image.Image
        for part in source:
            digest.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()
    a = np.ascontiguousarray(source)
    digest.update(f"{a.dtype.str} {a.shape}".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()


def run_fingerprint(opts, inputs: dict) -> dict:
    """What a run's objective is made of: ``{"options": {...}, "inputs": {role: sha256}}``.

    opts : validated ``StylizeOptions`` (the ``OBJECTIVE_OPTIONS`` are recorded, as JSON values)
    inputs : role -> source, e.g. ``{"content": path, "style image 1": array, "weights": path}``;
        a source of None (e.g. a network given as an object) is recorded as None and not compared
    """
    options = {name: getattr(opts, name) for name in OBJECTIVE_OPTIONS}
    options = json.loads(json.dumps(options, default=str))  # the form it has once stored
    return {"options": options, "inputs": {role: source_sha256(src) for role, src in inputs.items()}}


def fingerprint_differences(stored: dict, current: dict) -> list[str]:
    """What differs between two fingerprints, one short phrase each (inputs recorded as None on
    either side are not compared)."""
    out = []
    inputs, now = stored.get("inputs", {}), current.get("inputs", {})
    for role in sorted(set(inputs) | set(now)):
        a, b = inputs.get(role, "absent"), now.get(role, "absent")
        if a is not None and b is not None and a != b:
            out.append(f"{role} (other contents)" if "absent" not in (a, b) else f"{role} (given in only one)")
    options, now = stored.get("options", {}), current.get("options", {})
    for name in OBJECTIVE_OPTIONS:
        if options.get(name) != now.get(name):
            out.append(f"{name} ({_short(options.get(name))} then, {_short(now.get(name))} now)")
    return out


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return shown(text if len(text) <= 40 else text[:37] + "...")
