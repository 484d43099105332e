"""Float32 error of the fast conv kernels against a float64 reference, beside PyTorch's own.

For every conv layer of VGG19 up to conv5_1, the layer's real input (the response of the
layer below to an image, computed in float64) is convolved in float32 by nstlite's Winograd
F(4x4, 3x3) and shifted-GEMM kernels and by PyTorch (oneDNN), forward and input gradient
(for an output gradient like the one the style loss sends back: ``G - A`` times F), and
each result is compared with the float64 reference convolution.

    python benchmarks/winograd_error.py [--size 96]

Errors: ``max|x - ref| / max|ref|`` (normwise max) and ``||x - ref|| / ||ref||`` (relative L2).
Uses the real VGG19 weights when ``nstlite.load_vgg19()`` finds them, else random ones.
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

import argparse  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nstlite import layers as L  # noqa: E402
from nstlite.fast.plan import CONV_KERNELS  # noqa: E402
from nstlite.vgg import VGG19  # noqa: E402

from bench_objective import DEPTH_CONVS, load_params  # noqa: E402


def errors(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.abs(x - ref).max() / np.abs(ref).max(), np.linalg.norm(x - ref) / np.linalg.norm(ref)


def smooth_image(size, seed=0):
    """A photograph stand-in: smoothed noise with edges, 0..255."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 255, (size // 8 + 2, size // 8 + 2, 3))
    img = np.kron(img, np.ones((8, 8, 1)))[:size, :size]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
    params, _, label = load_params()
    net64 = VGG19(params, None, dtype="float64", kernel="reference")
    x = net64.preprocess(smooth_image(args.size))
    names = net64.layer_names[: net64.layer_names.index("conv5_1") + 1]
    inputs, h = {}, x
    for name in names:  # the float64 input of every conv layer
        if name.startswith("conv"):
            inputs[name] = h
            w, b = net64.weights[name]
            h = np.maximum(L.conv3x3_forward_reference(h, w, b)[0], 0)
        else:
            h = L.avg_pool_forward(h)[0]
    rng = np.random.default_rng(1)
    kernels = ["winograd", "shifted_gemm"]
    columns = kernels + (["torch"] if torch else [])
    head = f"{'layer':8s} {'pass':8s}" + "".join(f" {k + ' max':>17s} {k + ' L2':>16s}" for k in columns)
    print(f"# weights: {label}; image {args.size}x{args.size}; errors vs float64 reference")
    print(head)
    worst = {k: [0.0, 0.0] for k in kernels + ["torch"]}
    for name in DEPTH_CONVS:
        w, b = params[name]
        w64, b64 = np.asarray(w, np.float64), np.asarray(b, np.float64)
        xin = inputs[name]
        out64, cache = L.conv3x3_forward_reference(xin, w64, b64)
        # an output gradient shaped like the style loss's: (G - A) F with a perturbed target
        F = np.maximum(out64, 0).reshape(out64.shape[0], -1)
        G = F @ F.T
        dout = ((G * (1 + 0.1 * rng.standard_normal(G.shape)) - G) @ F).reshape(out64.shape) * (out64 > 0)
        dx64 = L.conv3x3_backward_reference(dout, cache)
        x32, w32, b32, d32 = (a.astype(np.float32) for a in (xin, w64, b64, dout))
        row = {"forward": [], "backward": []}
        for k in kernels:
            fwd, bwd = CONV_KERNELS[k]
            o, c = fwd(x32, w32, b32)
            row["forward"] += errors(o, out64)
            row["backward"] += errors(bwd(d32, c), dx64)
        if torch:
            tx, tw, tb, td = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x32, w32, b32, d32))
            with torch.no_grad():
                o = torch.nn.functional.conv2d(tx[None], tw, tb, padding=1)[0].numpy()
                dx = torch.nn.grad.conv2d_input((1,) + x32.shape, tw, td[None], padding=1)[0].numpy()
            row["forward"] += errors(o, out64)
            row["backward"] += errors(dx, dx64)
        for p in ("forward", "backward"):
            vals = row[p]
            cells = (f" {v:17.2e}" if i % 2 == 0 else f" {v:16.2e}" for i, v in enumerate(vals))
            print(f"{name:8s} {p:8s}" + "".join(cells))
            for i, k in enumerate(kernels + (["torch"] if torch else [])):
                worst[k][0] = max(worst[k][0], vals[2 * i])
                worst[k][1] = max(worst[k][1], vals[2 * i + 1])
    print("\nworst over layers and passes (max / L2):")
    for k, (m, l2) in worst.items():
        if k != "torch" or torch:
            print(f"  {k:13s} {m:.2e} / {l2:.2e}")
    whole_objective(params, args.size, torch)


def whole_objective(params, size, torch):
    """Image gradient of the default objective in float32 vs the float64 reference path."""
    from bench_objective import nstlite_objective, torch_objective

    net64, obj64, x64 = nstlite_objective(params, size, "reference", dtype="float64")
    ref = obj64(x64)[1]
    ref_pattern = net64.activation_pattern()
    print(f"\nwhole objective (content conv4_2 + 5 style layers, {size}x{size}), image gradient vs float64 (max / L2);")
    print("a ReLU that rounding switches on or off changes the gradient by that unit's whole contribution:")
    for kernel in ["auto", "winograd", "shifted_gemm"]:
        net, obj, x = nstlite_objective(params, size, kernel)
        err = errors(obj(x)[1], ref)
        flips = sum(int((np.asarray(a) != np.asarray(b)).sum()) for a, b in zip(net.activation_pattern(), ref_pattern))
        print(f"  nstlite {kernel:13s} " + " / ".join(f"{e:.2e}" for e in err) + f"   ({flips} ReLU units switched)")
    if torch:
        evaluate, _ = torch_objective(torch, params, size, net)
        print("  torch float32         " + " / ".join(f"{e:.2e}" for e in errors(evaluate().numpy(), ref)))


if __name__ == "__main__":
    sys.exit(main())
