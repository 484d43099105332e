"""``nstlite sweep`` / ``batch`` without Dask: the task list, validation, the serial engine,
resume, the results tables, and the one-line error when Dask is missing."""
import csv
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from nstlite import sweep as S
from nstlite.cli import main
from nstlite.cluster import DaskExecutor, WorkerPlan, plan_workers, require_distributed
from nstlite.errors import NstliteError
from nstlite.style_transfer import stylize
from nstlite.vgg import load_vgg19
from nstlite.weights import random_params, write_weights

MEAN = (103.939, 116.779, 123.68)
WIDTHS = (4, 4, 6, 6, 8)
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    write_weights(d / "tiny.h5", random_params(0, widths=WIDTHS), "BGR", 255, MEAN, (1, 1, 1), "test")
    y, x = np.mgrid[0:32, 0:40]
    Image.fromarray(np.stack([x * 6, y * 7, (x + y) * 3], axis=2).astype(np.uint8)).save(d / "photo.png")
    Image.fromarray(np.stack([y * 7, x * 6, (x * y) % 255], axis=2).astype(np.uint8)).save(d / "photo2.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(d / "art.png")
    Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(d / "art2.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    return d


def fixed(files, **kw):
    return {"size": 40, "iterations": 4, "weights": str(files / "tiny.h5"), **kw}


def test_grid_is_the_cartesian_product_with_contents_and_styles_as_axes(files, tmp_path):
    grid = S.parse_grid(["style_weight=1e2,1e3", "style-layers=conv1_1;conv1_1,conv2_1", "seed=0,1,2"])
    assert grid == {"style_weight": ["1e2", "1e3"], "style_layers": ["conv1_1", "conv1_1,conv2_1"],
                    "seed": ["0", "1", "2"]}
    tasks = S.sweep_tasks([files / "photo.png", files / "photo2.png"], [files / "art.png"], fixed(files), grid,
                          tmp_path)
    assert len(tasks) == 2 * 1 * 2 * 2 * 3
    assert len({t.name for t in tasks}) == len(tasks) == len({t.output for t in tasks})
    first = tasks[0]
    assert first.settings["style_weight"] == 100.0 and first.settings["seed"] == 0  # typed like the options
    assert first.name == "photo__art__style_weight=1e2__style_layers=conv1_1__seed=0"
    assert tasks[3].name == "photo__art__style_weight=1e2__style_layers=conv1_1+conv2_1__seed=0"
    assert first.output == str(tmp_path / (first.name + ".png"))
    # the layer lists of the example, ':' between values where no weight is written
    assert S.parse_grid(["style_layers=conv1_1:conv1_1,conv2_1"]) == {"style_layers": ["conv1_1", "conv1_1,conv2_1"]}
    assert S.parse_grid(["style_layers=conv1_1:0.2,conv2_1:0.8"]) == {"style_layers": ["conv1_1:0.2,conv2_1:0.8"]}
    # iterations per scale: one list is one value
    assert S.parse_grid(["iterations=100,50;200,100"]) == {"iterations": ["100,50", "200,100"]}
    assert S.convert_value("iterations", "100,50") == "100,50" and S.convert_value("iterations", "7") == 7
    # repeating an axis adds values
    assert S.parse_grid(["size=32", "size=48"]) == {"size": ["32", "48"]}


@pytest.mark.parametrize("grid, fixed_extra, message", [
    (["colour=1,2"], {}, "unknown option 'colour'"),
    (["net=1"], {}, "unknown option 'net'"),
    (["style_weight="], {}, "grid axis style_weight has no values"),
    (["style_weight"], {}, "write a grid axis as OPTION=V1,V2"),
    (["style_weight=1e3,-1"], {}, "style weight must be between 0 and 1e+15"),
    (["lbfgs_history=5,big"], {}, "lbfgs_history must be a whole number, not 'big'"),
    (["style_layers=conv1_1;conv9_9"], {}, "unknown layer(s) conv9_9"),
    (["init=noise,sketch.png"], {}, "init (one of content, noise, uniform, style or an image file) not found"),
    (["seed=0,1"], {"seed": 3}, "seed is both a fixed option and a grid axis"),
])
def test_bad_grids_are_refused_before_any_task_runs(files, tmp_path, monkeypatch, grid, fixed_extra, message):
    monkeypatch.setattr(S, "run_task", lambda *a, **k: pytest.fail("a task ran"))
    with pytest.raises(NstliteError) as e:
        S.sweep_tasks([files / "photo.png"], [files / "art.png"], fixed(files, **fixed_extra), S.parse_grid(grid),
                      tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_bad_sweeps_on_the_command_line_are_one_line_errors(files, tmp_path, capsys):
    base = ["sweep", "--content", str(files / "photo.png"), "--style", str(files / "art.png"), "--out-dir",
            str(tmp_path / "runs"), "--serial"]
    for extra, message in ([["--grid", "style_weight=1e3,x"], "style_weight must be a number"],
                           [["--grid", "iterationz=1,2"], "unknown option 'iterationz'"],
                           [["--content", str(files / "missing.png")], "content image not found"],
                           [["--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "are for the embedded cluster"],
                           [["--log", "x.jsonl"], "--log is for one stylize run"],
                           [["--preview", "p.png"], "--preview is for one stylize run"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_serial_sweep_writes_outputs_tables_and_resumes(files, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["sweep", "--content", str(files / "photo.png"), "--style", str(files / "art.png"), "--size", "40",
            "--iterations", "4", "--weights", str(files / "tiny.h5"), "--grid", "style_weight=1e2,1e4",
            "--grid", "style_layers=conv1_1;conv1_1,conv2_1", "--out-dir", str(out), "--serial", "--quiet"]
    assert main(args) == 0
    assert "4 tasks: 4 run, 0 already done, 0 failed" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert doc["format"] == "nstlite-sweep" and doc["tasks_total"] == doc["tasks_done"] == 4
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["style_weight"] for r in rows] == ["1e2", "1e2", "1e4", "1e4"]
    for record, row in zip(doc["tasks"], rows):
        assert record["status"] == "ok" and record["evaluations"] >= 4 and record["seconds"] > 0
        assert record["worker"].startswith("local:") and row["output"] == record["output"]
        # each output is what stylize gives for the task's own settings
        settings = dict(record["settings"], net=load_vgg19(str(files / "tiny.h5")), quiet=True)
        del settings["weights"]
        expected = stylize(files / "photo.png", [files / "art.png"], **settings)
        np.testing.assert_array_equal(np.asarray(Image.open(record["output"])), expected.image)
        assert record["total"] == expected.final["total"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert main(args) == 0  # the same sweep again: nothing runs
    assert "4 tasks: 0 run, 4 already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
    assert all(r["resumed"] for r in json.loads((out / "results.json").read_text())["tasks"])
    # a new value of an axis runs only the new tasks; a deleted output is run again
    (out / (rows[0]["name"] + ".png")).unlink()
    assert main(args[:-8] + ["--grid", "style_weight=1e2,1e4,1e5"] + args[-6:]) == 0
    assert "6 tasks: 3 run, 3 already done" in capsys.readouterr().out


def test_sweep_from_toml_and_json_files(files, tmp_path, capsys):
    toml = tmp_path / "sweep.toml"
    toml.write_text(f'content = "{files / "photo.png"}"\nstyle = ["{files / "art.png"}", '
                    f'["{files / "art.png"}", "{files / "art2.png"}"]]\nout_dir = "runs"\n'
                    f'[options]\nsize = 40\niterations = 3\nweights = "{files / "tiny.h5"}"\n'
                    '[grid]\nstyle_layers = ["conv1_1", "conv1_1,conv2_1"]\n')
    spec = S.read_sweep_file(toml)
    assert spec["out_dir"] == str(tmp_path / "runs") and len(spec["style"]) == 2
    tasks = S.sweep_tasks(spec["content"], spec["style"], spec["options"], spec["grid"], spec["out_dir"])
    assert [t.name for t in tasks] == ["photo__art__style_layers=conv1_1", "photo__art__style_layers=conv1_1+conv2_1",
                                       "photo__art+art2__style_layers=conv1_1",
                                       "photo__art+art2__style_layers=conv1_1+conv2_1"]
    as_json = tmp_path / "sweep.json"
    as_json.write_text(json.dumps({"content": [str(files / "photo.png")], "style": [str(files / "art.png")],
                                   "options": spec["options"], "grid": {"seed": [0, 1]}}))
    assert main(["sweep", "--from", str(as_json), "--out-dir", str(tmp_path / "j"), "--serial", "-q"]) == 0
    assert "2 tasks: 2 run" in capsys.readouterr().out
    for text, message in (("[grid]\nsize = []\n", "grid axis size has no values"),
                          ("[grid]\nsize = [32\n", "cannot be read"), ("colour = 1\n", "unknown key(s) colour")):
        toml.write_text(text)
        with pytest.raises(NstliteError, match=message.replace("(", r"\(").replace(")", r"\)")):
            S.read_sweep_file(toml)


def test_batch_goes_on_past_a_corrupt_or_missing_photo(files, tmp_path, capsys):
    listing = tmp_path / "photos.txt"
    listing.write_text(f"# my photos\n{files / 'photo.png'}\n{files / 'corrupt.png'}\n{files / 'gone.png'}\n"
                       f"{files / 'photo2.png'}\n")
    code = main(["batch", str(listing), "--style", str(files / "art.png"), "--style", str(files / "art2.png"),
                 "--size", "40", "--iterations", "3", "--weights", str(files / "tiny.h5"), "--out-dir",
                 str(tmp_path / "out"), "--serial", "-q"])
    assert code == 1  # some tasks failed
    out = capsys.readouterr().out
    assert "8 tasks: 8 run, 0 already done, 4 failed" in out
    records = json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]
    by_status = {r["name"]: r for r in records}
    assert {n for n, r in by_status.items() if r["status"] == "ok"} == {
        "photo__art", "photo__art2", "photo2__art", "photo2__art2"}
    failed = [r for r in records if r["status"] == "failed"]
    reasons = sorted(r["reason"] for r in failed)
    assert [("corrupt.png cannot be read as an image" in r, "gone.png is missing or empty" in r) for r in reasons] \
        == [(True, False)] * 2 + [(False, True)] * 2
    assert all("\n" not in r["reason"] and not r["output"] for r in failed)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(
        n + ".png" for n in ("photo__art", "photo__art2", "photo2__art", "photo2__art2"))


def test_batch_of_a_folder(files, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        (folder / name).write_bytes((files / "photo.png").read_bytes())
    (folder / "notes.md").write_text("not a photo")
    assert S.photos_in([folder]) == [str(folder / "a.png"), str(folder / "b.png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NstliteError, match="no images"):
        S.photos_in([empty])
    with pytest.raises(NstliteError, match="style image not found"):
        S.batch_tasks([folder / "a.png"], [tmp_path / "no_art.png"], {}, tmp_path)


def test_the_network_is_loaded_once_per_worker_thread(files, monkeypatch):
    import nstlite.vgg

    loads = []
    real = nstlite.vgg.load_vgg19
    monkeypatch.setattr(nstlite.vgg, "load_vgg19", lambda *a, **k: loads.append(a) or real(*a, **k))
    tasks = S.sweep_tasks([files / "photo.png"], [files / "art.png"], fixed(files, iterations=1),
                          {"seed": [5, 6, 7]}, "unused")
    data = (files / "photo.png").read_bytes(), [(files / "art.png").read_bytes()]
    records = [S.run_task(t, *data, blas_threads=1) for t in tasks]
    assert [r["status"] for r in records] == ["ok"] * 3 and len(loads) <= 1


def test_worker_plan_fills_the_cores():
    assert plan_workers(20, cores=2) == WorkerPlan(2, 1, 1)
    assert plan_workers(1, cores=8) == WorkerPlan(1, 1, 8)  # one task: every core as BLAS threads
    assert plan_workers(3, cores=8) == WorkerPlan(3, 1, 2)
    assert plan_workers(20, cores=8, blas_threads=2) == WorkerPlan(4, 1, 2)
    assert plan_workers(20, cores=8, workers=2) == WorkerPlan(2, 1, 4)
    assert plan_workers(20, cores=8, workers=2, threads_per_worker=2) == WorkerPlan(2, 2, 2)
    env = WorkerPlan(2, 1, 3).env()
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["OPENBLAS_THREAD_TIMEOUT"] and env["NSTLITE_TRANSFORM_THREADS"] == "3"
    with pytest.raises(NstliteError, match="--workers must be at least 1"):
        plan_workers(4, workers=0)


def test_missing_distributed_is_one_line_with_the_install_command(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(NstliteError, match=r"pip install nstlite\[distributed\]"):
        require_distributed()
    with pytest.raises(NstliteError):
        DaskExecutor().__enter__()
    assert main(["sweep", "--content", str(files / "photo.png"), "--style", str(files / "art.png"), "--out-dir",
                 str(tmp_path), "--weights", str(files / "tiny.h5"), "--size", "40"]) == 2
    err = capsys.readouterr().err
    assert "pip install nstlite[distributed]" in err and err.count("\n") == 1


def test_ctrl_c_keeps_the_finished_tasks_and_a_rerun_goes_on(files, tmp_path):
    tasks = S.sweep_tasks([files / "photo.png"], [files / "art.png"], fixed(files, iterations=2),
                          {"seed": [0, 1, 2]}, tmp_path)

    def interrupt(message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        S.execute(tasks, tmp_path, progress=interrupt)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["tasks_total"] == 3 and doc["tasks_done"] == 1 and doc["tasks"][0]["status"] == "ok"
    report = S.run_sweep([files / "photo.png"], [files / "art.png"], {"seed": [0, 1, 2]}, tmp_path,
                         fixed(files, iterations=2), serial=True)
    assert (report.ran, report.skipped, report.failed) == (2, 1, 0)
    assert [r["name"] for r in report.records] == [t.name for t in tasks]


def test_the_documented_figure3_sweep_is_the_papers_grid(files, tmp_path):
    spec = S.read_sweep_file(os.path.join(DOCS, "examples", "figure3_sweep.toml"))
    tasks = S.sweep_tasks([files / "photo.png"], [files / "art.png"], spec["options"], spec["grid"], tmp_path)
    assert len(tasks) == 20 and len({t.output for t in tasks}) == 20
    ratios = {1 / t.settings["style_weight"] for t in tasks}
    assert sorted(ratios) == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])
    assert {t.settings["style_layers"].count(",") + 1 for t in tasks} == {1, 2, 3, 4, 5}
    assert all(t.settings["init"] == "noise" and t.settings["size"] == 256 for t in tasks)
    assert tasks[5].name == "photo__art__style_layers=conv1_1+conv2_1__style_weight=10000"
