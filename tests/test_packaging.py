"""The source distribution is complete (its tests can run from the unpacked archive), the version
is written once, and the metadata offers a CuPy for each CUDA major version."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

import nstlite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ("nstlite", "weights_convert", "tests", "docs", "benchmarks")
TOP_FILES = ("LICENSE", "README.md", "CHANGELOG.md", "CONTRIBUTING.md", "pyproject.toml", "setup.py", "MANIFEST.in")


def source_files():
    """The files an sdist must hold: the top files and everything under the shipped folders,
    without caches and build litter."""
    found = {name for name in TOP_FILES if os.path.exists(os.path.join(ROOT, name))}
    for top in SHIPPED:
        for folder, dirs, names in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".") and not d.endswith(".egg-info")]
            for name in names:
                if not name.endswith((".pyc", ".pyo")) and ".tmp" not in name:
                    found.add(os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/"))
    return found


def _litter(folder, names):
    return [n for n in names if n.startswith(".") or n in ("__pycache__", "build", "dist") or n.endswith(".egg-info")]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """Build the sdist from a clean copy of the tree (setup.py sdist writes beside itself)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools not installed")
    tmp = tmp_path_factory.mktemp("sdist")
    tree = tmp / "tree"
    shutil.copytree(ROOT, tree, ignore=_litter)
    run = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp / "dist")], cwd=tree,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    (archive,) = (tmp / "dist").iterdir()
    with tarfile.open(archive) as tar:
        top = f"nstlite-{nstlite.__version__}/"
        names = {m.name[len(top):] for m in tar.getmembers() if m.isfile()}
        pkg_info = tar.extractfile(top + "PKG-INFO").read().decode("utf-8")
        requires = tar.extractfile(top + "nstlite.egg-info/requires.txt").read().decode("utf-8")
    return names, pkg_info, requires


def test_the_sdist_holds_every_source_file_and_the_test_helpers(sdist):
    names = sdist[0]
    missing = sorted(source_files() - names)
    assert not missing, f"not in the sdist: {missing[:10]}"
    for needed in ("tests/conftest.py", "tests/weights_fixtures.py", "tests/fast_tolerances.py", "pyproject.toml",
                   "LICENSE", "docs/examples/mean_loss.py"):
        assert needed in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_metadata_has_classifiers_urls_and_one_cupy_per_cuda(sdist):
    _, pkg_info, requires = sdist
    assert re.search(rf"^Version: {re.escape(nstlite.__version__)}$", pkg_info, re.MULTILINE)
    assert "Classifier: Programming Language :: Python :: 3" in pkg_info and "Project-URL: Paper" in pkg_info
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", pkg_info, re.MULTILINE))
    assert {"gpu", "gpu-cuda11", "gpu-cuda12", "gpu-cuda13", "test"} <= extras
    for cuda in ("11", "12", "13"):  # requires.txt: one [extra] section per extra, its requirements below
        section = re.search(rf"^\[gpu-cuda{cuda}\]\n(.*?)(?:\n\n|\Z)", requires, re.MULTILINE | re.DOTALL)
        assert section and section.group(1).startswith(f"cupy-cuda{cuda}x"), f"gpu-cuda{cuda}: {requires}"


def test_the_version_is_written_once():
    written = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "build", "dist")]
        for name in names:
            if name.endswith((".py", ".toml", ".cfg")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    if re.search(r"""^\s*(__version__|version)\s*=\s*["']\d""", f.read(), re.MULTILINE):
                        written.append(os.path.relpath(path, ROOT))
    assert written == [os.path.join("nstlite", "_version.py")]
