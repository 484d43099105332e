"""nstlite's CuPy code paths on the CPU, through a strict NumPy-backed stand-in for CuPy
(``tests/cupy_standin.py``): the fast kernels over several blocks, the whole network in float32,
a whole stylisation, the host syncs of one evaluation (bounded) and its kernel launches
(bounded and reported), the device-sized blocks and the fused Winograd transforms, the memory
check against the device's free memory, the rest of the suite's gpu tests under the shim
(``tests/cupy_shim``), and that a CPU run never imports CuPy.

Tolerances: the stand-in runs the same NumPy operations as the CPU path, but on one thread and
with other GEMM operands (the GPU's transposed kernels), so results agree to float32 rounding
(``fast_tolerances.TOL``), not bitwise.
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import cupy_standin
from fast_tolerances import TOL, rel

import nstlite
from nstlite import backend
from nstlite.errors import NstliteError
from nstlite.fast import workspace
from nstlite.fast.gemm import im2col_rows, shifted_gemm_adjoint_rows, shifted_gemm_rows
from nstlite.fast.layout import padded_shape, tiles
from nstlite.fast.plan import ConvPlan
from nstlite.fast.winograd import winograd_tile_rows
from nstlite.fast.workspace import Workspace
from nstlite.image import fit_longest
from nstlite.memory import check_memory, device_available_bytes, device_peak_bytes, host_peak_bytes
from nstlite.objective import build_objective
from nstlite.problem import Evaluator
from nstlite.vgg import VGG19
from nstlite.weights import random_params

COUNTS = cupy_standin.COUNTS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# launches of one evaluation of ``_evaluator`` (48x40, WIDTHS): 773 (avg) / 825 (max) with the
# fused Winograd transforms and device-sized blocks, 1,175 / 1,227 before (one launch per NumPy
# operation); a bound 5 % above, so that losing one fused transform fails
MAX_LAUNCHES = {"avg": 812, "max": 866}
WIDTHS = (16, 16, 24, 24, 32)  # wide enough that every layer but conv1_1 runs Winograd
CONTENT, STYLE = ["conv4_2"], {"conv1_1": 0.2, "conv2_1": 0.2, "conv3_1": 0.2, "conv4_1": 0.2, "conv5_1": 0.2}


@pytest.fixture
def standin():
    """The device 'gpu' is the stand-in for the duration of a test."""
    cupy_standin.install()
    try:
        yield cupy_standin
    finally:
        cupy_standin.uninstall()


def test_standin_refuses_host_conversion_and_counts(standin):
    xp = backend.xp_for("gpu")
    a = xp.asarray(np.arange(6.0).reshape(2, 3))
    assert backend.get_array_module(a) is xp and backend.get_array_module(np.zeros(1)) is np
    for implicit in (lambda: np.asarray(a), lambda: np.sum(a), lambda: a + np.ones(3), lambda: np.exp(a)):
        with pytest.raises(TypeError):
            implicit()
    COUNTS.reset()
    b = xp.sqrt(a * 2.0)
    assert COUNTS.launches == 2 and COUNTS.syncs == 0
    assert float(b.sum()) == pytest.approx(np.sqrt(np.arange(6.0) * 2).sum()) and COUNTS.syncs == 1
    b[b > 1.0] = 0.0  # boolean-mask assignment: the host needs the count of winners
    assert COUNTS.syncs == 2 and any(site.startswith("boolean-mask") for site in COUNTS.sync_sites)
    expected = np.sqrt(np.arange(6.0) * 2).reshape(2, 3)
    assert np.array_equal(backend.to_host(b), np.where(expected > 1.0, 0.0, expected)) and COUNTS.syncs == 3


@pytest.mark.parametrize("kernel", ["winograd", "shifted_gemm"])
def test_fast_kernels_over_several_blocks_match_numpy(standin, kernel):
    """Forward and adjoint of a fast conv on the stand-in, in blocks of two rows (Winograd: two
    tile rows; its adjoint on flipped views of the device arrays), equal the CPU kernel's."""
    xp = backend.xp_for("gpu")
    rng = np.random.default_rng(5)
    c_in, c_out, h, w = 16, 24, 37, 30
    wt = (rng.standard_normal((c_out, c_in, 3, 3)) * 0.1).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    xpad = np.zeros(padded_shape(h, w, c_in), np.float32)
    xpad[1:h + 1, 1:w + 1] = rng.standard_normal((h, w, c_in))
    dpad = np.zeros(padded_shape(h, w, c_out), np.float32)
    dpad[1:h + 1, 1:w + 1] = rng.standard_normal((h, w, c_out))
    results = {}
    for name, mod in (("cpu", np), ("gpu", xp)):
        plan = ConvPlan(mod.asarray(wt), mod.asarray(bias), kernel)
        ws = Workspace(mod, threads=1)
        out, dx = mod.zeros((h, w, c_out), np.float32), mod.zeros((h, w, c_in), np.float32)
        block = {"tile_rows": 2} if kernel == "winograd" else {"rows_per_block": 2}
        form = plan.method_for(h, w)
        run_fwd, run_bwd = _kernel_functions(kernel)
        run_fwd(mod.asarray(xpad), plan.weights(form), out, h, w, bias=plan.bias, ws=ws, **block)
        transposed = plan.adjoint_weights(form)
        assert (transposed is None) == (mod is np)  # the GPU keeps the kernel transposed, once
        run_bwd(mod.asarray(dpad), plan.weights(form), dx, h, w, ws=ws, **block,
                **({"Ut": transposed} if kernel == "winograd" else {"taps_t": transposed}))
        results[name] = backend.to_host(out), backend.to_host(dx)
    for cpu, gpu in zip(results["cpu"], results["gpu"]):
        assert rel(gpu, cpu) < TOL["float32", kernel]


