"""Sweeps on Dask ``distributed`` (skipped without it): an in-process LocalCluster and a
cluster of ``dask scheduler`` + two ``dask worker`` processes on 127.0.0.1, one of them killed
mid-sweep. Every result must equal the serial one bit for bit."""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from nstlite import sweep as S
from nstlite.cli import main
from nstlite.cluster import DaskExecutor, WorkerPlan
from weights_fixtures import write_tiny_run

pytest.importorskip("distributed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = (103.939, 116.779, 123.68)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("sweep_dask"))


def tasks_into(files, out_dir, grid, iterations=6):
    fixed = {"size": 40, "iterations": iterations, "weights": str(files / "tiny.h5"), "init": "noise"}
    return S.sweep_tasks([files / "photo.png"], [files / "art.png"], fixed, grid, out_dir)


def assert_same_results(a, b):
    assert [r["name"] for r in a] == [r["name"] for r in b]
    for x, y in zip(a, b):
        assert x["status"] == y["status"] == "ok"
        assert (x["total"], x["evaluations"]) == (y["total"], y["evaluations"])
        np.testing.assert_array_equal(np.asarray(Image.open(x["output"])), np.asarray(Image.open(y["output"])))


def test_local_cluster_equals_serial_bit_for_bit(files, tmp_path):
    grid = {"style_weight": ["1e2", "1e4"], "seed": [0, 1]}
    serial = S.execute(tasks_into(files, tmp_path / "serial", grid), tmp_path / "serial", S.SerialExecutor(1))
    messages = []
    with DaskExecutor(plan=WorkerPlan(2, 1, 1), processes=False, say=messages.append) as engine:
        on_dask = S.execute(tasks_into(files, tmp_path / "dask", grid), tmp_path / "dask", engine)
        # any independent calls go through the same engine; a call that raises gives its exception
        outcomes = dict(engine.map(divmod, [(7, 2), (9, 0), (8, 3)], name=lambda args: f"divmod-{args[0]}"))
    assert outcomes[(7, 2)] == (3, 1) and outcomes[(8, 3)] == (2, 2)
    assert isinstance(outcomes[(9, 0)], ZeroDivisionError)
    assert on_dask.ran == 4 and on_dask.failed == 0
    assert_same_results(serial.records, on_dask.records)
    assert all(r["worker"].startswith("inproc://") for r in on_dask.records)  # run by Dask workers
    assert any("workers run with" in m and "OPENBLAS_THREAD_TIMEOUT" in m for m in messages)
    assert all(r["blas_threads"] == 1 for r in on_dask.records)


def _start(args, env):
    return subprocess.Popen([sys.executable, "-m", "dask"] + args, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.fixture
def dask_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes (no nanny: a killed worker stays dead)."""
    env = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1")
    scheduler_file = tmp_path / "scheduler.json"
    processes = [_start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", str(scheduler_file)], env)]
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [_start(["worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                           "--no-dashboard", "--name", f"w{i}"], env) for i in range(2)]
        processes += workers
        from distributed import Client

        with Client(address, timeout="20s") as client:  # both workers up before the sweep starts
            client.wait_for_workers(2, timeout=30)
        yield address, workers
    finally:
        for p in processes:
            p.kill()
        for p in processes:
            p.wait(timeout=10)


def test_remote_cluster_survives_a_killed_worker_and_resumes(files, tmp_path, dask_cluster, capsys):
    address, workers = dask_cluster
    out = tmp_path / "runs"
    argv = ["sweep", "--content", str(files / "photo.png"), "--style", str(files / "art.png"), "--size", "40",
            "--iterations", "50", "--init", "noise", "--weights", str(files / "tiny.h5"),
            "--grid", "style_weight=1e2,1e4", "--grid", "seed=0,1", "--out-dir", str(out),
            "--scheduler", address, "--quiet"]
    codes = []
    sweep = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    sweep.start()
    deadline = time.monotonic() + 60
    while not list(out.glob("[!.]*.png")) and time.monotonic() < deadline and sweep.is_alive():
        time.sleep(0.05)
    done_at_kill = len(list(out.glob("[!.]*.png")))
    workers[1].kill()  # while the other tasks run
    assert done_at_kill <= 2
    sweep.join(timeout=120)
    assert not sweep.is_alive() and codes == [0]
    assert "4 tasks: 4 run, 0 already done, 0 failed" in capsys.readouterr().out
    assert not list(out.glob(".*"))  # no half-written file left
    records = json.loads((out / "results.json").read_text())["tasks"]
    serial_dir = tmp_path / "serial"
    grid = {"style_weight": ["1e2", "1e4"], "seed": ["0", "1"]}
    serial = S.execute(tasks_into(files, serial_dir, grid, iterations=50), serial_dir, S.SerialExecutor(1))
    assert_same_results(serial.records, records)
    assert main(argv) == 0  # the same sweep again: every task is done
    assert "4 tasks: 0 run, 4 already done" in capsys.readouterr().out
