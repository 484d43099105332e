"""Scratch memory and threads shared by every conv of a network.

The thread settings are resolved on first use, not at import: ``transform_threads`` reads
``$NSTLITE_TRANSFORM_THREADS`` and ``local_blas_threads`` looks for OpenBLAS's per-thread
setting (in ``/proc/self/maps``) the first time a workspace needs them.
"""
import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import device_free_bytes
from ..errors import NstliteError

# Scratch per block of rows on the CPU: large enough that each GEMM call does millions of
# multiply-adds (so OpenBLAS's per-call threading overhead is amortised), small enough to stay
# in the last-level cache and to keep the shared workspace small.
BLOCK_BYTES = 16 << 20
# On a GPU there is no cache to stay in and every block costs its launches again, so blocks are
# as large as the device allows: up to 1/DEVICE_BLOCK_SHARE of its free memory each (the
# workspace holds about twice a block).
DEVICE_BLOCK_SHARE = 8
MAX_TRANSFORM_THREADS = 4  # not measured above a few threads
_transform_threads = None  # resolved by transform_threads() on first use


def transform_threads() -> int:
    """Threads for the element-wise tile transforms on NumPy (``Workspace.parallel``): they
    are NumPy work that OpenBLAS does not parallelise, so without threads they run on one
    core. ``$NSTLITE_TRANSFORM_THREADS`` if set, else the core count; at most
    ``MAX_TRANSFORM_THREADS``. Read once, on the first call."""
    global _transform_threads
    if _transform_threads is None:
        value = os.environ.get("NSTLITE_TRANSFORM_THREADS", "").strip()
        try:
            n = int(value) if value else 0
        except ValueError:
            raise NstliteError(f"NSTLITE_TRANSFORM_THREADS must be a whole number, not {value!r}") from None
        _transform_threads = max(1, min(MAX_TRANSFORM_THREADS, n or (os.cpu_count() or 1)))
    return _transform_threads


@functools.lru_cache(maxsize=None)
def local_blas_threads():
    """``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27: the BLAS thread count of the
    calling thread only, returning the previous one) of the OpenBLAS that NumPy loaded, or None
    where there is no such function (another BLAS, an older OpenBLAS, no /proc)."""
    try:
        numpy_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
        # NumPy's own copy (SciPy may map a second OpenBLAS): the one under NumPy's install
        # directory, else the only one mapped
        ours = [p for p in paths if p.startswith(numpy_dir) and "numpy" in p]
        ours = ours or (list(paths) if len(paths) == 1 else [])
        if len(ours) != 1:
            return None
        fn = ctypes.CDLL(ours[0]).openblas_set_num_threads_local
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    except (OSError, AttributeError, ValueError):
        return None


