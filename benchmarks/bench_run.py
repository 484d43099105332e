"""The whole run, not only the kernel: seconds per evaluation of a real ``nstlite stylize`` run
(read from its ``--log``) against PyTorch's ``torch.optim.LBFGS`` on the same objective.

    python benchmarks/bench_run.py --sizes 256 --iterations 10 --pairs 3 \\
        --torch-python /path/to/venv-with-torch/bin/python
    python benchmarks/bench_run.py --sizes 256,512 --pairs 5 --bounds both   # with and without the box

Each measurement is a fresh process; nstlite and PyTorch alternate (n, t, n, t, ...) so that
both see the same machine load, and the table quotes medians over the pairs and the median of
the per-pair ratios, with the 1-minute load average seen before each process.

One evaluation is everything between two consecutive evaluations of the optimiser: for
nstlite the forward, the losses, the backward, the SciPy boundary, L-BFGS-B's own work and the
log line (the log's ``seconds`` field is written at the end of every evaluation); for PyTorch
the closure (forward, losses, autograd backward) and ``torch.optim.LBFGS``'s step. The first
evaluation (start-up) is excluded on both sides; the median of the rest is taken.

The same objective on both sides: the photograph and the artwork loaded and resized by
nstlite, the same VGG19 weights (``nstlite.load_vgg19``), content ``conv4_2`` (alpha),
style ``conv1_1`` ... ``conv5_1`` with w_l = 0.2 (beta), eq. (4)'s normalisation, average
pooling, float32, start from the photograph. nstlite keeps the pixels in their box (L-BFGS-B),
PyTorch's L-BFGS has no bounds (``--bounds none``: nstlite without its box too, the same problem;
``both``: each round runs nstlite both ways); both use a history of 10 and a strong-Wolfe line search.
The PyTorch side runs in ``--torch-python`` (an interpreter with torch, NumPy, SciPy, h5py,
Pillow; default: this one), so nstlite never needs torch installed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# the example images: shared/images beside the checkout (or beside the folder of worktrees)
_CANDIDATES = [os.path.join(ROOT, *[".."] * k, "shared", "images") for k in (1, 2)]
IMAGES = os.environ.get("NSTLITE_IMAGES") or next((d for d in _CANDIDATES if os.path.isdir(d)), _CANDIDATES[0])
CONTENT, STYLE = "conv4_2", ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
ALPHA, BETA = 1.0, 1e3


def images():
    content, style = os.path.join(IMAGES, "tubingen.jpg"), os.path.join(IMAGES, "starry_night.jpg")
    if not (os.path.exists(content) and os.path.exists(style)):
        raise SystemExit(f"the example images are not in {IMAGES}")
    return content, style


def log_per_evaluation(path):
    """Median seconds between consecutive evaluations of a JSON-lines log (first excluded)."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    seconds = [r["seconds"] for r in records if "seconds" in r]  # the header and end records have none
    return float(np.median(np.diff(seconds)[1:])), len(seconds)


def run_nstlite(size, iterations, python, device="cpu", bounds="pixels"):
    """One ``nstlite stylize`` process: (seconds per evaluation, evaluations)."""
    content, style = images()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "run.jsonl")
        cmd = [python, "-m", "nstlite", "stylize", "--content", content, "--style", style, "--size", str(size),
               "--iterations", str(iterations), "--content-weight", str(ALPHA), "--style-weight", str(BETA),
               "--content-layers", CONTENT, "--style-layers", ",".join(f"{n}:0.2" for n in STYLE),
               "--init", "content", "--device", device, "--output", os.path.join(tmp, "out.png"), "--log", log,
               "--bounds", bounds, "--quiet"]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
        return log_per_evaluation(log)


