#!/usr/bin/env bash
# The device check, in one call, on a machine with an NVIDIA GPU where CuPy and PyTorch (CUDA)
# are preinstalled and no package registry can be reached (nothing is installed or fetched):
#
#   bash benchmarks/gpu_check.sh [RESULTS_FILE]      # from anywhere; default $OUT/gpu_check.txt
#                                                    # or benchmarks/gpu_check_results.txt
# Steps (each with its own time limit; a failing step is recorded and the next one runs):
#   0. the machine: GPU, driver, interpreters, versions, TF32 settings
#   1. CuPy's first-use kernel compilation, paid once up front (a 64 px evaluation), and the
#      fused Winograd transforms' CUDA code (backend.Fused) against their NumPy steps
#   2. the test suite with CuPy (every gpu-parametrised test runs)
#   3. nstlite gradcheck --device gpu (float64 gradient checks of every row)
#   4. a whole 512 px stylisation on the GPU (real weights if present, else random ones)
#   5. nstlite on CuPy against PyTorch on CUDA: the kernel benchmark (one evaluation, when one
#      interpreter has both) and the whole-run benchmark (separate processes) at 512 and 1024
# Interpreters: $NSTLITE_PYTHON (needs cupy numpy scipy h5py PIL; pytest for step 2) and
# $TORCH_PYTHON (needs torch with CUDA, numpy scipy h5py PIL); each defaults to the first of
# python3 / python / /usr/bin/python3 / /opt/conda/bin/python that has what it needs.
# Equal precision: CUPY_TF32=0 here and allow_tf32 = False in PyTorch (both full float32).
# Budget: about 10 minutes on a bare machine (the step limits below add up to 580 s).
# $STYLIZE_SIZE (512) and $BENCH_SIZES (512,1024) shrink it for a dry run; $STEPS (all) picks
# steps by name, e.g. STEPS="compile gradcheck". A dry run without a GPU, with the suite's CuPy
# stand-in as cupy: PYTHONPATH=tests/cupy_shim STEPS="compile gradcheck" bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CUPY_TF32=0
RESULTS=${1:-${OUT:+$OUT/gpu_check.txt}}
RESULTS=${RESULTS:-$ROOT/benchmarks/gpu_check_results.txt}
STYLIZE_SIZE=${STYLIZE_SIZE:-512} BENCH_SIZES=${BENCH_SIZES:-512,1024}
STEPS=${STEPS:-compile suite gradcheck stylize bench_objective bench_run}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
: > "$RESULTS"
say() { echo "$*" | tee -a "$RESULTS"; }
# step NAME SECONDS CMD...: run with a limit, keep the tail of its output, record its status
declare -A STATUS
step() {
    local name=$1 limit=$2; shift 2
    case " $STEPS " in *" $name "*) ;; *) STATUS[$name]="skipped (not in STEPS)"; return ;; esac
    say ""; say "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$WORK/$name.log" | tee -a "$RESULTS"
    STATUS[$name]="rc=$rc in $((SECONDS - t0))s$([ $rc = 124 ] && echo ' (time limit)')"
    say "--- $name: ${STATUS[$name]}"
}
pick() {  # pick "module list": the first interpreter importing all of them
    for py in python3 python /usr/bin/python3 /usr/local/bin/python3 /opt/conda/bin/python; do
        command -v "$py" > /dev/null 2>&1 || continue
        "$py" -c "import $1" > /dev/null 2>&1 && { command -v "$py"; return; }
    done
}
NSTLITE_PYTHON=${NSTLITE_PYTHON:-$(pick "cupy, numpy, scipy, h5py, PIL")}
TORCH_PYTHON=${TORCH_PYTHON:-$(pick "torch, numpy, scipy, h5py, PIL")}

say "nstlite gpu_check $(date -u +%FT%TZ) commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$RESULTS"
say "nstlite python: ${NSTLITE_PYTHON:-none found (needs cupy numpy scipy h5py PIL)}"
say "torch python:   ${TORCH_PYTHON:-none found (needs torch numpy scipy h5py PIL)}"
[ -n "$NSTLITE_PYTHON" ] || { say "no interpreter with CuPy: nothing to check"; exit 1; }
"$NSTLITE_PYTHON" - <<'EOF' 2>&1 | tee -a "$RESULTS"
import os, numpy, scipy, cupy
print("cupy", cupy.__version__, "numpy", numpy.__version__, "scipy", scipy.__version__,
      "devices", cupy.cuda.runtime.getDeviceCount(), "CUPY_TF32", os.environ.get("CUPY_TF32"))
