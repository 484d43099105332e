#!/usr/bin/env bash
# The device check, as one prepared call on a machine with an NVIDIA GPU, CuPy and PyTorch
# (the project's device machines have both; nothing is installed or fetched):
#   bash benchmarks/gpu_check.sh            # from the repository root
# 1. the test suite, where every CuPy-parametrised test now runs (real-weights tests skip
#    unless ~/.cache/nstlite/vgg19.h5 is there; the timings below do not depend on the values)
# 2. nstlite on CuPy against PyTorch on CUDA, one evaluation of the default objective
set -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import cupy, numpy, scipy, h5py, PIL; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())" || exit 1
status=0
$PY -m pytest -q -m "not network" -p no:cacheprovider tests 2>&1 | tail -25 || status=1
$PY benchmarks/bench_objective.py --device gpu --sizes 256,512,1024 --repeats 10 || status=1
exit $status
