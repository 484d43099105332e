"""The package imports cheaply: the paper core needs NumPy only."""
import subprocess
import sys


def loaded_after(statement):
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_paper_core_loads_neither_scipy_nor_h5py():
    for module in ("nstlite", "nstlite.layers", "nstlite.losses", "nstlite.backend"):
        loaded = loaded_after(f"import {module}")
        assert not {m for m in loaded if m.split(".")[0] in ("scipy", "h5py", "PIL")}, module


def test_public_names_load_on_first_use():
    import nstlite

    assert callable(nstlite.stylize) and callable(nstlite.gradcheck) and callable(nstlite.build_objective)
    assert nstlite.losses.gram is not None and "stylize" in dir(nstlite)
    assert isinstance(nstlite.__version__, str)
    try:
        nstlite.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("unknown attributes must raise AttributeError")