free, total = cupy.cuda.Device().mem_info
print(f"device memory: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
from nstlite.fast.workspace import block_bytes_for
print(f"conv blocks on this device: {block_bytes_for(cupy) / 2**20:.0f} MiB (the CPU's: 16 MiB)")
try:
    import pytest; print("pytest", pytest.__version__)
except ImportError:
    print("pytest: not installed (step 2 skipped)")
EOF
if [ -n "$TORCH_PYTHON" ]; then
    "$TORCH_PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), '(allow_tf32 set to False by the benchmarks)')" 2>&1 | tee -a "$RESULTS"
fi
WEIGHTS=$("$NSTLITE_PYTHON" -c "from nstlite.weights import default_weights_path as p; print(p())")
WEIGHT_ARGS=()
if [ ! -f "$WEIGHTS" ]; then
    say "real weights not at $WEIGHTS: steps 4-5 use random VGG19 weights (timings do not depend on values)"
    "$NSTLITE_PYTHON" -c "
from nstlite.weights import random_params, write_weights
write_weights('$WORK/random.h5', random_params(0), 'BGR', 255, (103.939, 116.779, 123.68), (1, 1, 1), 'random')"
    WEIGHT_ARGS=(--weights "$WORK/random.h5")
fi

# 1. compile CuPy's kernels once (they are cached in ~/.cupy/kernel_cache for the later steps)
step compile 150 "$NSTLITE_PYTHON" -c "
import time, numpy as np
from nstlite.vgg import VGG19
from nstlite.weights import random_params
from nstlite.objective import build_objective
t = time.perf_counter()
for pooling in ('avg', 'max'):
    for dtype in ('float32', 'float64'):
        net = VGG19(random_params(0), pooling=pooling, device='gpu', dtype=dtype)
        x = net.preprocess(np.random.default_rng(0).uniform(0, 255, (64, 64, 3)))
        obj = build_objective(net, x, [x], ['conv4_2'], {n: 0.2 for n in ('conv1_1', 'conv2_1', 'conv3_1', 'conv4_1', 'conv5_1')})
        loss, dx, parts = obj(x)
        float(loss)
print(f'first-use compilation and one evaluation per setting: {time.perf_counter() - t:.1f} s')
import cupy
from nstlite import backend
worst = 0.0
for name in backend.fused_names():
    k = backend.fused_reference(name)
    for dtype in ('float32', 'float64'):
        ins = [np.random.default_rng(i).standard_normal((64, 33, 17)).astype(dtype) for i in range(k.arity[0])]
        want = [np.empty_like(ins[0]) for _ in range(k.arity[1])]
        k(np, *[a.copy() for a in ins], *want)
        got = [cupy.empty(ins[0].shape, dtype) for _ in range(k.arity[1])]
        k(cupy, *[cupy.asarray(a) for a in ins], *got)
        err = max(float(np.abs(cupy.asnumpy(g) - w).max() / np.abs(w).max()) for g, w in zip(got, want))
        worst = max(worst, err / (1e-6 if dtype == 'float32' else 1e-15))
        print(f'fused {name} {dtype}: max rel. error against the NumPy steps {err:.1e}')
assert worst < 10, 'a fused kernel does not compute its NumPy steps'"

# 2. the suite, every CuPy-parametrised test included
if "$NSTLITE_PYTHON" -c "import pytest" > /dev/null 2>&1; then
    step suite 200 "$NSTLITE_PYTHON" -m pytest -q -m "not network" -p no:cacheprovider -o addopts="" tests -rfEs
else
    STATUS[suite]="skipped (no pytest in $NSTLITE_PYTHON)"
fi

# 3. the gradient checks on the GPU
step gradcheck 60 "$NSTLITE_PYTHON" -m nstlite gradcheck --device gpu

# 4. a whole stylisation at 512 px on the GPU, its log summarised
IMAGES=$ROOT/../shared/images
[ -d "$IMAGES" ] || IMAGES=$ROOT/../../shared/images
if [ -f "$IMAGES/tubingen.jpg" ] && [ -f "$IMAGES/starry_night.jpg" ]; then
    CONTENT=$IMAGES/tubingen.jpg STYLE=$IMAGES/starry_night.jpg
else
    "$NSTLITE_PYTHON" -c "
import numpy as np; from PIL import Image
r = np.random.default_rng(0)
for n in ('content', 'style'):
    Image.fromarray(np.kron(r.uniform(0, 255, (96, 128, 3)), np.ones((8, 8, 1))).astype(np.uint8)).save('$WORK/' + n + '.png')"
    CONTENT=$WORK/content.png STYLE=$WORK/style.png
fi
step stylize 60 "$NSTLITE_PYTHON" -m nstlite stylize --content "$CONTENT" --style "$STYLE" --size "$STYLIZE_SIZE" \
    --iterations 30 --device gpu "${WEIGHT_ARGS[@]}" --output "$WORK/out.png" --log "$WORK/run.jsonl"
[ -f "$WORK/run.jsonl" ] && "$NSTLITE_PYTHON" -c "
import json, numpy as np
rows = [r for r in map(json.loads, open('$WORK/run.jsonl')) if r.get('kind') != 'header']  # the header has no losses
s = np.diff([r['seconds'] for r in rows])[1:]
print(f'$STYLIZE_SIZE px on the GPU: {len(rows)} evaluations, median {np.median(s) * 1e3:.1f} ms per evaluation, '
      f'loss {rows[0][\"total\"]:.4e} -> {min(r[\"total\"] for r in rows):.4e}')" 2>&1 | tee -a "$RESULTS"

# 5. against PyTorch on CUDA at equal precision
if [ -n "$TORCH_PYTHON" ] && "$NSTLITE_PYTHON" -c "import torch" > /dev/null 2>&1; then
    step bench_objective 90 "$NSTLITE_PYTHON" benchmarks/bench_objective.py --device gpu --sizes "$BENCH_SIZES" --repeats 7
else
    STATUS[bench_objective]="skipped (no interpreter has both CuPy and torch)"
fi
if [ -n "$TORCH_PYTHON" ] && [ ${#WEIGHT_ARGS[@]} = 0 ]; then
    step bench_run 120 "$NSTLITE_PYTHON" benchmarks/bench_run.py --device gpu --sizes "$BENCH_SIZES" --iterations 10 \
        --pairs 2 --python "$NSTLITE_PYTHON" --torch-python "$TORCH_PYTHON" --json "$WORK/bench_run.jsonl"
else
    STATUS[bench_run]="skipped (needs torch and the real weights)"
fi

say ""; say "=== summary"
fail=0
for name in compile suite gradcheck stylize bench_objective bench_run; do
    say "$name: ${STATUS[$name]:-not run}"
    case "${STATUS[$name]:-}" in rc=0*|skipped*) ;; *) fail=1 ;; esac
done
say "results: $RESULTS"
exit $fail
