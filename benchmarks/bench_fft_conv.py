"""Tiled FFT convolution (overlap-save) against nstlite's Winograd F(4x4, 3x3), forward only.

Issue 17, item 2: is FFT convolution worth it for the memory-bound VGG19 layers? This is a
NumPy-only measurement, not a kernel for the library.

The FFT kernel, for an input tile of T x T pixels (a 1-pixel halo around m = T - 2 outputs):

1. tiles of T x T read straight from a zero-padded channels-last buffer (overlapping windows,
   stride m: a strided view), ``np.fft.rfftn`` over the two spatial axes: T x (T/2 + 1)
   complex values per tile and channel;
2. per frequency one product (tiles, C_in) @ (C_in, C_out) with the transformed kernel,
   either one complex GEMM (complex64: 4 real multiplications per complex product) or
   Gauss's three real GEMMs (``--variants gauss``):
       k1 = (Xr + Xi) Wr,  k2 = Xr (Wi - Wr),  k3 = Xi (Wr + Wi);  Re = k1 - k3, Im = k1 + k2
   with the three real kernels made once;
3. ``np.fft.irfftn`` back to T x T, of which the first m x m are the valid correlation
   outputs (a 3x3 kernel at the tile's corner never wraps round), plus bias and ReLU into the
   interior of an output buffer padded the same way.

The kernel's spectrum is conj(DFT(w zero-padded to T x T)) / T^2 (correlation, not
convolution; the 1/T^2 of the inverse folded in), computed in float64 and stored in float32.
Tile rows are processed in blocks of ``Workspace.block_bytes`` of spectra, as the Winograd
kernel does; the FFTs and write-outs are split over the workspace's threads (over tile
columns), the per-frequency GEMMs over the same threads on one-thread OpenBLAS
(``Workspace.matmul`` / ``parallel_gemms``): the same thread arrangement as ``winograd_conv``.

    python benchmarks/bench_fft_conv.py --size 512 --layers conv1_2 [--threads 2] [--repeats 9]
        [--tiles 8,16,32] [--variants complex,gauss,dft-complex,dft-real4,dft-gauss] [--fft-block-mib 64]

Variants: ``complex`` and ``gauss`` transform with ``np.fft.rfftn`` / ``irfftn`` as above;
``dft-*`` do the same 2-D DFT as real or complex matrix products (``DFTConv``,
``DFTComplexConv``): NumPy's FFT calls one line of T points at a time, and on tiles this small
the per-line overhead, not the arithmetic, is its cost.

``--table FILE...`` prints a Markdown table of ``--json`` results instead, ``--pivot FILE...``
one row per layer, map, threads and T with the FFT / Winograd ratio of every variant.

For each layer: the error of every variant and of Winograd against a float64 direct
convolution of the layer's real input (the float64 response of the layers below to a
smooth test image, real VGG19 weights when present), then timings: Winograd and each FFT
variant alternate (W, F1, W, F2, ..., repeated), and the ratio is the median over pairs of
FFT / Winograd. Also the FFT's time per phase (forward FFTs, GEMMs, inverse FFTs + write-out)
and the Winograd kernel's 36 GEMMs alone on the same shapes, so that the GEMM work can be
compared without the transforms. ``uptime``'s load average is printed before and after.
"""
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# bench_objective reads --threads into OPENBLAS_NUM_THREADS when imported, before NumPy loads
import bench_objective  # noqa: E402,F401

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nstlite import layers as L  # noqa: E402
from nstlite.fast.layout import interior, padded_shape, tiles  # noqa: E402
from nstlite.fast.layout import write_out  # noqa: E402
from nstlite.fast.winograd import winograd_conv, winograd_tile_rows, winograd_weights  # noqa: E402
from nstlite.fast.workspace import Workspace, rows_per_block  # noqa: E402
from nstlite.vgg import VGG19  # noqa: E402

from bench_objective import load_params  # noqa: E402

LAYERS = ["conv1_2", "conv2_2", "conv3_2"]
CACHE = os.path.join("/tmp", "nstlite_fft_inputs")
FFT_BLOCK_BYTES = [None]  # --fft-block-mib: block size of the FFT kernels (None: the workspace's)


def load_avg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def errors(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(x - ref).max() / np.abs(ref).max()), float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def test_image(h, w, seed=0):
    """A photograph stand-in: smoothed noise with edges, 0..255 (as winograd_error.py's)."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3))
    img = np.kron(img, np.ones((8, 8, 1)))[:h, :w]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255)


def layer_inputs(params, label, size, wanted):
    """name -> float64 (C, H, W) input of each wanted conv layer for a size x (3/4 size) image
    (width x height), the float64 reference network's response; cached in /tmp."""
    h, w = size * 3 // 4, size
    tag = "real" if label.startswith("real") else "random"
    paths = {n: os.path.join(CACHE, f"{tag}_{size}_{n}.npy") for n in wanted}
    if all(os.path.exists(p) for p in paths.values()):
        return {n: np.load(p) for n, p in paths.items()}
    net64 = VGG19(params, None, dtype="float64", kernel="reference")
    x = net64.preprocess(test_image(h, w))
    last = max(wanted, key=net64.layer_names.index)
    out, cur = {}, x
    for name in net64.layer_names[: net64.layer_names.index(last) + 1]:
        if name.startswith("conv"):
            if name in wanted:
                out[name] = cur
            wt, b = params[name]
            ref = L.conv3x3_forward_reference(cur, np.asarray(wt, np.float64), np.asarray(b, np.float64))[0]
            cur = np.maximum(ref, 0)
        else:
            cur = L.avg_pool_forward(cur)[0]
    os.makedirs(CACHE, exist_ok=True)
    for n, p in paths.items():
        np.save(p, out[n])
    return out


