"""Seconds per evaluation of the default style-transfer objective, nstlite vs PyTorch.

One evaluation = VGG19 forward to conv5_1 (average pooling, float32, batch 1), the losses
(content conv4_2; style conv1_1, conv2_1, conv3_1, conv4_1, conv5_1) and the backward pass
to the image. PyTorch (when importable) does the same work in the same run, interleaved
with nstlite so that both see the same machine load; the table quotes medians and the ratio.

    python benchmarks/bench_objective.py --sizes 256,512

Also prints a per-layer table (forward and input-gradient conv times with GF/s against the
2 * H * W * C_in * C_out * 9 FLOP count, for both libraries) and the peak memory of an
nstlite-only evaluation loop, measured in a fresh child process (peak RSS and the peak of
NumPy allocations seen by tracemalloc).

Weights: the real VGG19 (``nstlite.load_vgg19()``) when the file exists, else random
He-scaled weights of the same shapes (the timings do not depend on the values).
"""
import os

# OpenBLAS's worker threads otherwise spin after each GEMM and slow the NumPy work that
# follows; the variable is read when NumPy loads OpenBLAS, so it must be set first.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")


def _threads_from_argv(argv):
    """--threads N has to reach OpenBLAS before NumPy is imported."""
    for k, a in enumerate(argv):
        if a == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


if _threads_from_argv(__import__("sys").argv):
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = _threads_from_argv(__import__("sys").argv)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from nstlite.fast import workspace as fast_workspace  # noqa: E402
from nstlite.fast.channels_last import ChannelsLastPath  # noqa: E402
from nstlite.fast.layout import interior  # noqa: E402
from nstlite.objective import build_objective  # noqa: E402
from nstlite.vgg import VGG19, load_vgg19  # noqa: E402
from nstlite.backend import to_host  # noqa: E402
from nstlite.weights import default_weights_path, random_params  # noqa: E402

CONTENT = ["conv4_2"]
STYLE = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
DEPTH_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
               "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1"]


def load_params():
    """(params, attrs, label): the real weights when present, else random ones."""
    if os.path.exists(default_weights_path()):
        net = load_vgg19(kernel="reference")
        params = {n: tuple(np.asarray(a) for a in net.weights[n]) for n in DEPTH_CONVS}
        return params, None, "real VGG19"
    return random_params(0), None, "random (He-scaled)"


def conv_flops(size, backward_too=True):
    """FLOPs of the convs to conv5_1: forward, and the input gradient of every conv."""
    total, h, c_in = 0, size, 3
    for name in DEPTH_CONVS:
        block = int(name[4])
        c_out = (64, 128, 256, 512, 512)[block - 1]
        if name.endswith("_1") and block > 1:
            h //= 2
        total += 2 * h * h * c_in * c_out * 9
        c_in = c_out
    return total * (2 if backward_too else 1)


def make_images(size, seed=0):
    rng = np.random.default_rng(seed)
    photo = rng.uniform(0, 255, (size, size, 3))
    art = rng.uniform(0, 255, (size, size, 3))
    start = rng.uniform(0, 255, (size, size, 3))
    return photo, art, start


# ----------------------------------------------------------------------------- nstlite
def nstlite_objective(params, size, kernel, dtype="float32", net=None, device="cpu"):
    if net is None:
        net = VGG19(params, None, pooling="avg", dtype=dtype, kernel=kernel, device=device)
    photo, art, start = make_images(size)
    xp_photo, xp_art, x = net.preprocess(photo), net.preprocess(art), net.preprocess(start)
    obj = build_objective(net, xp_photo, [xp_art], CONTENT, {n: 0.2 for n in STYLE}, alpha=1.0, beta=1e3)
    return net, obj, x


def nstlite_layer_times(net, size, repeats):
    """layer -> (forward seconds, input-gradient seconds), each the median of ``repeats``."""
    fast = net.path
    obj_layers = CONTENT + STYLE
    x = net.preprocess(make_images(size)[2])
    net.forward(x, obj_layers)
    out = {}
    names = net.layer_names[: net.layer_names.index("conv5_1") + 1]
    for i, name in enumerate(names):
        if not name.startswith("conv"):
            continue
        below = names[i - 1] if i else None
        src = fast.padded_buffer(below) if below else fast.input_buffer
        h, w, _ = fast.maps[name]
        plan = fast.plan(name)
        out_buffer = fast.padded_buffer(name, avoid=src)
        dst = interior(out_buffer, h, w)
        grad_in = out_buffer
        dx = np.empty((h, w, plan.c_in), np.float32)
        image = below is None and plan.reads_image()  # conv1_1: im2col straight from the image
        tf, tb = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            if image:
                plan.forward_image(x, dst, fast.ws)
            else:
                plan.forward(src, dst, h, w, fast.ws)
            t1 = time.perf_counter()
            if image:
                plan.backward_image(grad_in, h, w, fast.ws)
            else:
                plan.backward(grad_in, dx, h, w, fast.ws)
            t2 = time.perf_counter()
            tf.append(t1 - t0)
            tb.append(t2 - t1)
        method = "im2col" if image else plan.method_for(h, w)
        out[name] = (float(np.median(tf)), float(np.median(tb)), method, method,
                     2 * h * w * plan.c_in * plan.c_out * 9)
    return out


