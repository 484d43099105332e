"""Thread settings of the fast path: resolved on first use, not at import."""
import os
import subprocess
import sys

import pytest

# The package's own __init__ is bypassed (an empty package object over the same directory), so
# that what is checked is what the engine modules import themselves.
PROBE = ("import os, sys, types, builtins; opened = []; real = builtins.open\n"
         "builtins.open = lambda f, *a, **k: (opened.append(str(f)), real(f, *a, **k))[1]\n"
         "pkg = types.ModuleType('nstlite'); pkg.__path__ = [os.path.join(sys.argv[1], 'nstlite')]\n"
         "sys.modules['nstlite'] = pkg\n"
         "import nstlite.fast.channels_last, nstlite.layers, nstlite.vgg\n"
         "assert not [f for f in opened if 'maps' in f], opened\n"
         "assert 'scipy' not in sys.modules and 'h5py' not in sys.modules, 'scipy/h5py imported'\n"
         "from nstlite.fast.workspace import transform_threads\n"
         "print(transform_threads())\n")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, env_value):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("NSTLITE_TRANSFORM_THREADS", None)
    if env_value is not None:
        env["NSTLITE_TRANSFORM_THREADS"] = env_value
    return subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, env=env)


def _transform_threads(env_value):
    out = _run(PROBE, env_value)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_transform_threads_default_and_override():
    assert _transform_threads(None) == max(1, min(4, os.cpu_count() or 1))
    assert _transform_threads("1") == 1
    assert _transform_threads("3") == 3
    assert _transform_threads("64") == 4  # capped: not measured above a few threads


def test_import_reads_no_environment_and_a_bad_value_is_one_line_at_first_use():
    """Importing the engine with a bad $NSTLITE_TRANSFORM_THREADS works (nothing is read at
    import, no /proc/self/maps probe); the first workspace reports it as a one-line error."""
    out = _run("import nstlite.fast.channels_last, nstlite.fast.workspace as w\n"
               "try:\n    w.Workspace(__import__('numpy'))\nexcept Exception as e:\n"
               "    print(type(e).__name__, e)\n", "many")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NstliteError NSTLITE_TRANSFORM_THREADS must be a whole number, not 'many'"


@pytest.mark.parametrize("threads", [1, 2])
def test_workspace_threads(threads):
    import numpy as np

    from nstlite.fast.workspace import Workspace
    assert Workspace(np, threads=threads).threads == threads


def test_openblas_thread_timeout_set_before_numpy():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", "import os, nstlite; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"