def run_torch(size, iterations, python, device="cpu"):
    """One PyTorch process (this file with ``--torch-child``): (seconds per evaluation, evaluations)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([python, os.path.abspath(__file__), "--torch-child", str(size), "--iterations",
                          str(iterations), "--device", device], check=True, env=env, capture_output=True,
                         text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return row["per_evaluation_s"], row["evaluations"]


def torch_child(size, iterations, device="cpu"):
    """In the torch interpreter: the same objective, ``torch.optim.LBFGS``, one JSON line. On
    CUDA, float32 at full precision (no TF32, as nstlite's CuPy side with ``CUPY_TF32=0``), and
    each evaluation's time stamp waits for the GPU."""
    import torch

    tdev = "cuda" if device == "gpu" else "cpu"
    sync = torch.cuda.synchronize if tdev == "cuda" else (lambda: None)
    if tdev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    from nstlite import image as im
    from nstlite.vgg import load_vgg19

    F = torch.nn.functional
    net = load_vgg19(kernel="reference")
    content_path, style_path = images()
    content = im.resize_longest(im.load_image(content_path), size).rgb
    style = im.resize_longest(im.load_image(style_path), size).rgb
    names = net.layer_names[: net.layer_names.index("conv5_1") + 1]
    weights = {n: tuple(torch.from_numpy(np.array(a, dtype=np.float32)).to(tdev) for a in net.weights[n])
               for n in names if n.startswith("conv")}

    def tensor(rgb):
        return torch.from_numpy(np.asarray(net.preprocess(rgb), dtype=np.float32)).to(tdev)

    def features(x):
        feats, h = {}, x[None]
        for name in names:
            h = F.relu(F.conv2d(h, *weights[name], padding=1)) if name.startswith("conv") else F.avg_pool2d(h, 2)
            if name == CONTENT or name in STYLE:
                feats[name] = h[0]
        return feats

    def gram(f):
        m = f.reshape(f.shape[0], -1)
        return m @ m.T

    with torch.no_grad():
        P = features(tensor(content))[CONTENT].clone()
        A = {n: gram(f) for n, f in features(tensor(style)).items() if n in STYLE}
    x = tensor(content).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=iterations, max_eval=2 * iterations + 20, history_size=10,
                                  tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")
    stamps = []

    def closure():
        optimizer.zero_grad()
        f = features(x)
        loss = ALPHA * 0.5 * ((f[CONTENT] - P) ** 2).sum()  # eq. (1)
        for n in STYLE:
            c, m = f[n].shape[0], f[n].shape[1] * f[n].shape[2]
            loss = loss + BETA * 0.2 * ((gram(f[n]) - A[n]) ** 2).sum() / (4.0 * c * c * m * m)  # eqs. (4), (5)
        loss.backward()
        sync()
        stamps.append(time.perf_counter())
        return loss

    optimizer.step(closure)
    print(json.dumps({"per_evaluation_s": float(np.median(np.diff(stamps)[1:])), "evaluations": len(stamps),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "device": tdev,
                      "allow_tf32": tdev == "cuda" and torch.backends.cuda.matmul.allow_tf32}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="256")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=3, help="nstlite/PyTorch process pairs per size")
    ap.add_argument("--torch-python", default=sys.executable, help="interpreter with torch for the PyTorch side")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu: nstlite on CuPy, PyTorch on CUDA")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the nstlite side (default: this one)")
    ap.add_argument("--json", help="append the rows to this file (JSON lines)")
    ap.add_argument("--bounds", default="pixels", choices=["pixels", "none", "both"],
                    help="nstlite's pixel box (both: one nstlite process of each in every round)")
    ap.add_argument("--torch-child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.torch_child:
        return torch_child(a.torch_child, a.iterations, a.device)
    modes = ["pixels", "none"] if a.bounds == "both" else [a.bounds]
    for size in (int(s) for s in a.sizes.split(",")):
        pairs = []
        for _ in range(a.pairs):
            row, loads = {}, []
            for mode in modes:
                loads.append(os.getloadavg()[0])
                row[mode] = run_nstlite(size, a.iterations, a.python, a.device, mode)
            loads.append(os.getloadavg()[0])
            t, t_evals = run_torch(size, a.iterations, a.torch_python, a.device)
            pair = {"torch_s": t, "load": loads, "torch_evaluations": t_evals}
            for mode, (n, n_evals) in row.items():
                pair[mode] = {"nstlite_s": n, "ratio": n / t, "evaluations": n_evals}
            pairs.append(pair)
            shown_modes = "  ".join(f"nstlite[{m}] {n:.3f} s/eval ({e} evals) ratio {n / t:.2f}"
                                    for m, (n, e) in row.items())
            print(f"{size}: {shown_modes}  pytorch {t:.3f} s/eval ({t_evals} evals)  "
                  f"load {', '.join(f'{x:.1f}' for x in loads)}", flush=True)
        out = {"size": size, "device": a.device, "iterations": a.iterations, "pairs": pairs,
               "torch_median_s": float(np.median([p["torch_s"] for p in pairs]))}
        for mode in modes:
            out[mode] = {"nstlite_median_s": float(np.median([p[mode]["nstlite_s"] for p in pairs])),
                         "ratio_median": float(np.median([p[mode]["ratio"] for p in pairs]))}
            print(f"{size}: medians nstlite[{mode}] {out[mode]['nstlite_median_s']:.3f} s  "
                  f"pytorch {out['torch_median_s']:.3f} s  ratio (median of pairs) {out[mode]['ratio_median']:.2f}")
        if a.json:
            with open(a.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
