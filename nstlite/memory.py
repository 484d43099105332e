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

On the GPU (``--device gpu``) the two sides are checked apart: the network's and the objective's
arrays (``device_peak_bytes``) against the device's free memory (``device_available_bytes``:
CuPy's ``mem_info`` plus what its memory pool holds unused), the optimiser's float64 vectors and
the constant (``host_peak_bytes``) against host memory; a refusal names the side that does not
fit and the largest size at which both do.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from . import image as im
from .backend import device_free_bytes
from .errors import NstliteError
from .options import DEFAULT_LBFGS_HISTORY
from .tiled import choose_tile, tiled_bytes

# image-sized float64 vectors besides L-BFGS-B's 2m history vectors, counted (tracemalloc, SciPy
# 1.17) in a run: L-BFGS-B's own 5 work vectors, its 3n int32 workspace (1.5), the box (two bound
# vectors and int32 codes: 2.5), x, g, the best point (3), and the float32 network input (0.5)
HOST_VECTORS = 13
OVERHEAD_BYTES = 160 * 2**20   # interpreter, NumPy/SciPy/Pillow, decoded images
MARGIN = 0.15                  # on the network's estimated maps (the optimiser's vectors are counted exactly)
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
    values = sum(net.channels(n) * int(np.prod(net.map_size(n, height, width)))
                 for n in net.layer_names if n in layers)
    return values * net.dtype.itemsize


def device_available_bytes(net) -> int | None:
    """The device memory a GPU run may take: free on the device plus unused in CuPy's pool, plus
    the network's own kernels already there (its estimate counts them). None on the CPU."""
    free = device_free_bytes(net.xp)
    if free is None:
        return None
    return free + sum(int(w.nbytes) + int(b.nbytes) for w, b in net.weights.values())


def device_peak_bytes(net, height: int, width: int, layers: Sequence[str]) -> int:
    """The network's arrays and the objective's maps, with the margin: on the GPU the device's
    share of the peak; on the CPU the peak less ``host_peak_bytes``."""
    layers = list(layers)
    return int((1.0 + MARGIN) * (net.memory_bytes(height, width, layers, layers)
                                 + objective_bytes(net, height, width, layers)))


def host_peak_bytes(height: int, width: int, history: int = DEFAULT_LBFGS_HISTORY) -> int:
    """The optimiser's float64 vectors (counted exactly, no margin) and the constant: on the GPU
    the host's share of the peak; on the CPU added to the network's share."""
    return int(host_bytes(height, width, history) + OVERHEAD_BYTES)


def estimate_peak_bytes(net, height: int, width: int, layers: Sequence[str],
                        history: int = DEFAULT_LBFGS_HISTORY) -> int:
    """Estimated peak memory, in bytes, of one optimisation of a height x width image whose
    losses read ``layers`` of ``net`` (a ``VGG19``)."""
    return device_peak_bytes(net, height, width, layers) + host_peak_bytes(height, width, history)


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


# where a budget's memory is, as the refusal says it: (after "needs about X GiB", after "only Y GiB is")
HOST_WORDS = ("", "available")
GPU_WORDS = (" of GPU memory", "free on the GPU")
GPU_HOST_WORDS = (" of host memory (the optimiser's vectors)", "available")


def refusal_message(height: int, width: int, estimate: int, available: int, biggest: int,
                    words=HOST_WORDS) -> str:
    """The one line that refuses a run: what it needs, what there is, and what to do."""
    hint = f"use --size {biggest} or less" if biggest >= SMALLEST_SIZE else "free some memory"
    return (f"{width}x{height} needs about {estimate / 2**30:.1f} GiB{words[0]} but only "
            f"{available / 2**30:.1f} GiB is {words[1]}; {hint}")


def memory_budgets(net, layers: Sequence[str], history: int = DEFAULT_LBFGS_HISTORY,
                   available: int | None = None, device_available: int | None = None):
    """[(estimate(h, w) in bytes, bytes available or None, words)]: what must fit where. On the
    CPU one budget, the whole peak against host memory (``available``, default MemAvailable);
    on the GPU the device's share against ``device_available`` (default
    ``device_available_bytes``) first, then the host's share against host memory."""
    layers = list(layers)
    if available is None:
        available = available_memory_bytes()
    if net.device == "cpu":
        return [(lambda h, w: estimate_peak_bytes(net, h, w, layers, history), available, HOST_WORDS)]
    if device_available is None:
        device_available = device_available_bytes(net)
    return [(lambda h, w: device_peak_bytes(net, h, w, layers), device_available, GPU_WORDS),
            (lambda h, w: host_peak_bytes(h, w, history), available, GPU_HOST_WORDS)]


def check_budgets(budgets, height: int, width: int) -> int:
    """The first budget's estimate at height x width; an ``NstliteError`` naming the first budget
    that does not fit and the largest size at which all do (an unknown availability never refuses)."""
    for estimate, available, words in budgets:
        need = estimate(height, width)
        if available is not None and need > available:
            biggest = largest_fitting_size(
                lambda h, w: all(a is None or e(h, w) <= a for e, a, _ in budgets), height, width,
                max(height, width))
            raise NstliteError(refusal_message(height, width, need, available, biggest, words))
    return budgets[0][0](height, width)