# ----------------------------------------------------------------------------- PyTorch
def torch_objective(torch, params, size, nstlite_net, device="cpu"):
    """The same objective in PyTorch autograd, same weights, same inputs and targets (on CUDA
    for ``device='gpu'``)."""
    F = torch.nn.functional
    tdev = "cuda" if device == "gpu" else "cpu"

    def tensor(a):
        return torch.from_numpy(np.array(to_host(a), dtype=np.float32)).to(tdev)
    weights = {n: (tensor(w), tensor(b)) for n, (w, b) in params.items()}
    names = nstlite_net.layer_names[: nstlite_net.layer_names.index("conv5_1") + 1]

    def features(x):
        feats, h = {}, x[None]
        for name in names:
            if name.startswith("conv"):
                w, b = weights[name]
                h = F.relu(F.conv2d(h, w, b, padding=1))
            else:
                h = F.avg_pool2d(h, 2)
            if name in CONTENT or name in STYLE:
                feats[name] = h[0]
        return feats

    def gram(f):
        m = f.reshape(f.shape[0], -1)
        return m @ m.T

    photo, art, start = make_images(size)
    with torch.no_grad():
        fp = features(tensor(nstlite_net.preprocess(photo)))
        P = {n: fp[n].clone() for n in CONTENT}
        fa = features(tensor(nstlite_net.preprocess(art)))
        A = {n: gram(fa[n]) for n in STYLE}
    x0 = tensor(nstlite_net.preprocess(start))

    def evaluate():
        x = x0.clone().requires_grad_(True)
        f = features(x)
        loss = sum(0.5 * ((f[n] - P[n]) ** 2).sum() for n in CONTENT)
        for n in STYLE:
            c, m = f[n].shape[0], f[n].shape[1] * f[n].shape[2]
            loss = loss + 1e3 * 0.2 * ((gram(f[n]) - A[n]) ** 2).sum() / (4.0 * c * c * m * m)
        loss.backward()
        return x.grad

    return evaluate, weights


def torch_layer_times(torch, weights, size, repeats):
    F = torch.nn.functional
    out, h = {}, size
    for name in DEPTH_CONVS:
        w, b = weights[name]
        if name.endswith("_1") and name != "conv1_1":
            h //= 2
        x = torch.randn(1, w.shape[1], h, h)
        g = torch.randn(1, w.shape[0], h, h)
        tf, tb = [], []
        with torch.no_grad():
            for _ in range(repeats):
                t0 = time.perf_counter()
                F.relu(F.conv2d(x, w, b, padding=1))
                t1 = time.perf_counter()
                torch.nn.grad.conv2d_input(x.shape, w, g, padding=1)
                t2 = time.perf_counter()
                tf.append(t1 - t0)
                tb.append(t2 - t1)
        out[name] = (float(np.median(tf)), float(np.median(tb)))
    return out


# ----------------------------------------------------------------------------- memory
def memory_child(size, kernel, evals=3):
    """Run in a fresh process: peak RSS and tracemalloc peak of an nstlite evaluation loop."""
    import tracemalloc

    tracemalloc.start()
    if os.path.exists(default_weights_path()):  # as stylize loads them: mapped, to conv5_1 only
        net = load_vgg19(kernel=kernel, layers=CONTENT + STYLE)
        net, obj, x = nstlite_objective(None, size, kernel, net=net)
    else:
        net, obj, x = nstlite_objective(random_params(0), size, kernel)
    for _ in range(evals):
        obj(x)
    _, peak = tracemalloc.get_traced_memory()
    rss = _peak_rss()
    fast = isinstance(net.path, ChannelsLastPath)
    print(json.dumps({"peak_rss": rss, "tracemalloc_peak": peak, "workspace": net.path.ws.nbytes if fast else 0,
                      "memory_bytes": net.memory_bytes(size, size, CONTENT + STYLE, CONTENT + STYLE)}))


