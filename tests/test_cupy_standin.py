"""nstlite's CuPy code paths on the CPU, through a strict NumPy-backed stand-in for CuPy
(``tests/cupy_standin.py``): the fast kernels over several blocks, the whole network in float32,
a whole stylisation, the host syncs of one evaluation (bounded) and its kernel launches
(reported), and that a CPU run never imports CuPy.

Tolerances: the stand-in runs the same NumPy operations as the CPU path, but on one thread and
with other GEMM operands (the GPU's transposed kernels), so results agree to float32 rounding
(``fast_tolerances.TOL``), not bitwise.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import cupy_standin
from fast_tolerances import TOL, rel

import nstlite
from nstlite import backend
from nstlite.fast.layout import padded_shape
from nstlite.fast.plan import ConvPlan
from nstlite.fast.workspace import Workspace
from nstlite.objective import build_objective
from nstlite.problem import Evaluator
from nstlite.vgg import VGG19
from nstlite.weights import random_params

COUNTS = cupy_standin.COUNTS
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
    tile rows, with the carried rows between blocks), equal the CPU kernel's."""
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