# ----------------------------------------------------------------------------- FFT kernel
class FFTConv:
    """Overlap-save FFT convolution of one layer at one map size (forward, float32)."""

    def __init__(self, w, b, h, wd, T, variant, ws):
        self.T, self.m, self.F = T, T - 2, T // 2 + 1
        self.h, self.w = h, wd
        self.variant = variant
        self.ws = ws
        self.c_out, self.c_in = w.shape[:2]
        self.b = np.asarray(b, np.float32)
        m = self.m
        self.th, self.tw = -(-h // m), -(-wd // m)
        nf = T * self.F
        # kernel spectra (T*F, C_in, C_out), float64 then float32, a block of outputs at a time
        spec = np.empty((nf, self.c_in, self.c_out), np.complex64)
        for o0 in range(0, self.c_out, 32):
            g = np.zeros((min(32, self.c_out - o0), self.c_in, T, T))
            g[:, :, :3, :3] = w[o0:o0 + 32]
            s = np.conj(np.fft.rfft2(g)) / (T * T)                   # (o, C_in, T, F)
            spec[:, :, o0:o0 + 32] = s.transpose(2, 3, 1, 0).reshape(nf, self.c_in, -1)
        if variant == "complex":
            self.W = spec
        else:   # Gauss: Wr, Wi - Wr, Wr + Wi
            wr, wi = spec.real.astype(np.float32), spec.imag.astype(np.float32)
            self.W = (np.ascontiguousarray(wr), wi - wr, wr + wi)
        # blocks of tile rows: ws.block_bytes of spectra (input and output) per block
        per_row = self.tw * nf * (self.c_in + self.c_out) * 8
        self.rows = rows_per_block(self.th, per_row, FFT_BLOCK_BYTES[0] or ws.block_bytes)
        nb = self.rows
        self.X = np.empty((nb, self.tw, T, self.F, self.c_in), np.complex64)
        self.M = np.empty((nb, self.tw, T, self.F, self.c_out), np.complex64)
        self.Y = np.empty((nb, self.tw, T, T, self.c_out), np.float32)
        self.phase = np.zeros(3)   # seconds: forward FFTs, GEMMs, inverse FFTs + write-out

    def weight_bytes(self):
        return self.W.nbytes if self.variant == "complex" else sum(a.nbytes for a in self.W)

    def buffer_shape(self, c):
        """Padded channels-last buffer for this tiling: m*th + 2 rows, m*tw + 2 columns."""
        return (self.m * self.th + 2, self.m * self.tw + 2, c)

    def mults_per_output(self):
        """Real multiplications in the GEMMs per output pixel and (C_in, C_out) pair, counting
        the padding tiles at the map's edges."""
        per = 4 if self.variant == "complex" else 3
        return per * self.T * self.F * self.th * self.tw / (self.h * self.w)

    def __call__(self, xpad, obuf, relu=True):
        """xpad : buffer_shape(C_in), zeros outside the h x w map; obuf : buffer_shape(C_out),
        its interior written (zeros outside the map kept)."""
        T, m, F, tw = self.T, self.m, self.F, self.tw
        ws = self.ws
        rs, cs, es = xpad.strides
        nf = T * F
        for r0 in range(0, self.th, self.rows):
            nb = min(self.rows, self.th - r0)
            t0 = time.perf_counter()
            src = np.lib.stride_tricks.as_strided(xpad[m * r0:], shape=(nb, tw, T, T, self.c_in),
                                                  strides=(m * rs, m * cs, rs, cs, es))
            X, M, Y = self.X[:nb], self.M[:nb], self.Y[:nb]

            def forward(k):  # k: a slice of tile columns, for every tile row of the block
                np.fft.rfftn(src[:, k], axes=(2, 3), out=X[:, k])
            ws.parallel(forward, tw)
            t1 = time.perf_counter()
            # per frequency: (tiles, C_in) views with row stride nf * C_in (BLAS-compatible)
            Xv = X.reshape(nb * tw, nf, self.c_in).transpose(1, 0, 2)
            Mv = M.reshape(nb * tw, nf, self.c_out).transpose(1, 0, 2)
            if self.variant == "complex":
                ws.matmul(Xv, self.W, Mv)
            else:
                self._gauss(Xv, Mv, nb * tw)
            t2 = time.perf_counter()
            a = m * r0

            def inverse(k):
                np.fft.irfftn(M[:, k], s=(T, T), axes=(2, 3), norm="forward", out=Y[:, k])
                # the valid m x m of every tile, as (nb, m, tiles, m, C) into the buffer
                src5 = Y[:, k, :m, :m].transpose(0, 2, 1, 3, 4)
                dst = obuf[1 + a:1 + m * (r0 + nb), 1 + m * k.start:1 + m * k.stop]
                write_out(np, src5, dst.reshape(nb, m, k.stop - k.start, m, -1), self.b, relu, None)
            ws.parallel(inverse, tw)
            t3 = time.perf_counter()
            self.phase += (t1 - t0, t2 - t1, t3 - t2)
        # the padding tiles wrote past the map: zeros there again (the next layer's padding)
        obuf[1 + self.h:] = 0
        obuf[:, 1 + self.w:] = 0
        return obuf

    def _gauss(self, Xv, Mv, n):
        Wr, Wd, Wsum = self.W
        ci, co = self.c_in, self.c_out
        Xf = Xv.view(np.float32)     # (nf, n, 2 C_in): real and imaginary parts interleaved
        Mf = Mv.view(np.float32)

        def part(k):
            xr, xi, xs = (np.empty((n, ci), np.float32) for _ in range(3))
            k1, k2, k3 = (np.empty((n, co), np.float32) for _ in range(3))
            for f in range(k.start, k.stop):
                np.copyto(xr, Xf[f][:, 0::2])
                np.copyto(xi, Xf[f][:, 1::2])
                np.add(xr, xi, out=xs)
                np.matmul(xs, Wr[f], out=k1)
                np.matmul(xr, Wd[f], out=k2)
                np.matmul(xi, Wsum[f], out=k3)
                np.subtract(k1, k3, out=Mf[f][:, 0::2])
                np.add(k1, k2, out=Mf[f][:, 1::2])
        self.ws.parallel_gemms(part, Xv.shape[0])


class DFTConv:
    """The same overlap-save tiling with the two-dimensional DFT done as real matrix products
    (``--variants dft-gauss,dft-real4``): what a transform without NumPy's per-line FFT calls
    costs. O(T) operations per point instead of O(log T), but all of it in a few large GEMMs
    per block, and no complex arithmetic anywhere:

    1. rows: R = Dr @ (T input rows of the buffer), Dr (2F x T) = [cos; -sin] of the
       half-spectrum u = 0 .. T/2 (real and imaginary parts as separate rows), one GEMM per tile
       row over the buffer's full width;
    2. gather: the overlapping T-column windows of R, into G (2, T, F, tiles, C) (a copy);
    3. columns: Z = E @ G, the full complex DFT over v in real form, one GEMM per block: for
       Gauss it yields Xr, Xi and Xr + Xi (3T rows), otherwise Xr, Xi (2T rows);
    4. per frequency the real GEMMs (Gauss: 3, otherwise 4: Xr Wr, Xi Wr, Xr Wi, Xi Wi), their
       products kept apart: the combination into real and imaginary parts is folded into
    5. the inverse over v, one GEMM per block, which only produces the m valid output columns;
    6. the inverse over u (half spectrum to real, also only the m valid rows), then bias, ReLU
       and the write-out, as ``FFTConv``.
    """

    def __init__(self, w, b, h, wd, T, variant, ws):
        self.T, self.m, self.F = T, T - 2, T // 2 + 1
        self.h, self.w, self.ws, self.variant = h, wd, ws, variant
        self.c_out, self.c_in = w.shape[:2]
        self.b = np.asarray(b, np.float32)
        m, F = self.m, self.F
        self.th, self.tw = -(-h // m), -(-wd // m)
        nf = T * F
        gauss = variant == "dft-gauss"
        # kernel spectra for frequencies (v, u), v = 0 .. T-1 along tile columns, u = 0 .. F-1
        # along tile rows: conj(DFT2(w padded)) / T^2, a block of output channels at a time
        Wr = np.empty((nf, self.c_in, self.c_out), np.float32)
        Wi = np.empty_like(Wr)
        for o0 in range(0, self.c_out, 32):
            g = np.zeros((min(32, self.c_out - o0), self.c_in, T, T))
            g[:, :, :3, :3] = w[o0:o0 + 32]
            s = np.conj(np.fft.fft2(g))[:, :, :F, :] / (T * T)      # (o, C_in, u, v)
            s = s.transpose(3, 2, 1, 0).reshape(nf, self.c_in, -1)   # (v, u) -> (C_in, o)
            Wr[:, :, o0:o0 + 32] = s.real
            Wi[:, :, o0:o0 + 32] = s.imag
        self.W = (Wr, Wi - Wr, Wr + Wi) if gauss else (Wr, Wi)
        # (Re, Im) of the product as combinations of the pieces
        alpha, beta = ([1, 0, -1], [1, 1, 0]) if gauss else ([1, 0, 0, -1], [0, 1, 1, 0])
        self.pieces = len(alpha)
        t = np.arange(T)
        u = np.arange(F)
        ang_r = 2 * np.pi * np.outer(u, t) / T                      # (u, i)
        self.Dr = np.vstack([np.cos(ang_r), -np.sin(ang_r)]).astype(np.float32)          # (2F, T)
        ang = 2 * np.pi * np.outer(t, t) / T                        # (v, j)
        Ec, Es = np.cos(ang), -np.sin(ang)
        rows = [np.hstack([Ec, -Es]), np.hstack([Es, Ec])]
        if gauss:
            rows.append(np.hstack([Ec + Es, Ec - Es]))
        self.E = np.vstack(rows).astype(np.float32)                 # (2T or 3T, 2T)
        # inverse over v, output column b < m: rows (b, real/imag), columns (piece, v)
        ang_i = 2 * np.pi * np.outer(np.arange(m), t) / T           # (b, v)
        IEc, IEs = np.cos(ang_i), np.sin(ang_i)
        inv = np.empty((m, 2, self.pieces, T))
        for k in range(self.pieces):
            inv[:, 0, k] = alpha[k] * IEc - beta[k] * IEs
            inv[:, 1, k] = alpha[k] * IEs + beta[k] * IEc
        self.Inv1 = inv.reshape(2 * m, self.pieces * T).astype(np.float32)
        # inverse over u (half spectrum, real output row a < m): [c_u cos, -c_u sin]
        c = np.full(F, 2.0)
        c[0] = c[-1] = 1.0
        ang_u = 2 * np.pi * np.outer(np.arange(m), u) / T          # (a, u)
        self.R2 = np.hstack([c * np.cos(ang_u), -c * np.sin(ang_u)]).astype(np.float32)  # (m, 2F)
        npz = 3 if gauss else 2
        self.npz = npz
        # blocks: ws.block_bytes of the GEMMs' operands (Z and the pieces) per block
        per_row = self.tw * nf * (npz * self.c_in + self.pieces * self.c_out) * 4
        self.rows = rows_per_block(self.th, per_row, FFT_BLOCK_BYTES[0] or ws.block_bytes)
        nb, tw = self.rows, self.tw
        wv = m * tw + 2
        self.R = np.empty((nb, 2 * F, wv, self.c_in), np.float32)
        self.G = np.empty((2, T, F, nb, tw, self.c_in), np.float32)
        self.Z = np.empty((npz, T, F, nb * tw, self.c_in), np.float32)
        self.K = np.empty((self.pieces, T, F, nb * tw, self.c_out), np.float32)
        self.P = np.empty((m, 2, F, nb * tw, self.c_out), np.float32)
        self.Y = np.empty((m, m, nb * tw, self.c_out), np.float32)
        self.phase = np.zeros(3)

    buffer_shape = FFTConv.buffer_shape
    mults_per_output = None  # set below

    def _products(self, Z, K, k):
        """The per-frequency real GEMMs for the frequencies k (a slice), pieces kept apart."""
        W = self.W
        for f in range(k.start, k.stop):
            if self.npz == 3:   # Gauss: (Xr + Xi) Wr, Xr (Wi - Wr), Xi (Wr + Wi)
                np.matmul(Z[2, f], W[0][f], out=K[0, f])
                np.matmul(Z[0, f], W[1][f], out=K[1, f])
                np.matmul(Z[1, f], W[2][f], out=K[2, f])
            else:
                np.matmul(Z[:2, f], W[0][f], out=K[:2, f])       # Xr Wr, Xi Wr
                np.matmul(Z[:2, f], W[1][f], out=K[2:, f])       # Xr Wi, Xi Wi

    def _row_blocks(self, xpad):
        """(first tile row, tile rows, start time) of each block, its row pass done."""
        for r0 in range(0, self.th, self.rows):
            nb = min(self.rows, self.th - r0)
            t0 = time.perf_counter()
            self._row_pass(xpad, r0, nb)
            yield r0, nb, t0

    def _row_pass(self, xpad, r0, nb):
        """1. rows: R[r] = Dr @ rows m r0 + m r + (0 .. T-1) of the buffer, full width."""
        T, m, F, ci = self.T, self.m, self.F, self.c_in
        rs, _, es = xpad.strides
        wv = m * self.tw + 2
        src = np.lib.stride_tricks.as_strided(xpad[m * r0:], shape=(nb, T, wv * ci), strides=(m * rs, rs, es))
        R = self.R[:nb].reshape(nb, 2 * F, wv * ci)

        def rows(k):
            for r in range(nb):
                np.matmul(self.Dr, src[r][:, k], out=R[r][:, k])
        self.ws.parallel_gemms(rows, wv * ci)

    def weight_bytes(self):
        return sum(a.nbytes for a in self.W)

    def __call__(self, xpad, obuf, relu=True):
        T, m, F, tw = self.T, self.m, self.F, self.tw
        ws, ci, co = self.ws, self.c_in, self.c_out
        wv = m * tw + 2
        nf = T * F
        for r0, nb, t0 in self._row_blocks(xpad):
            n = nb * tw
            # 2. gather the windows: G[p, j, u, r, t] = R[r, p F + u, m t + j]
            R6 = self.R[:nb].reshape(nb, 2, F, wv, ci)
            G = self.G.reshape(-1)[:2 * nf * n * ci].reshape(2, T, F, nb, tw, ci)

            def gather(k):
                for j in range(k.start, k.stop):
                    np.copyto(G[:, j], R6[:, :, :, j:j + m * (tw - 1) + 1:m].transpose(1, 2, 0, 3, 4))
            ws.parallel(gather, T)
            # 3. columns: Z = E @ G, (npz T, F n C) <- (npz T, 2T) @ (2T, F n C)
            G2 = G.reshape(2 * T, F * n * ci)
            Z2 = self.Z.reshape(-1)[:self.npz * nf * n * ci].reshape(self.npz * T, F * n * ci)

            def columns(k):
                np.matmul(self.E, G2[:, k], out=Z2[:, k])
            ws.parallel_gemms(columns, F * n * ci)
            t1 = time.perf_counter()
            # 4. per frequency
            Z = Z2.reshape(self.npz, nf, n, ci)
            K2 = self.K.reshape(-1)[:self.pieces * nf * n * co].reshape(self.pieces * T, F * n * co)
            K = K2.reshape(self.pieces, nf, n, co)
            ws.parallel_gemms(lambda k: self._products(Z, K, k), nf)
            t2 = time.perf_counter()
            # 5. inverse over v: P (2m, F n C) = Inv1 (2m, pieces T) @ K (pieces T, F n C)
            P2 = self.P.reshape(-1)[:2 * m * F * n * co].reshape(2 * m, F * n * co)

            def inv_v(k):
                np.matmul(self.Inv1, K2[:, k], out=P2[:, k])
            ws.parallel_gemms(inv_v, F * n * co)
            # 6. inverse over u: Y[b] (m, n C) = R2 (m, 2F) @ P[b] (2F, n C)
            P3 = P2.reshape(m, 2 * F, n * co)
            Y = self.Y.reshape(-1)[:m * m * n * co].reshape(m, m, n * co)

            def inv_u(k):
                for bcol in range(m):
                    np.matmul(self.R2, P3[bcol][:, k], out=Y[bcol][:, k])
            ws.parallel_gemms(inv_u, n * co)
            # out[m r + a, m t + b] = Y[b, a, r, t]
            src5 = Y.reshape(m, m, nb, tw, co).transpose(2, 1, 3, 0, 4)
            dst = obuf[1 + m * r0:1 + m * (r0 + nb), 1:1 + m * tw].reshape(nb, m, tw, m, co)
            ws.parallel(lambda k: write_out(np, src5[:, :, k], dst[:, :, k], self.b, relu, None), tw)
            t3 = time.perf_counter()
            self.phase += (t1 - t0, t2 - t1, t3 - t2)
        obuf[1 + self.h:] = 0
        obuf[:, 1 + self.w:] = 0
        return obuf


def _dft_mults(self):
    return self.pieces * self.T * self.F * self.th * self.tw / (self.h * self.w)


DFTConv.mults_per_output = _dft_mults


class DFTComplexConv(DFTConv):
    """``--variants dft-complex``: the DFT-as-GEMM tiling of ``DFTConv`` with complex64 data
    after the row pass, so that the column pass, the per-frequency products and the inverse
    over v are complex GEMMs (OpenBLAS's cgemm, which ran at a higher rate than sgemm on these
    shapes): the gather interleaves the real and imaginary rows of R as it copies; the inverse
    over u is a complex GEMM of which only the real part is used (twice the multiplications it
    needs, on the smallest of the passes)."""

    def __init__(self, w, b, h, wd, T, variant, ws):
        self.T, self.m, self.F = T, T - 2, T // 2 + 1
        self.h, self.w, self.ws, self.variant = h, wd, ws, variant
        self.c_out, self.c_in = w.shape[:2]
        self.b = np.asarray(b, np.float32)
        m, F = self.m, self.F
        self.th, self.tw = -(-h // m), -(-wd // m)
        nf = T * F
        spec = np.empty((nf, self.c_in, self.c_out), np.complex64)
        for o0 in range(0, self.c_out, 32):
            g = np.zeros((min(32, self.c_out - o0), self.c_in, T, T))
            g[:, :, :3, :3] = w[o0:o0 + 32]
            s = np.conj(np.fft.fft2(g))[:, :, :F, :] / (T * T)      # (o, C_in, u, v)
            spec[:, :, o0:o0 + 32] = s.transpose(3, 2, 1, 0).reshape(nf, self.c_in, -1)
        self.W = (spec,)
        self.pieces = 4    # one complex product: 4 real multiplications
        t, u = np.arange(T), np.arange(F)
        ang_r = 2 * np.pi * np.outer(u, t) / T
        self.Dr = np.vstack([np.cos(ang_r), -np.sin(ang_r)]).astype(np.float32)          # (2F, T)
        self.E = np.exp(-2j * np.pi * np.outer(t, t) / T).astype(np.complex64)             # (v, j)
        self.IE = np.exp(2j * np.pi * np.outer(np.arange(m), t) / T).astype(np.complex64)  # (b, v)
        c = np.full(F, 2.0)
        c[0] = c[-1] = 1.0
        self.Cu = (c * np.exp(2j * np.pi * np.outer(np.arange(m), u) / T)).astype(np.complex64)  # (a, u)
        per_row = self.tw * nf * (self.c_in + self.c_out) * 8
        self.rows = rows_per_block(self.th, per_row, FFT_BLOCK_BYTES[0] or ws.block_bytes)
        nb, tw = self.rows, self.tw
        wv = m * tw + 2
        self.R = np.empty((nb, 2 * F, wv, self.c_in), np.float32)
        self.G = np.empty((T, F, nb * tw, self.c_in), np.complex64)
        self.Z = np.empty((T, F, nb * tw, self.c_in), np.complex64)
        self.K = np.empty((T, F, nb * tw, self.c_out), np.complex64)
        self.P = np.empty((m, F, nb * tw, self.c_out), np.complex64)
        self.Y = np.empty((m, m, nb * tw, self.c_out), np.complex64)
        self.phase = np.zeros(3)

    def __call__(self, xpad, obuf, relu=True):
        T, m, F, tw = self.T, self.m, self.F, self.tw
        ws, ci, co = self.ws, self.c_in, self.c_out
        wv = m * tw + 2
        nf = T * F
        for r0, nb, t0 in self._row_blocks(xpad):
            n = nb * tw
            # gather + interleave: G[j, u, r, t] = R[r, u, m t + j] + i R[r, F + u, m t + j]
            R6 = self.R[:nb].reshape(nb, 2, F, wv, ci)
            G = self.G.reshape(-1)[:nf * n * ci].reshape(T, F, nb, tw, ci)
            Gf = G.view(np.float32)

            def gather(k):
                for j in range(k.start, k.stop):
                    win = R6[:, :, :, j:j + m * (tw - 1) + 1:m]          # (nb, 2, F, tw, C)
                    np.copyto(Gf[j][..., 0::2], win[:, 0].transpose(1, 0, 2, 3))
                    np.copyto(Gf[j][..., 1::2], win[:, 1].transpose(1, 0, 2, 3))
            ws.parallel(gather, T)
            G2 = G.reshape(T, F * n * ci)
            Z2 = self.Z.reshape(-1)[:nf * n * ci].reshape(T, F * n * ci)
            ws.parallel_gemms(lambda k: np.matmul(self.E, G2[:, k], out=Z2[:, k]), F * n * ci)
            t1 = time.perf_counter()
            Z = Z2.reshape(nf, n, ci)
            K2 = self.K.reshape(-1)[:nf * n * co].reshape(T, F * n * co)
            ws.matmul(Z, self.W[0], K2.reshape(nf, n, co))
            t2 = time.perf_counter()
            P2 = self.P.reshape(-1)[:m * F * n * co].reshape(m, F * n * co)
            ws.parallel_gemms(lambda k: np.matmul(self.IE, K2[:, k], out=P2[:, k]), F * n * co)
            P3 = P2.reshape(m, F, n * co)
            Y = self.Y.reshape(-1)[:m * m * n * co].reshape(m, m, n * co)

            def inv_u(k):
                for bcol in range(m):
                    np.matmul(self.Cu, P3[bcol][:, k], out=Y[bcol][:, k])
            ws.parallel_gemms(inv_u, n * co)
            src5 = Y.real.reshape(m, m, nb, tw, co).transpose(2, 1, 3, 0, 4)
            dst = obuf[1 + m * r0:1 + m * (r0 + nb), 1:1 + m * tw].reshape(nb, m, tw, m, co)
            ws.parallel(lambda k: write_out(np, src5[:, :, k], dst[:, :, k], self.b, relu, None), tw)
            t3 = time.perf_counter()
            self.phase += (t1 - t0, t2 - t1, t3 - t2)
        obuf[1 + self.h:] = 0
        obuf[:, 1 + self.w:] = 0
        return obuf


# ----------------------------------------------------------------------------- Winograd side
class WinogradConv:
    def __init__(self, w, b, h, wd, ws):
        self.U = winograd_weights(np.asarray(w, np.float32))
        self.b = np.asarray(b, np.float32)
        self.h, self.w, self.ws = h, wd, ws
        self.c_in, self.c_out = w.shape[1], w.shape[0]

    def buffer_shape(self, c):
        return padded_shape(self.h, self.w, c)

    def __call__(self, xpad, obuf, relu=True):
        winograd_conv(xpad, self.U, interior(obuf, self.h, self.w), self.h, self.w, bias=self.b,
                      relu=relu, ws=self.ws)
        return obuf

    def gemms_only(self, V, M):
        """The kernel's 36 GEMMs per block on the same shapes, without the transforms."""
        th = tiles(self.h)
        rows = winograd_tile_rows(self.h, self.w, self.c_in, self.c_out, 4, self.ws.block_bytes)
        tw = tiles(self.w)
        for r0 in range(0, th, rows):
            nb = min(rows, th - r0)
            self.ws.matmul(V[:, :nb * tw], self.U, M[:, :nb * tw])


def padded(x_hwc, shape):
    buf = np.zeros(shape, np.float32)
    buf[1:1 + x_hwc.shape[0], 1:1 + x_hwc.shape[1]] = x_hwc
    return buf


def winograd_gemm_times(wk, bufs, repeats):
    """Winograd's 36 GEMMs alone (seconds) and their share of the whole kernel, alternating."""
    rows_w = winograd_tile_rows(wk.h, wk.w, wk.c_in, wk.c_out, 4, wk.ws.block_bytes)
    n = rows_w * tiles(wk.w)
    V = np.random.default_rng(0).standard_normal((36, n, wk.c_in)).astype(np.float32)
    Mw = np.empty((36, n, wk.c_out), np.float32)
    g_times, g_pair = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        wk(*bufs)
        t1 = time.perf_counter()
        wk.gemms_only(V, Mw)
        t2 = time.perf_counter()
        g_times.append(t2 - t1)
        g_pair.append((t2 - t1) / (t1 - t0))
    return g_times, g_pair


def run_layer(name, params, x64, T_list, variants, repeats, threads, ws):
    c, h, wd = x64.shape
    wt, b = params[name]
    w64, b64 = np.asarray(wt, np.float64), np.asarray(b, np.float64)
    ref = L.conv3x3_forward_reference(x64, w64, b64)[0].transpose(1, 2, 0)    # (h, w, C_out)
    x32 = x64.transpose(1, 2, 0).astype(np.float32)
    w32 = w64.astype(np.float32)
    kernels = {"winograd": WinogradConv(w32, b, h, wd, ws)}
    for T in T_list:
        for v in variants:
            # kernel spectra from the float32 weights, as Winograd's U is
            cls = DFTComplexConv if v == "dft-complex" else DFTConv if v.startswith("dft") else FFTConv
            kernels[f"fft T={T} {v}"] = cls(w32.astype(np.float64), b, h, wd, T, v, ws)
    bufs = {k: (padded(x32, kern.buffer_shape(c)), np.zeros(kern.buffer_shape(w32.shape[0]), np.float32))
            for k, kern in kernels.items()}
    # correctness (no ReLU, bias included)
    outs, rows = {}, {}
    for k, kern in kernels.items():
        xin, ob = bufs[k]
        kern(xin, ob, relu=False)
        outs[k] = ob[1:1 + h, 1:1 + wd].copy()
        assert not ob[1 + h:].any() and not ob[:, 1 + wd:].any()
    for k in kernels:
        e = errors(outs[k], ref)
        rows[k] = {"err_max": e[0], "err_l2": e[1], "err_vs_winograd": errors(outs[k], outs["winograd"])[0]}
    # timing: W, F1, W, F2, ... repeated; warm-up once each
    for k, kern in kernels.items():
        kern(*bufs[k])
    fft_keys = [k for k in kernels if k != "winograd"]
    times = {k: [] for k in kernels}
    pair = {k: [] for k in fft_keys}
    for kern in kernels.values():
        if not isinstance(kern, WinogradConv):
            kern.phase[:] = 0
    load0 = load_avg()
    t_start = time.perf_counter()
    for r in range(repeats):
        order = fft_keys[r % len(fft_keys):] + fft_keys[:r % len(fft_keys)]
        for k in order:
            t0 = time.perf_counter()
            kernels["winograd"](*bufs["winograd"])
            t1 = time.perf_counter()
            kernels[k](*bufs[k])
            t2 = time.perf_counter()
            times["winograd"].append(t1 - t0)
            times[k].append(t2 - t1)
            pair[k].append((t2 - t1) / (t1 - t0))
    g_times, g_pair = winograd_gemm_times(kernels["winograd"], bufs["winograd"], repeats)
    elapsed = time.perf_counter() - t_start
    load1 = load_avg()
    wmed = float(np.median(times["winograd"]))
    out = {"layer": name, "map": f"{wd}x{h}", "c_in": c, "c_out": w32.shape[0], "threads": threads,
           "load_before": load0, "load_after": load1, "timing_seconds": round(elapsed, 1),
           "winograd_ms": 1e3 * wmed, "winograd_gemms_ms": 1e3 * float(np.median(g_times)),
           "winograd_gemm_share": float(np.median(g_pair)),
           "winograd_mults": 36 * tiles(h) * tiles(wd) / (h * wd), "kernels": {}}
    for k, kern in kernels.items():
        d = dict(rows[k])
        if k != "winograd":
            ph = kern.phase / len(times[k])
            d.update(ms=1e3 * float(np.median(times[k])), ratio=float(np.median(pair[k])),
                     ratio_of_medians=float(np.median(times[k])) / wmed,
                     phases_ms=[round(1e3 * p, 2) for p in ph], mults=kern.mults_per_output(),
                     weight_mib=kern.weight_bytes() / 2 ** 20, T=kern.T, variant=kern.variant,
                     tiles_per_block=kern.rows * kern.tw, blocks=-(-kern.th // kern.rows))
        out["kernels"][k] = d
    return out


def print_layer(res):
    print(f"\n## {res['layer']} ({res['c_in']}->{res['c_out']}) at {res['map']}, {res['threads']} thread(s); "
          f"load {res['load_before']} -> {res['load_after']}; timing {res['timing_seconds']} s")
    print(f"winograd: {res['winograd_ms']:.1f} ms (median), its 36 GEMMs alone {res['winograd_gemms_ms']:.1f} ms "
          f"({100 * res['winograd_gemm_share']:.0f} % of the kernel, median of pairs); "
          f"{res['winograd_mults']:.2f} mults/output/channel pair")
    wk = res["kernels"]["winograd"]
    print(f"winograd error vs float64: max {wk['err_max']:.2e}, L2 {wk['err_l2']:.2e}")
    print(f"{'variant':22s} {'err max':>9s} {'err L2':>9s} {'vs wino':>9s} {'ms':>8s} {'ratio':>6s} "
          f"{'fft ms':>7s} {'gemm ms':>8s} {'ifft ms':>8s} {'mults':>6s} {'W MiB':>6s}")
    for k, d in res["kernels"].items():
        if k == "winograd":
            continue
        p = d["phases_ms"]
        print(f"{k:22s} {d['err_max']:9.2e} {d['err_l2']:9.2e} {d['err_vs_winograd']:9.2e} {d['ms']:8.1f} "
              f"{d['ratio']:6.2f} {p[0]:7.1f} {p[1]:8.1f} {p[2]:8.1f} {d['mults']:6.2f} {d['weight_mib']:6.1f}")
    sys.stdout.flush()


def print_table(paths):
    """Markdown table of --json results (one row per layer, map, threads, T, variant)."""
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    print("| layer | map | thr | T | variant | err max (FFT / Wino) | ms FFT | ms Wino | ratio | "
          "FFT GEMMs / Wino | mults/out | load (1-min) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        wk = r["kernels"]["winograd"]
        for k, d in r["kernels"].items():
            if k == "winograd":
                continue
            print(f"| {r['layer']} | {r['map']} | {r['threads']} | {d['T']} | {d['variant']} | "
                  f"{d['err_max']:.1e} / {wk['err_max']:.1e} | {d['ms']:.1f} | "
                  f"{d['ms'] / d['ratio_of_medians']:.1f} | **{d['ratio']:.2f}** | "
                  f"{d['phases_ms'][1] / r['winograd_ms']:.2f} | {d['mults']:.2f} | "
                  f"{r['load_before'].split()[0]}-{r['load_after'].split()[0]} |")


def print_pivot(paths):
    """One row per layer, map, threads and T: FFT / Winograd (median of pairs) for each variant,
    the worst FFT error and Winograd's (normwise max vs float64), the load range."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs += [json.loads(line) for line in f if line.strip()]
    variants = ["complex", "gauss", "dft-complex", "dft-real4", "dft-gauss"]
    cells, meta = {}, {}
    for r in runs:
        for k, d in r["kernels"].items():
            if k == "winograd":
                continue
            key = (r["layer"], r["map"], r["threads"], d["T"], r.get("fft_block_mib") or 16)
            cells.setdefault(key, {})[d["variant"]] = d
            m = meta.setdefault(key, {"wino_ms": [], "wino_err": 0.0, "loads": []})
            m["wino_ms"].append(r["winograd_ms"])
            m["wino_err"] = max(m["wino_err"], r["kernels"]["winograd"]["err_max"])
            m["loads"] += [float(r["load_before"].split()[0]), float(r["load_after"].split()[0])]
    print("| layer | map | thr | T | FFT blocks MiB | mults/out (4-mult / Gauss) | " + " | ".join(variants) +
          " | FFT err max (worst) | Wino err max | Wino ms | load |")
    print("| --- " * (10 + len(variants)) + "|")
    for key in sorted(cells, key=lambda k: (k[2], k[4], LAYERS.index(k[0]), -int(k[1].split("x")[0]), k[3])):
        c, m = cells[key], meta[key]
        any_d = next(iter(c.values()))
        four = 4 * any_d["mults"] / (4 if any_d["variant"] in ("complex", "dft-complex", "dft-real4") else 3)
        ratios = " | ".join(f"{c[v]['ratio']:.2f}" if v in c else "-" for v in variants)
        err = max(d["err_max"] for d in c.values())
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]:g} | {four:.2f} / {0.75 * four:.2f} | {ratios} | "
              f"{err:.1e} | {m['wino_err']:.1e} | {min(m['wino_ms']):.0f}-{max(m['wino_ms']):.0f} | "
              f"{min(m['loads']):.1f}-{max(m['loads']):.1f} |")


def main():
    if sys.argv[1:2] == ["--table"]:
        return print_table(sys.argv[2:])
    if sys.argv[1:2] == ["--pivot"]:
        return print_pivot(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="image width; height is 3/4 of it (512 -> 512x384)")
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--tiles", default="8,16,32", help="FFT tile sides T (input, with the 1-px halo)")
    ap.add_argument("--variants", default="complex,gauss,dft-complex,dft-real4,dft-gauss")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fft-block-mib", type=float, help="block size of the FFT kernels (default: the workspace's, "
                    "as Winograd's: 16 MiB of spectra per block)")
    ap.add_argument("--json", help="append the results as JSON lines to this file")
    args = ap.parse_args()
    if args.fft_block_mib:
        FFT_BLOCK_BYTES[0] = int(args.fft_block_mib * 2 ** 20)
    params, _, label = load_params()
    wanted = args.layers.split(",")
    ws = Workspace(np, threads=args.threads)
    print(f"# weights: {label}; image {args.size}x{args.size * 3 // 4}; threads {args.threads} "
          f"(workspace {ws.threads}, OpenBLAS per-thread count: {ws._blas_local is not None}); "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(default)')}; "
          f"FFT blocks {args.fft_block_mib or ws.block_bytes / 2 ** 20} MiB; load {load_avg()}")
    inputs = layer_inputs(params, label, args.size, wanted)
    for name in wanted:
        res = run_layer(name, params, inputs[name], [int(t) for t in args.tiles.split(",")],
                        args.variants.split(","), args.repeats, args.threads, ws)
        res["weights"] = label
        res["fft_block_mib"] = args.fft_block_mib
        print_layer(res)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    sys.exit(main())