def _peak_rss():
    """Peak resident memory of this process in bytes. VmHWM belongs to the process's own
    address space; ru_maxrss would also count the parent's size at fork (Linux keeps it
    across exec), so it is only the fallback."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _images_for_stylize(tmp):
    """The paper's Tuebingen photo and The Starry Night from ../shared/images when present, else
    two generated 1024 x 768 images."""
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "images")
    content, style = os.path.join(shared, "tubingen.jpg"), os.path.join(shared, "starry_night.jpg")
    if os.path.exists(content) and os.path.exists(style):
        return content, style
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for name in ("content.png", "style.png"):
        a = np.kron(rng.uniform(0, 255, (96, 128, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        paths.append(os.path.join(tmp, name))
        Image.fromarray(a).save(paths[-1])
    return tuple(paths)


def stylize_memory_child(size, iterations=10):
    """Run in a fresh process: a whole ``nstlite stylize`` at ``size`` (default settings, a few
    iterations), then this process's peak RSS."""
    import tempfile

    from nstlite.cli import main as nstlite_main

    with tempfile.TemporaryDirectory() as tmp:
        content, style = _images_for_stylize(tmp)
        argv = ["stylize", "--content", content, "--style", style, "--output", os.path.join(tmp, "out.png"),
                "--size", str(size), "--iterations", str(iterations), "--quiet"]
        try:
            code = nstlite_main(argv)
        except SystemExit as e:
            code = e.code
    print(json.dumps({"stylize_peak_rss": _peak_rss(), "status": code, "content": os.path.basename(content)}))


