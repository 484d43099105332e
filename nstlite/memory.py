"""Will a run fit in memory? The peak estimate, and the one-line refusal when it will not.

The peak of one optimisation is the network's part, which the network computes from its own
layout (``VGG19.memory_bytes``: kernels in their working form, buffers, ReLU masks, feature
copies), plus the host side added here:

* L-BFGS-B's memory: ``2 * history`` correction vectors (s and y pairs) of the image's size,
  in float64;
* about a dozen more image-sized float64 vectors (SciPy's x, g, bounds and work arrays, the
  best point, the gradient crossing from the device);
* the interpreter with NumPy, SciPy and Pillow loaded and the decoded images (a constant);

and the objective's share, one map per loss layer at the network's precision: the content target
P^l, or the temporary a loss makes. All of it but the constant carries a 15 % margin. The
measured peaks the estimate is checked against are in the README's memory section (and the test).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from . import image as im
from .errors import NstliteError
from .options import DEFAULT_LBFGS_HISTORY
from .tiled import choose_tile, tiled_bytes

# image-sized float64 vectors besides L-BFGS-B's 2m history vectors, counted (tracemalloc, SciPy
# 1.17) in a run: L-BFGS-B's own 5 work vectors, its 3n int32 workspace (1.5), the box (two bound
# vectors and int32 codes: 2.5), x, g, the best point (3), and the float32 network input (0.5)
HOST_VECTORS = 13
OVERHEAD_BYTES = 160 * 2**20   # interpreter, NumPy/SciPy/Pillow, decoded images
MARGIN = 0.15                  # on the size-dependent part
SMALLEST_SIZE = 16             # below this, suggesting a --size is pointless (VGG19 needs 16 px)


def available_memory_bytes(limit: int | None = None) -> int | None:
    """The memory this process may still take: MemAvailable from /proc/meminfo, lowered to what
    the address-space limit (``ulimit -v``, RLIMIT_AS) leaves and to ``limit`` (the run's
    ``memory_limit``, bytes); None where none of them is known."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        available = None
    left = _address_space_left()
    if left is not None:
        available = left if available is None else min(available, left)
    if limit is not None:
        available = limit if available is None else min(available, int(limit))
    return available


def _address_space_left() -> int | None:
    """RLIMIT_AS minus the address space in use; None without a limit (or off Linux)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError, IndexError):
        return None
    return max(soft - used, 0)


def host_bytes(height: int, width: int, history: int = DEFAULT_LBFGS_HISTORY) -> int:
    """The optimiser's float64 vectors for a 3 x height x width image, in bytes."""
    return (2 * int(history) + HOST_VECTORS) * 3 * height * width * 8


def objective_bytes(net, height: int, width: int, layers: Sequence[str]) -> int:
    """One map per loss layer (the content target, or a loss's temporary), in bytes."""
    channels, values = 3, 0
    for name in net.layer_names:
        if name.startswith("conv"):
            channels = int(net.weights[name][0].shape[0])
        if name in layers:
            h, w = net.map_size(name, height, width)
            values += channels * h * w
    return values * net.dtype.itemsize


def estimate_peak_bytes(net, height: int, width: int, layers: Sequence[str],
                        history: int = DEFAULT_LBFGS_HISTORY) -> int:
    """Estimated peak memory, in bytes, of one optimisation of a height x width image whose
    losses read ``layers`` of ``net`` (a ``VGG19``)."""
    layers = list(layers)
    network = net.memory_bytes(height, width, layers, layers)
    rest = objective_bytes(net, height, width, layers) + host_bytes(height, width, history)
    return int((1.0 + MARGIN) * (network + rest) + OVERHEAD_BYTES)


def largest_fitting_size(fits: Callable[[int, int], bool], height: int, width: int, upper: int) -> int:
    """Largest longest side <= ``upper`` at which a height x width image, resized with its aspect
    kept, satisfies ``fits(h, w)`` (0 when none does). ``fits`` must be monotone in the size."""
    lo, hi = 0, int(upper)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(*im.fit_longest(height, width, mid)):
            lo = mid
        else:
            hi = mid - 1
    return lo


def refusal_message(height: int, width: int, estimate: int, available: int, biggest: int) -> str:
    """The one line that refuses a run: what it needs, what there is, and what to do."""
    hint = f"use --size {biggest} or less" if biggest >= SMALLEST_SIZE else "free some memory"
    return (f"{width}x{height} needs about {estimate / 2**30:.1f} GiB but only "
            f"{available / 2**30:.1f} GiB is available; {hint}")


def check_memory(net, height: int, width: int, layers: Sequence[str], history: int = DEFAULT_LBFGS_HISTORY,
                 available: int | None = None) -> int:
    """The peak estimate in bytes; an ``NstliteError`` (``refusal_message``) when it exceeds the
    memory available (``available``, default MemAvailable; unknown: never refused)."""
    estimate = estimate_peak_bytes(net, height, width, layers, history)
    if available is None:
        available = available_memory_bytes()
    if available is None or estimate <= available:
        return estimate
    biggest = largest_fitting_size(
        lambda h, w: estimate_peak_bytes(net, h, w, layers, history) <= available, height, width,
        max(height, width))
    raise NstliteError(refusal_message(height, width, estimate, available, biggest))