def _kernel_functions(kernel):
    from nstlite.fast import gemm, winograd
    if kernel == "winograd":
        return winograd.winograd_conv, winograd.winograd_conv_adjoint
    return gemm.shifted_gemm_conv, gemm.shifted_gemm_conv_adjoint


@pytest.mark.parametrize("pooling, crops", [("avg", None), ("max", None),
                                            ("avg", {"conv1_1": (3, 2, 1, 0), "conv2_2": (1, 1, 0, 1)})])
def test_whole_network_float32_matches_numpy_without_syncs(standin, pooling, crops):
    """VGG19 forward to conv5_1 and the backward to the image on the stand-in: the CPU's
    numbers, no host sync, and no copy of a transposed kernel in the backward; with a crop
    schedule (``nstlite.tiled``'s) too."""
    params = random_params(0, widths=WIDTHS)
    gpu, cpu = VGG19(params, pooling=pooling, device="gpu"), VGG19(params, pooling=pooling)
    x = (np.random.default_rng(2).standard_normal((3, 70, 66)) * 30).astype(np.float32)
    layers = CONTENT + list(STYLE)
    xd = gpu.xp.asarray(x)
    gpu.backward({n: f * 1.0 for n, f in gpu.forward(xd, layers, crops=crops).items()})  # first use: weight forms
    COUNTS.reset()
    feats = gpu.forward(xd, layers, crops=crops)
    dx = gpu.backward({n: f * 1.0 for n, f in feats.items()})
    assert COUNTS.syncs == 0, dict(COUNTS.sync_sites)
    assert not any("winograd" in site or "shifted" in site for site in COUNTS.copy_sites), dict(COUNTS.copy_sites)
    ref = cpu.forward(x, layers, crops=crops)
    ref_dx = cpu.backward({n: f * 1.0 for n, f in ref.items()})
    for n in layers:
        assert rel(backend.to_host(feats[n]), ref[n]) < 5 * TOL["float32", "auto"], n
    assert rel(backend.to_host(dx), ref_dx) < 5 * TOL["float32", "auto"]