def block_bytes_for(xp) -> int:
    """Scratch bytes per block of the conv kernels for the array module ``xp``: the one place the
    blocking is chosen. NumPy: ``BLOCK_BYTES``, cache-sized. CuPy: 1/``DEVICE_BLOCK_SHARE`` of
    the device memory free now (``backend.device_free_bytes``), never less than ``BLOCK_BYTES``:
    one block per layer wherever the device allows (at 512 px the largest layer needs 0.3 GB),
    smaller blocks on a device with little memory free."""
    if xp is np:
        return BLOCK_BYTES
    free = device_free_bytes(xp)
    return BLOCK_BYTES if free is None else max(BLOCK_BYTES, free // DEVICE_BLOCK_SHARE)


class Workspace:
    """Scratch memory shared by every conv of a network: one flat array per dtype that grows
    to the largest request and is handed out as views (contents undefined between calls),
    the thread pool of ``parallel`` and ``matmul``, and the block size of the kernels that use
    it (``block_bytes``: ``block_bytes_for(xp)`` when the workspace is made, unless given)."""

    def __init__(self, xp, threads=None, block_bytes=None):
        self.xp = xp
        self._flat = {}
        self.block_bytes = block_bytes_for(xp) if block_bytes is None else max(1, int(block_bytes))
        # threads for the element-wise tile transforms (NumPy releases the GIL in its loops);
        # on CuPy the GPU runs them, so one
        if threads is None:
            threads = transform_threads() if xp is np else 1
        self.threads = max(1, int(threads))
        self._pool = None
        # Batched GEMMs split over the same threads, each calling a one-thread OpenBLAS, where
        # OpenBLAS can be set to one thread for our threads alone (see ``matmul``).
        self._blas_local = local_blas_threads() if (xp is np and self.threads > 1) else None

    def parallel(self, fn, n):
        """fn(slice) over [0, n) split into ``threads`` contiguous parts, run side by side
        (the calling thread takes one part). The parts must write disjoint memory."""
        k = min(self.threads, n)
        if k <= 1:
            fn(slice(0, n))
            return
        if self._pool is None:
            # the pool's threads only ever run nstlite's parts: one-thread BLAS for them
            init = (lambda: self._blas_local(1)) if self._blas_local else None
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="nstlite-ws", initializer=init)
        bounds = [n * i // k for i in range(k + 1)]
        futures = [self._pool.submit(fn, slice(bounds[i], bounds[i + 1])) for i in range(1, k)]
        fn(slice(bounds[0], bounds[1]))
        for f in futures:
            f.result()

    def parallel_gemms(self, fn, n):
        """``parallel(fn, n)`` for parts that call GEMMs: each part's BLAS calls run on one
        thread (its own core) where OpenBLAS allows a per-thread count; the calling thread's
        count is restored afterwards. Elsewhere the parts run one after another on the calling
        thread, OpenBLAS threading each GEMM as usual."""
        if self._blas_local is None:
            fn(slice(0, n))
            return
        previous = self._blas_local(1)
        try:
            self.parallel(fn, n)
        finally:
            self._blas_local(previous)

    def matmul(self, a, b, out):
        """out[i] = a[i] @ b[i] for 3-D stacks (the Winograd kernels' 36 GEMMs).

        OpenBLAS threads each GEMM call by itself, with a wake-up and a join per call: for
        36 GEMMs per block that is 36 synchronisations, and small GEMMs (64 channels, small
        maps) share poorly between threads. Where OpenBLAS allows a per-thread thread count,
        the stack is instead split over this workspace's threads, each running its GEMMs on
        one BLAS thread: one synchronisation, and each GEMM whole on one core (the gain is in
        ``docs/performance.md``). Elsewhere (CuPy, other BLAS) one ``matmul`` call."""
        if self._blas_local is None or a.shape[0] < 2:
            return self.xp.matmul(a, b, out=out)
        self.parallel_gemms(lambda k: self.xp.matmul(a[k], b[k], out=out[k]), a.shape[0])
        return out

    def reserve(self, dtype, elements):
        """On a GPU, grow the flat array of ``dtype`` to ``elements`` at once (the largest request
        of the coming evaluation): growing request by request would leave each smaller array
        behind in CuPy's memory pool. On NumPy nothing (the arrays grow as requested)."""
        dtype = np.dtype(dtype)
        flat = self._flat.get(dtype)
        if self.xp is not np and (flat is None or flat.size < elements):
            self._flat[dtype] = None  # the old array goes back to the pool before the new one is taken
            self._flat[dtype] = self.xp.empty(int(elements), dtype=dtype)

    def take(self, dtype, *shapes):
        """Views of consecutive, non-overlapping parts of the flat array, one per shape."""
        dtype = np.dtype(dtype)
        sizes = [int(np.prod(s)) for s in shapes]
        need = sum(sizes)
        flat = self._flat.get(dtype)
        if flat is None or flat.size < need:
            flat = self.xp.empty(need, dtype=dtype)
            self._flat[dtype] = flat
        views, at = [], 0
        for s, n in zip(shapes, sizes):
            views.append(flat[at:at + n].reshape(s))
            at += n
        return views

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self._flat.values())


def rows_per_block(rows, bytes_per_row, block_bytes=BLOCK_BYTES):
    """Rows (of output, or of tiles) per block: ``block_bytes`` of scratch (a workspace's
    ``block_bytes``), at least one."""
    return max(1, min(rows, block_bytes // max(1, bytes_per_row)))
