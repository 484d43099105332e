"""Kernel launches, host syncs and hidden operand copies of one evaluation on the GPU code
path, counted on the CPU by the test suite's CuPy stand-in (``tests/cupy_standin.py``).

    python benchmarks/standin_launches.py --size 128 --pooling avg [--blocks cpu]

VGG19's real channel counts with random weights (the counts do not depend on the values),
the default objective (content conv4_2; style conv1_1 ... conv5_1). The second evaluation is
counted (the first makes the kernels' weight forms). Slow: NumPy on one thread underneath.

The stand-in reports an idle 16 GiB device, so the blocks are device-sized (2 GiB: one block
per layer); ``--blocks cpu`` reports 128 MiB free instead, which gives the CPU's 16 MiB blocks.
``round_2_launches``: the count before device-sized blocks and the fused Winograd transforms
(16 MiB blocks, one launch per NumPy operation), where it was measured.
"""
import argparse
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402

import cupy_standin  # noqa: E402
from nstlite import backend  # noqa: E402
from nstlite.objective import build_objective  # noqa: E402
from nstlite.fast.workspace import BLOCK_BYTES, DEVICE_BLOCK_SHARE  # noqa: E402
from nstlite.problem import Evaluator  # noqa: E402
from nstlite.vgg import VGG19  # noqa: E402
from nstlite.weights import random_params  # noqa: E402

STYLE = {"conv1_1": 0.2, "conv2_1": 0.2, "conv3_1": 0.2, "conv4_1": 0.2, "conv5_1": 0.2}
# launches per evaluation before this round's GPU work (commit 5caa55a), by (size, pooling)
ROUND_2_LAUNCHES = {(128, "avg"): 2356, (256, "avg"): 4024, (512, "avg"): 11844, (512, "max"): 11896}


def count(size, pooling, blocks="device"):
    cupy_standin.install()
    if blocks == "cpu":
        cupy_standin.set_memory(free=BLOCK_BYTES * DEVICE_BLOCK_SHARE)
    net = VGG19(random_params(0), pooling=pooling, device="gpu")
    rng = np.random.default_rng(0)
    content, style = (rng.uniform(0, 255, (size, size, 3)) for _ in range(2))
    objective = build_objective(net, net.preprocess(content), [net.preprocess(style)], ["conv4_2"], STYLE, 1.0, 1e3)
    x0 = backend.to_host(net.preprocess(content)).astype(np.float64).ravel()
    evaluate = Evaluator(objective, net, (3, size, size), list(STYLE))
    evaluate(x0)
    cupy_standin.COUNTS.reset()
    evaluate(x0)
    counts = cupy_standin.COUNTS
    return {"size": size, "pooling": pooling, "block_bytes": net.path.ws.block_bytes, **counts.snapshot(),
            "round_2_launches": ROUND_2_LAUNCHES.get((size, pooling)), "sync_sites": dict(counts.sync_sites),
            "copy_sites": dict(counts.copy_sites)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--pooling", default="avg", choices=["avg", "max"])
    ap.add_argument("--blocks", default="device", choices=["device", "cpu"],
                    help="device-sized blocks (an idle 16 GiB device) or the CPU's 16 MiB ones")
    a = ap.parse_args()
    print(json.dumps(count(a.size, a.pooling, a.blocks), indent=1))