def check_memory(net, height: int, width: int, layers: Sequence[str], history: int = DEFAULT_LBFGS_HISTORY,
                 available: int | None = None, device_available: int | None = None) -> int:
    """The peak estimate in bytes (on the GPU the device's share); an ``NstliteError``
    (``refusal_message``) when it exceeds the memory available (``memory_budgets``)."""
    return check_budgets(memory_budgets(net, layers, history, available, device_available), height, width)


def scale_tile(net, height: int, width: int, layers: Sequence[str], history: int = DEFAULT_LBFGS_HISTORY,
               tile=None, available: int | None = None, content_layers: Sequence[str] = (),
               device_available: int | None = None):
    """The tile size of one scale: None or a size as asked; for "auto", None when the whole image
    fits in the memory available (MemAvailable, on the GPU the device's free memory; unknown:
    untiled), else the largest tile whose evaluation fits beside the optimiser's vectors
    (``nstlite.tiled.choose_tile``). A size that does not fit even by tiles is refused in one line
    naming the largest size that would."""
    if tile != "auto":
        return tile
    on_gpu = net.device != "cpu"
    if on_gpu:
        available = device_available_bytes(net) if device_available is None else device_available
        whole = device_peak_bytes(net, height, width, layers)
    else:
        available = available_memory_bytes() if available is None else available
        whole = estimate_peak_bytes(net, height, width, layers, history)
    if available is None or whole <= available:
        return None
    chosen = _auto_tile(net, height, width, layers, history, available, content_layers)
    if chosen is None:
        biggest = largest_fitting_size(
            lambda h, w: _auto_tile(net, h, w, layers, history, available, content_layers) is not None,
            height, width, max(height, width))
        why = ("" if on_gpu else
               f" (the optimiser alone keeps {host_bytes(height, width, history) / 2**30:.1f} GiB)")
        raise NstliteError(f"{width}x{height} does not fit in the {available / 2**30:.1f} GiB "
                           f"{GPU_WORDS[1] if on_gpu else 'available'} even by tiles{why}: "
                           + (f"use --size {biggest} or less" if biggest >= SMALLEST_SIZE else "free some memory")
                           + (" or a smaller --lbfgs-history" if history > 3 and not on_gpu else ""))
    return chosen


def _auto_tile(net, height, width, layers, history, available, content_layers):
    """The largest tile that fits in ``available`` beside the full-size vectors (on the GPU beside
    the content targets only: the optimiser's vectors are on the host), or None."""
    if net.device == "cpu":
        budget = (available - host_peak_bytes(height, width, history)) / (1.0 + MARGIN)
    else:
        budget = available / (1.0 + MARGIN)
    budget -= objective_bytes(net, height, width, list(content_layers))
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
    targets = objective_bytes(net, height, width, list(content_layers))
    network_share = int((1.0 + MARGIN) * (network + targets))
    if net.device != "cpu":  # the device's share; the host's is ``host_peak_bytes``
        return network_share
    return network_share + host_peak_bytes(height, width, history)



def style_peak_bytes(net, height: int, width: int, layers: Sequence[str], tile=None) -> int:
    """Estimated peak memory, in bytes, of computing a height x width style image's targets: the
    network's forward at that size (no optimiser vectors; on the GPU the device's share), or one
    tile's with ``tile``."""
    layers = list(layers)
    network = int((1.0 + MARGIN) * (tiled_bytes(net, height, width, layers, layers, tile) if tile
                                    else net.memory_bytes(height, width, layers, layers)))
    return network if net.device != "cpu" else network + OVERHEAD_BYTES


def check_run_memory(net, shapes, style_shapes, layers: Sequence[str], history: int = DEFAULT_LBFGS_HISTORY,
                     tiles=None, available: int | None = None, content_layers: Sequence[str] = (),
                     device_available: int | None = None) -> int:
    """The peak estimate of a whole run, every scale and every style image at its scaled size
    counted (the largest scale need not be the last; ``--style-scale`` can make the artworks the
    largest images of the run); an ``NstliteError`` when one does not fit (on the GPU: the
    device's share or the host's, ``memory_budgets``). ``tiles`` : per scale, None (untiled) or a
    tile size; ``style_shapes`` : per scale, the (h, w) of its artworks (a tiled scale computes
    their targets by the same tiles). Returns the largest estimate (on the GPU the device's share)."""
    budgets = memory_budgets(net, layers, history, available, device_available)
    network_available, network_words = budgets[0][1], budgets[0][2]  # where the network's arrays live
    tiles = tiles or [None] * len(shapes)
    peak = 0
    for (h, w), tile in zip(shapes, tiles):
        if tile is None:
            peak = max(peak, check_budgets(budgets, h, w))
        else:
            peak = max(peak, tiled_peak_bytes(net, h, w, layers, history, tile, content_layers))
            if len(budgets) > 1:
                check_budgets(budgets[1:], h, w)  # the GPU's host side (tiles do not shrink it)
    for artworks, tile in zip(style_shapes, tiles):
        for h, w in artworks:
            estimate = style_peak_bytes(net, h, w, layers, tile)
            if network_available is not None and estimate > network_available:
                raise NstliteError(f"a style image at {w}x{h} needs about {estimate / 2**30:.1f} GiB{network_words[0]} "
                                   f"but only {network_available / 2**30:.1f} GiB is {network_words[1]}; use a "
                                   "smaller --style-scale, --size or --tile")
            peak = max(peak, estimate)
    return peak