def _evaluator(device, pooling, size=(48, 40), widths=WIDTHS):
    params = random_params(0, widths=widths)
    net = VGG19(params, pooling=pooling, device=device)
    rng = np.random.default_rng(3)
    content, style = (rng.uniform(0, 255, size + (3,)) for _ in range(2))
    objective = build_objective(net, net.preprocess(content), [net.preprocess(style)], CONTENT, STYLE,
                                alpha=1.0, beta=1e3)
    x0 = backend.to_host(net.preprocess(content)).astype(np.float64)
    return Evaluator(objective, net, x0.shape, list(STYLE)), x0


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_one_evaluation_syncs_once_and_reports_its_launches(standin, pooling, record_property):
    """One evaluation through the SciPy boundary: exactly one host sync (the packed gradient
    and losses coming back), whatever the pooling; its launches and the bytes CuPy would copy
    for non-contiguous GEMM operands are reported (``record_property``)."""
    evaluate, x0 = _evaluator("gpu", pooling)
    evaluate(x0.ravel())
    COUNTS.reset()
    loss, gradient, info = evaluate(x0.ravel() + 1.0)
    counts = COUNTS.snapshot()
    assert counts["syncs"] == 1, dict(COUNTS.sync_sites)
    assert counts["h2d"] == 1  # x, in the network's dtype
    assert counts["launches"] < MAX_LAUNCHES[pooling]
    for key, value in counts.items():
        record_property(f"{pooling}_{key}", value)
    print(f"\nstand-in, one evaluation, 48x40, widths {WIDTHS}, {pooling} pooling: {counts}")
    cpu_loss, cpu_gradient, _ = _evaluator("cpu", pooling)[0](x0.ravel() + 1.0)
    assert gradient.dtype == np.float64 and rel(gradient, cpu_gradient) < 5 * TOL["float32", "auto"]
    assert loss == pytest.approx(cpu_loss, rel=1e-5) and set(info["style_layers"]) == set(STYLE)


def test_whole_stylisation_runs_on_the_standin(standin, tmp_path):
    """``stylize(device="gpu")`` end to end through the CuPy paths: the CPU run's losses."""
    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:40, 0:48]
    photo = np.stack([x * 5, y * 6, (x + y) * 3], axis=2).astype(np.float64)
    art = rng.uniform(0, 255, (36, 36, 3))
    params = random_params(0, widths=WIDTHS)
    runs = {}
    for device in ("gpu", "cpu"):
        net = VGG19(params, device=device)
        runs[device] = nstlite.stylize(photo, art, size=48, iterations=6, net=net, quiet=True,
                                       output=str(tmp_path / f"{device}.png"))
    gpu, cpu = runs["gpu"], runs["cpu"]
    assert gpu.iterations == cpu.iterations == 6 and os.path.exists(gpu.output)
    # the same start; then float32 rounding moves L-BFGS's path a little (0.2 % after 6 iterations)
    assert gpu.history[0]["total"] == pytest.approx(cpu.history[0]["total"], rel=1e-5)
    assert gpu.final["total"] == pytest.approx(cpu.final["total"], rel=0.02)
    assert gpu.final["total"] < 0.5 * gpu.history[0]["total"]


def test_a_cpu_run_never_imports_cupy(tmp_path):
    """With a CuPy installed (here a fake one that records its import), importing nstlite and
    running on the CPU neither imports CuPy nor initialises CUDA; asking for the GPU does."""
    fake = tmp_path / "fake" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os\nopen(os.environ['CUPY_MARK'], 'w').close()\n"
                                      "raise ImportError('no CUDA here')\n")
    mark = tmp_path / "imported"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import numpy as np, nstlite, sys\n"
            "from nstlite.vgg import VGG19\nfrom nstlite.weights import random_params\n"
            "net = VGG19(random_params(0, widths=(4, 4, 6, 6, 8)))\n"
            "net.backward({'conv2_1': net.forward(np.zeros((3, 16, 16), np.float32), ['conv2_1'])['conv2_1']})\n"
            "import os; print(os.path.exists(os.environ['CUPY_MARK']))\n"
            "from nstlite import backend; print(backend.gpu_available(), os.path.exists(os.environ['CUPY_MARK']))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), root]), CUPY_MARK=str(mark))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "True"]


