import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def read_version():
    """The version from nstlite/_version.py, read as text: importing the package here would
    need its dependencies before they are installed."""
    text = (HERE / "nstlite" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("nstlite/_version.py has no line __version__ = \"...\"")
    return match.group(1)


setup(
    name="nstlite",
    version=read_version(),
    description=("Gatys, Ecker & Bethge (2015), A Neural Algorithm of Artistic Style, "
                 "on NumPy/CuPy with hand-written gradients"),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["nstlite", "nstlite.*", "weights_convert", "weights_convert.*"]),
    install_requires=["numpy>=1.22", "scipy>=1.8", "h5py>=3.0", "pillow>=9.0"],
    extras_require={
        # Pick the CuPy wheel that matches your CUDA (cupy-cuda11x / cupy-cuda12x / cupy-cuda13x).
        "gpu": ["cupy-cuda13x"],
        "test": ["pytest>=7", "ruff>=0.4"],
        "bench": ["torch==2.13.0"],
        "distributed": ["distributed>=2024.1"],  # nstlite sweep / batch on Dask (nstlite.cluster)
    },
    entry_points={"console_scripts": ["nstlite=nstlite.cli:main"]},
)
