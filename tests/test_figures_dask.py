"""The figure commands on the sweep engine (Dask ``distributed``; skipped without it): a figure
on an in-process LocalCluster equals the serial one bit for bit, the sidecar says which engine
and which worker ran each panel, and a scheduler that cannot be reached is one line."""
import json

import numpy as np
import pytest
from PIL import Image

import nstlite.vgg
from nstlite import cluster
from nstlite.cli import main
from weights_fixtures import write_tiny_run

pytest.importorskip("distributed")

MEAN = (103.939, 116.779, 123.68)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("figures_dask"), widths=(4, 5, 6, 6, 8), photo_hw=(36, 48),
                          art_hw=(40, 32), steps=(5, 7, 3))


def figure3(files, output, *engine):
    """Figure 3 with 2 x 2 panels of the tiny network: (exit code, its JSON document or None)."""
    code = main(["figure3", "--content", str(files / "photo.png"), "--style", str(files / "art.png"),
                 "--output", str(output), "--size", "40", "--iterations", "3", "--weights", str(files / "tiny.h5"),
                 "--ratios", "1e-3,1e-1", "--layers", "conv1_1,conv2_1", *engine])
    sidecar = output.with_suffix(".json")
    return code, json.loads(sidecar.read_text()) if sidecar.exists() else None


def without(panel, *names):
    return {k: v for k, v in panel.items() if k not in names}


def test_a_figure_on_a_local_cluster_equals_the_serial_one(files, tmp_path, monkeypatch, capsys):
    code, serial = figure3(files, tmp_path / "serial.png", "--serial", "--blas-threads", "1", "--quiet")
    assert code == 0
    loads = []
    real = nstlite.vgg.load_vgg19
    monkeypatch.setattr(nstlite.vgg, "load_vgg19", lambda *a, **k: loads.append(a) or real(*a, **k))
    code, dask = figure3(files, tmp_path / "dask.png", "--in-process", "--workers", "2")
    assert code == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "serial.png")),
                                  np.asarray(Image.open(tmp_path / "dask.png")))
    varies = ("seconds", "task_seconds", "worker")
    assert [without(p, *varies) for p in serial["panels"]] == [without(p, *varies) for p in dask["panels"]]
    assert [p["panel"] for p in dask["panels"]] == ["A1", "A2", "B1", "B2"]
    # which engine, and per panel which worker and how long (the whole task)
    assert serial["engine"]["kind"] == "serial" and serial["engine"]["blas_threads"] == 1
    assert dask["engine"]["kind"] == "local cluster" and dask["engine"]["workers"] == 2
    assert dask["engine"]["threads_per_worker"] == [1] and dask["engine"]["blas_threads"] == 1
    assert all(p["worker"].startswith("inproc://") and p["task_seconds"] >= p["seconds"] > 0 for p in dask["panels"])
    assert all(p["worker"].startswith("local:") for p in serial["panels"])
    assert "--workers 2" in dask["command"] and "--serial --blas-threads 1" in serial["command"]
    # the network is loaded once per worker thread (and once here to check the layers), never per panel
    assert 1 <= len(loads) <= 3
    err = capsys.readouterr().err
    assert "engine: embedded LocalCluster" in err and "[4/4]" in err and " on inproc://" in err


def test_an_unreachable_scheduler_is_one_line(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    for address in ("tcp://127.0.0.1:1", "no-port"):
        code, doc = figure3(files, tmp_path / "f.png", "--scheduler", address, "--quiet")
        err = capsys.readouterr().err.strip()
        assert code == 2 and doc is None
        assert err.startswith(f"nstlite: error: cannot reach the Dask scheduler at {address}") and "\n" not in err
    assert not list(tmp_path.iterdir())
    assert figure3(files, tmp_path / "f.png", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2")[0] == 2
    assert "for the embedded cluster" in capsys.readouterr().err