# ----------------------------------------------------------------------------- device-sized blocks
def _blocks_per_layer(net, height, width):
    """conv name -> blocks its forward runs in at height x width (the kernels' own row counts)."""
    path, blocks = net.path, {}
    for name, (h, w, _) in path.layout(height, width).items():
        if name.startswith("conv"):
            plan, bb = path.plan(name), path.ws.block_bytes
            form, wp = plan.form_for(h, w), padded_shape(h, w, plan.c_in)[1]
            if form == "winograd":
                per, rows = winograd_tile_rows(h, w, plan.c_in, plan.c_out, 4, bb), tiles(h)
            elif form == "im2col":
                per, rows = im2col_rows(h, wp, plan.c_in, plan.c_out, 4, bb), h
            else:
                per, rows = shifted_gemm_rows(h, wp, plan.c_in, plan.c_out, 4, bb), h
            blocks[name] = -(-rows // per)
    return blocks


def test_gpu_blocks_are_sized_from_the_devices_free_memory(standin, monkeypatch):
    """On CuPy the kernels' blocks come from the device's free memory (mem_info plus the pool's
    free bytes): every layer in one block on an idle device; on a nearly full one smaller blocks,
    more launches, the same numbers."""
    monkeypatch.setattr(workspace, "BLOCK_BYTES", 1 << 14)  # the floor: many blocks on a full device
    params = random_params(0, widths=WIDTHS)
    x = (np.random.default_rng(2).standard_normal((3, 70, 66)) * 30).astype(np.float32)
    layers = CONTENT + list(STYLE)
    cpu = VGG19(params)
    ref_dx = cpu.backward({n: f * 1.0 for n, f in cpu.forward(x, layers).items()})
    runs = {}
    for free in (16 << 30, 1 << 16):
        standin.set_memory(free=free)
        net = VGG19(params, device="gpu")
        xd = net.xp.asarray(x)
        net.backward({n: f * 1.0 for n, f in net.forward(xd, layers).items()})
        COUNTS.reset()
        dx = net.backward({n: f * 1.0 for n, f in net.forward(xd, layers).items()})
        runs[free] = COUNTS.launches, _blocks_per_layer(net, 70, 66), backend.to_host(dx)
        assert rel(runs[free][2], ref_dx) < 5 * TOL["float32", "auto"]
    (idle, idle_blocks, _), (full, full_blocks, _) = runs[16 << 30], runs[1 << 16]
    assert set(idle_blocks.values()) == {1} and max(full_blocks.values()) >= 4
    assert idle < 0.5 * full
    standin.set_memory(free=1 << 16, pool_free=16 << 30)  # what the pool holds unused counts as free
    assert Workspace(standin).block_bytes == ((1 << 16) + (16 << 30)) // workspace.DEVICE_BLOCK_SHARE


def test_cpu_blocking_is_unchanged_whatever_the_device_has(standin):
    """The CPU keeps its cache-sized 16 MiB blocks whatever a GPU reports: round 2's block sizes
    at VGG19's 512 px shapes, and a CPU evaluation bitwise the same before and after a GPU
    network with device-sized blocks ran."""
    standin.set_memory(free=1 << 40)
    assert workspace.BLOCK_BYTES == 16 << 20 and Workspace(np).block_bytes == 16 << 20
    assert Workspace(standin).block_bytes == (1 << 40) // workspace.DEVICE_BLOCK_SHARE
    # conv1_2 and conv5_x (Winograd), a small map's shifted GEMM, its adjoint at 512, conv1_1's im2col
    assert [winograd_tile_rows(512, 512, 64, 64, 4), winograd_tile_rows(32, 32, 512, 512, 4),
            shifted_gemm_rows(14, 18, 512, 512, 4), shifted_gemm_adjoint_rows(512, 514, 64, 4),
            im2col_rows(512, 514, 3, 64, 4)] == [7, 8, 14, 63, 88]
    params = random_params(0, widths=WIDTHS)
    x = (np.random.default_rng(2).standard_normal((3, 70, 66)) * 30).astype(np.float32)

    def cpu_gradient():
        net = VGG19(params)
        return net.backward({n: f * 1.0 for n, f in net.forward(x, CONTENT + list(STYLE)).items()})
    before = cpu_gradient()
    gpu = VGG19(params, device="gpu")
    gpu.backward({n: f * 1.0 for n, f in gpu.forward(gpu.xp.asarray(x), CONTENT + list(STYLE)).items()})
    assert np.array_equal(cpu_gradient(), before)


# ----------------------------------------------------------------------------- fused transforms
FUSED = backend.fused_names()


@pytest.mark.parametrize("name", FUSED)
def test_a_fused_kernel_is_one_launch_of_its_numpy_steps(standin, name):
    """On CuPy a fused transform is one ElementwiseKernel launch (the stand-in runs its NumPy
    steps), writing interleaved output views as the Winograd code does, its inputs only read;
    on NumPy the steps themselves. What CuPy would refuse is refused."""
    kernel = backend.fused_reference(name)
    n_in, n_out = kernel.arity
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((5, 7, 3)).astype(np.float32) for _ in range(n_in)]
    expected = [np.empty_like(inputs[0]) for _ in range(n_out)]
    kernel(np, *[a.copy() for a in inputs], *expected)
    xp = backend.xp_for("gpu")
    dev = [xp.asarray(a) for a in inputs]
    block = xp.empty((5, 7, n_out, 3), dtype=np.float32)
    outs = [block[:, :, j] for j in range(n_out)]  # one array's interleaved views
    COUNTS.reset()
    kernel(xp, *dev, *outs)
    assert COUNTS.launches == 1
    assert all(np.array_equal(backend.to_host(o), e) for o, e in zip(outs, expected))
    assert all(np.array_equal(backend.to_host(d), a) for d, a in zip(dev, inputs))
    with pytest.raises(TypeError):
        kernel(xp, *dev[1:], *outs)  # an input missing
    with pytest.raises(TypeError):
        kernel(xp, dev[0].astype(np.float64), *dev[1:], *outs)  # two dtypes for T
    with pytest.raises(ValueError):
        kernel(xp, *dev, *outs[:-1], outs[0])  # two outputs in one place
    with pytest.raises(ValueError):
        kernel(xp, *dev, *outs[:-1], dev[0])  # an output over an input


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_fused_kernels_cuda_code_computes_its_numpy_steps(tmp_path):
    """Each fused transform's CUDA C (plain C arithmetic on T) compiled by the host's C compiler
    for T = double, run over every element, equals its NumPy steps: the check of the GPU's code
    that the stand-in, which runs the steps, cannot make."""
    functions = []
    for name in FUSED:
        k = backend.fused_reference(name)
        ins, outs = ([p.split()[-1] for p in params.split(",")] for params in (k.in_params, k.out_params))
        args = ", ".join([f"const T *in_{n}" for n in ins] + [f"T *out_{n}" for n in outs])
        body = ("".join(f"const T {n} = in_{n}[i]; " for n in ins) + "".join(f"T {n}; " for n in outs)
                + k.operation + "".join(f"out_{n}[i] = {n}; " for n in outs))
        functions.append(f"void {name}(long n, {args}) {{ for (long i = 0; i < n; i++) {{ {body} }} }}")
    (tmp_path / "fused.c").write_text("typedef double T;\n" + "\n".join(functions) + "\n")
    subprocess.run(["cc", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(tmp_path / "fused.so"),
                    str(tmp_path / "fused.c")], check=True, capture_output=True)
    lib = ctypes.CDLL(str(tmp_path / "fused.so"))
    rng = np.random.default_rng(8)
    for name in FUSED:
        k = backend.fused_reference(name)
        n_in, n_out = k.arity
        inputs = [rng.standard_normal(257) for _ in range(n_in)]
        outs, expected = ([np.empty(257) for _ in range(n_out)] for _ in range(2))
        getattr(lib, name)(ctypes.c_long(257), *[a.ctypes.data_as(ctypes.c_void_p) for a in inputs + outs])
        k(np, *[a.copy() for a in inputs], *expected)
        for o, e in zip(outs, expected):
            assert np.allclose(o, e, rtol=1e-13, atol=1e-13), name


