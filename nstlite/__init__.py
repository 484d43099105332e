"""nstlite: Gatys, Ecker & Bethge, *A Neural Algorithm of Artistic Style* (2015), from scratch
on NumPy (CPU) and CuPy (GPU) arrays, with every gradient written by hand.

Public API::

    net = nstlite.load_vgg19(path=None, pooling="avg", device="cpu", dtype="float32")
    x = net.preprocess(rgb); feats = net.forward(x, ["conv4_2"]); dx = net.backward({...})
    nstlite.losses.content_loss / gram / style_layer_loss / style_loss / total_loss / tv_loss
    objective = nstlite.build_objective(net, x_photo, [x_art], ["conv4_2"], {"conv1_1": 1.0})
    result = nstlite.stylize("photo.jpg", "art.jpg", size=512)
    results = nstlite.gradcheck()

The names above are loaded on first use (PEP 562), so ``import nstlite.layers`` or
``import nstlite.losses`` costs NumPy only: SciPy (the optimiser) and h5py (the weights file)
load when something needs them.
"""
import importlib as _importlib
import os as _os

from ._version import __version__  # noqa: F401  (the one version source; setup.py reads it too)

# OpenBLAS worker threads otherwise busy-wait after each GEMM and slow the NumPy work that
# follows. OpenBLAS reads this when NumPy first loads it, and `nstlite` / `python -m nstlite`
# import this package before NumPy, so it is set here; an explicit setting wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

# public name -> the module that defines it
_LAZY = {
    "NstliteError": "nstlite.errors",
    "gradcheck": "nstlite.gradient_check",
    "Objective": "nstlite.objective",
    "build_objective": "nstlite.objective",
    "VGG19": "nstlite.vgg",
    "load_vgg19": "nstlite.vgg",
    "stylize": "nstlite.style_transfer",
}
_SUBMODULES = ("losses", "layers", "backend", "objective", "vgg", "fast")

__all__ = sorted(_LAZY) + list(_SUBMODULES)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"nstlite.{name}")
    else:
        raise AttributeError(f"module 'nstlite' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