def measure_stylize_memory(size):
    """Peak RSS of a whole ``nstlite stylize`` run at ``size`` (None without the real weights)."""
    if not os.path.exists(default_weights_path()):
        return None
    cmd = [sys.executable, os.path.abspath(__file__), "--stylize-memory-child", str(size)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return None
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out if out.get("status") in (0, None) else None


def measure_memory(size, kernel):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", str(size), "--kernel", kernel, "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,512", help="comma-separated image sides")
    ap.add_argument("--repeats", type=int, default=5, help="timed evaluations per library and size")
    ap.add_argument("--kernel", default="auto", help="nstlite conv kernel (auto, winograd, shifted_gemm, reference)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="gpu: nstlite on CuPy and PyTorch on CUDA (no per-layer or RSS tables)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even when importable")
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--threads", type=int, help="threads for OpenBLAS and PyTorch (default: all cores)")
    ap.add_argument("--transform-threads", type=int,
                    help="threads for the Winograd tile transforms (nstlite.fast.workspace.transform_threads(); "
                         "default: $NSTLITE_TRANSFORM_THREADS, else the core count, at most 4)")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stylize-memory-child", type=int, help=argparse.SUPPRESS)
    return ap.parse_args()


def import_torch(args):
    """PyTorch with ``args.threads`` threads, or None."""
    if args.no_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    return torch


def gpu_setup(args, torch):
    """(sync, torch_sync, torch) for ``--device``: on the GPU the work is asynchronous, so each
    timing waits for it to finish; torch drops out where it has no CUDA."""
    if args.device != "gpu":
        return (lambda: None), (lambda: None), torch
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no CuPy, or no CUDA device/driver
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        sys.exit(f"bench_objective: --device gpu needs CuPy and a CUDA device ({reason})")
    args.no_layers = args.no_memory = True
    torch_sync = lambda: None  # noqa: E731
    if torch is not None and torch.cuda.is_available():
        torch_sync = torch.cuda.synchronize
    elif torch is not None:
        print("# torch has no CUDA here: nstlite only")
        torch = None
    print(f"# GPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cupy.__version__}")
    return cupy.cuda.Device().synchronize, torch_sync, torch


def time_size(args, params, size, torch, sync, torch_sync):
    """Interleaved nstlite / PyTorch timings at one size: (row, net, torch weights)."""
    net, obj, x = nstlite_objective(params, size, args.kernel, device=args.device)
    obj(x)  # warm up: allocate buffers and the workspace
    sync()
    t_torch, tweights = [], None
    if torch is not None:
        evaluate, tweights = torch_objective(torch, params, size, net, args.device)
        evaluate()
        torch_sync()
    t_nst = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        obj(x)
        sync()
        t_nst.append(time.perf_counter() - t0)
        if torch is not None:
            t0 = time.perf_counter()
            evaluate()
            torch_sync()
            t_torch.append(time.perf_counter() - t0)
    gflop = conv_flops(size) / 1e9
    med_n = float(np.median(t_nst))
    med_t = float(np.median(t_torch)) if t_torch else float("nan")
    row = {"size": size, "nstlite_s": med_n, "torch_s": med_t, "ratio": med_n / med_t if t_torch else None,
           "gflop": gflop}
    print(f"\n## {size}x{size}: {gflop:.1f} GFLOP of convs per evaluation (direct count)")
    print(f"nstlite : median {med_n:.3f} s  ({gflop / med_n:.0f} GF/s effective)  all: "
          + " ".join(f"{t:.3f}" for t in t_nst))
    if t_torch:
        print(f"pytorch : median {med_t:.3f} s  ({gflop / med_t:.0f} GF/s)  all: "
              + " ".join(f"{t:.3f}" for t in t_torch))
        print(f"ratio nstlite/pytorch: {med_n / med_t:.2f}")
    if args.device == "gpu":
        import cupy
        print(f"CuPy memory pool after the runs: {cupy.get_default_memory_pool().total_bytes() / 2**20:.0f} MiB")
    return row, net, tweights


def print_layer_table(net, size, torch, tweights, reps=3):
    lt = nstlite_layer_times(net, size, reps)
    tt = torch_layer_times(torch, tweights, size, reps) if torch is not None else {}
    print(f"\n{'layer':8s} {'method fwd/bwd':24s} {'GFLOP':>6s} {'fwd ms':>8s} {'GF/s':>5s} {'bwd ms':>8s} "
          f"{'GF/s':>5s}" + (f" | {'torch fwd':>9s} {'torch bwd':>9s}" if tt else ""))
    for name, (tf, tb, mf, mb, fl) in lt.items():
        line = (f"{name:8s} {mf + '/' + mb:24s} {fl / 1e9:6.2f} {tf * 1e3:8.1f} {fl / tf / 1e9:5.0f} "
                f"{tb * 1e3:8.1f} {fl / tb / 1e9:5.0f}")
        if name in tt:
            line += f" | {tt[name][0] * 1e3:9.1f} {tt[name][1] * 1e3:9.1f}"
        print(line)
    print(f"{'sum':8s} {'':24s} {sum(v[4] for v in lt.values()) / 1e9:6.2f} "
          f"{sum(v[0] for v in lt.values()) * 1e3:8.1f} {'':5s} {sum(v[1] for v in lt.values()) * 1e3:8.1f}"
          + (f" {'':5s} | {sum(v[0] for v in tt.values()) * 1e3:9.1f} "
             f"{sum(v[1] for v in tt.values()) * 1e3:9.1f}" if tt else ""))


def print_memory(row, size, kernel):
    mem = measure_memory(size, kernel)
    if mem:
        row.update(mem)
        print(f"\nmemory (nstlite only, fresh process, 3 evaluations): peak RSS {mem['peak_rss'] / 2**20:.0f} "
              f"MiB, tracemalloc peak {mem['tracemalloc_peak'] / 2**20:.0f} MiB, shared conv workspace "
              f"{mem['workspace'] / 2**20:.1f} MiB, the network's memory_bytes "
              f"{mem['memory_bytes'] / 2**20:.0f} MiB")
    smem = measure_stylize_memory(size)
    if smem:
        row.update(smem)
        print(f"memory of a whole `nstlite stylize --size {size}` ({smem['content']}, default settings, "
              f"10 iterations, fresh process): peak RSS {smem['stylize_peak_rss'] / 2**20:.0f} MiB "
              f"({smem['stylize_peak_rss'] / 1e9:.2f} GB)")


def print_summary(summary):
    print("\n| size | nstlite s/eval | PyTorch s/eval | ratio | peak RSS, evaluation loop | peak RSS, whole stylize |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in summary:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        rss = f"{r['peak_rss'] / 2**20:.0f} MiB" if "peak_rss" in r else "-"
        torch_s = f"{r['torch_s']:.3f}" if r["ratio"] else "-"
        srss = f"{r['stylize_peak_rss'] / 2**20:.0f} MiB" if "stylize_peak_rss" in r else "-"
        print(f"| {r['size']}² | {r['nstlite_s']:.3f} | {torch_s} | {ratio} | {rss} | {srss} |")


def main():
    args = parse_args()
    if args.transform_threads:
        os.environ["NSTLITE_TRANSFORM_THREADS"] = str(args.transform_threads)  # read on first use
    if args.memory_child:
        memory_child(args.memory_child, args.kernel)
        return 0
    if args.stylize_memory_child:
        stylize_memory_child(args.stylize_memory_child)
        return 0
    sync, torch_sync, torch = gpu_setup(args, import_torch(args))
    params, _, label = load_params()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{_cpu_model()}; numpy {np.__version__}"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ", torch not importable"))
    print(f"# weights: {label}; kernel: {args.kernel}; transform threads: {fast_workspace.transform_threads()}; "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')}; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', '(all)')}; repeats: {args.repeats}")
    summary = []
    for size in sizes:
        row, net, tweights = time_size(args, params, size, torch, sync, torch_sync)
        if not args.no_layers and isinstance(net.path, ChannelsLastPath):
            print_layer_table(net, size, torch, tweights)
        del net
        if not args.no_memory:
            print_memory(row, size, args.kernel)
        summary.append(row)
    print_summary(summary)
    return 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