def scale_tile(net, height: int, width: int, layers: Sequence[str], history: int = DEFAULT_LBFGS_HISTORY,
               tile=None, available: int | None = None, content_layers: Sequence[str] = ()):
    """The tile size of one scale: None or a size as asked; for "auto", None when the whole image
    fits in the memory available (MemAvailable; unknown: untiled), else the largest tile whose
    evaluation fits beside the optimiser's vectors (``nstlite.tiled.choose_tile``). A size that
    does not fit even by tiles is refused in one line naming the largest size that would."""
    if tile != "auto":
        return tile
    if available is None:
        available = available_memory_bytes()
    if available is None or estimate_peak_bytes(net, height, width, layers, history) <= available:
        return None
    chosen = _auto_tile(net, height, width, layers, history, available, content_layers)
    if chosen is None:
        biggest = largest_fitting_size(
            lambda h, w: _auto_tile(net, h, w, layers, history, available, content_layers) is not None,
            height, width, max(height, width))
        raise NstliteError(f"{width}x{height} does not fit in the {available / 2**30:.1f} GiB available even by "
                           f"tiles (the optimiser alone keeps {host_bytes(height, width, history) / 2**30:.1f} GiB): "
                           + (f"use --size {biggest} or less" if biggest >= SMALLEST_SIZE else "free some memory")
                           + (" or a smaller --lbfgs-history" if history > 3 else ""))
    return chosen


def _auto_tile(net, height, width, layers, history, available, content_layers):
    """The largest tile that fits in ``available`` beside the full-size vectors, or None."""
    budget = (available - OVERHEAD_BYTES) / (1.0 + MARGIN) - host_bytes(height, width, history) \
        - objective_bytes(net, height, width, list(content_layers))
    if budget <= 0:
        return None
    try:
        return choose_tile(net, height, width, list(layers), list(layers), int(budget))
    except NstliteError:
        return None


def tiled_peak_bytes(net, height: int, width: int, layers: Sequence[str], history: int, tile: int,
                     content_layers: Sequence[str] = ()) -> int:
    """Estimated peak memory, in bytes, of an optimisation evaluated by tiles of ``tile`` pixels:
    one tile through the network, the content targets and the optimiser's vectors at full size."""
    layers = list(layers)
    network = tiled_bytes(net, height, width, layers, layers, tile)
    # at the image's size only the content targets (tiled_bytes has the tile's own maps)
    rest = objective_bytes(net, height, width, list(content_layers)) + host_bytes(height, width, history)
    return int((1.0 + MARGIN) * (network + rest) + OVERHEAD_BYTES)



def style_peak_bytes(net, height: int, width: int, layers: Sequence[str], tile=None) -> int:
    """Estimated peak memory, in bytes, of computing a height x width style image's targets: the
    network's forward at that size (no optimiser vectors), or one tile's with ``tile``."""
    layers = list(layers)
    network = (tiled_bytes(net, height, width, layers, layers, tile) if tile
               else net.memory_bytes(height, width, layers, layers))
    return int((1.0 + MARGIN) * network + OVERHEAD_BYTES)


def check_run_memory(net, shapes, style_shapes, layers: Sequence[str], history: int = DEFAULT_LBFGS_HISTORY,
                     tiles=None, available: int | None = None, content_layers: Sequence[str] = ()) -> int:
    """The peak estimate of a whole run, every scale and every style image at its scaled size
    counted (the largest scale need not be the last; ``--style-scale`` can make the artworks the
    largest images of the run); an ``NstliteError`` when one does not fit. ``tiles`` : per scale,
    None (untiled) or a tile size; ``style_shapes`` : per scale, the (h, w) of its artworks (a
    tiled scale computes their targets by the same tiles). Returns the largest estimate."""
    if available is None:
        available = available_memory_bytes()
    tiles = tiles or [None] * len(shapes)
    peak = 0
    for (h, w), tile in zip(shapes, tiles):
        if tile is None:
            peak = max(peak, check_memory(net, h, w, layers, history, available))
        else:
            peak = max(peak, tiled_peak_bytes(net, h, w, layers, history, tile, content_layers))
    for artworks, tile in zip(style_shapes, tiles):
        for h, w in artworks:
            estimate = style_peak_bytes(net, h, w, layers, tile)
            if available is not None and estimate > available:
                raise NstliteError(f"a style image at {w}x{h} needs about {estimate / 2**30:.1f} GiB but only "
                                   f"{available / 2**30:.1f} GiB is available; use a smaller --style-scale, "
                                   "--size or --tile")
            peak = max(peak, estimate)
    return peak
