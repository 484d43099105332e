"""Thread settings of the fast path are read from the environment before NumPy starts."""
import os
import subprocess
import sys


def _transform_threads(env_value):
    env = dict(os.environ)
    env.pop("NSTLITE_TRANSFORM_THREADS", None)
    if env_value is not None:
        env["NSTLITE_TRANSFORM_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", "import nstlite.conv_fast as c; print(c.TRANSFORM_THREADS)"],
                         capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip())


def test_transform_threads_default_and_override():
    assert _transform_threads(None) == max(1, min(4, os.cpu_count() or 1))
    assert _transform_threads("1") == 1
    assert _transform_threads("3") == 3
    assert _transform_threads("64") == 4  # capped: not measured above a few threads


def test_openblas_thread_timeout_set_before_numpy():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", "import os, nstlite; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"