# ----------------------------------------------------------------------------- the memory check
def test_gpu_memory_check_against_the_devices_free_memory(standin):
    """--device gpu: the device's share (network and objective) against the device's free memory
    plus the pool's unused bytes, refused in one line naming the largest size that fits; the
    optimiser's float64 vectors against host memory; a CPU network never asks the device."""
    net = VGG19(random_params(0, widths=WIDTHS), device="gpu")
    layers = CONTENT + list(STYLE)
    need = device_peak_bytes(net, 300, 400, layers)
    kernels = sum(w.nbytes + b.nbytes for w, b in net.weights.values())  # already on the device
    standin.set_memory(free=need // 2)
    assert device_available_bytes(net) == need // 2 + kernels
    with pytest.raises(NstliteError) as e:
        check_memory(net, 300, 400, layers, 10, available=1 << 40)
    msg = str(e.value)
    assert "GiB of GPU memory but only" in msg and "free on the GPU; use --size" in msg and "\n" not in msg
    biggest = int(msg.split("--size ")[1].split()[0])

    def fits(h, w):
        return device_peak_bytes(net, h, w, layers) <= need // 2 + kernels
    assert 16 <= biggest < 400 and fits(*fit_longest(300, 400, biggest))
    assert not fits(*fit_longest(300, 400, biggest + 1))
    standin.set_memory(free=need // 2, pool_free=need // 2)  # the pool's unused bytes are free too
    assert check_memory(net, 300, 400, layers, 10, available=1 << 40) == need
    with pytest.raises(NstliteError, match=r"GiB of host memory \(the optimiser's vectors\) but only .* available"):
        check_memory(net, 300, 400, layers, 10, available=host_peak_bytes(300, 400, 10) - 1)
    standin.set_memory(free=0)
    cpu = VGG19(random_params(0, widths=WIDTHS))
    assert check_memory(cpu, 300, 400, layers, 10, available=1 << 40) > 0


def test_a_gpu_run_too_large_for_the_device_is_refused_before_any_work(standin, tmp_path):
    rng = np.random.default_rng(4)
    photo, art = rng.uniform(0, 255, (40, 48, 3)), rng.uniform(0, 255, (36, 36, 3))
    net = VGG19(random_params(0, widths=WIDTHS), device="gpu")
    standin.set_memory(free=1 << 20)
    with pytest.raises(NstliteError, match=r"^48x40 needs about .* GiB of GPU memory but only .* free on the GPU"):
        nstlite.stylize(photo, art, size=48, iterations=2, net=net, quiet=True, output=str(tmp_path / "out.png"))
    assert not (tmp_path / "out.png").exists()


# ----------------------------------------------------------------------------- the suite under the shim
SHIM_FILES = ["tests/test_backend.py", "tests/test_layers.py", "tests/test_losses.py", "tests/test_fused_losses.py",
              "tests/test_vgg.py"]


def test_the_suites_gpu_tests_pass_with_the_standin_as_cupy(tmp_path):
    """``tests/cupy_shim`` makes ``import cupy`` the stand-in: the gpu-parametrised tests of the
    layers, losses, fused losses, backend and network, which skip without a GPU, run here on
    every commit through the CuPy code paths."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests", "cupy_shim"), ROOT]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          "-m", "not network", "-k", "gpu", "--basetemp", str(tmp_path / "t"), *SHIM_FILES],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) >= 80, run.stdout[-2000:]
    assert "CuPy with a CUDA device not available" not in run.stdout
