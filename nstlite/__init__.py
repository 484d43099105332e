"""nstlite: Gatys, Ecker & Bethge, *A Neural Algorithm of Artistic Style* (2015), from scratch
on NumPy (CPU) and CuPy (GPU) arrays, with every gradient written by hand.

Public API::

    net = nstlite.load_vgg19(path=None, pooling="avg", device="cpu", dtype="float32")
    x = net.preprocess(rgb); feats = net.forward(x, ["conv4_2"]); dx = net.backward({...})
    nstlite.losses.content_loss / gram / style_layer_loss / style_loss / total_loss / tv_loss
    results = nstlite.gradcheck()
"""
import os as _os

__version__ = "0.1.0"

# OpenBLAS worker threads otherwise busy-wait after each GEMM and slow the NumPy work that
# follows. OpenBLAS reads this when NumPy first loads it, and `nstlite` / `python -m nstlite`
# import this package (and NumPy) before cli.main runs, so it is set here; an explicit setting
# or an earlier NumPy import wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

from . import losses  # noqa: E402,F401
from .errors import NstliteError  # noqa: E402,F401
from .gradient_check import gradcheck  # noqa: E402,F401
from .objective import Objective  # noqa: E402,F401
from .vgg import VGG19, load_vgg19  # noqa: E402,F401
from .style_transfer import stylize  # noqa
