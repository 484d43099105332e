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
    license_files=["LICENSE"],
    python_requires=">=3.9",
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: Console",
        "Environment :: GPU :: NVIDIA CUDA",
        "Intended Audience :: Education",
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Multimedia :: Graphics",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
    keywords=["neural style transfer", "gatys", "vgg19", "numpy", "cupy", "l-bfgs"],
    # The paper the code implements; the source and issue addresses go here with the public repository.
    project_urls={"Paper": "https://arxiv.org/abs/1508.06576",
                  "Paper (CVPR 2016 version)": "https://openaccess.thecvf.com/content_cvpr_2016/html/"
                                               "Gatys_Image_Style_Transfer_CVPR_2016_paper.html"},
    packages=find_packages(include=["nstlite", "nstlite.*", "weights_convert", "weights_convert.*"]),
    install_requires=["numpy>=2.0", "scipy>=1.9", "h5py>=3.0", "pillow>=9.0"],
    extras_require={
        # CuPy is built per CUDA major version: pick the extra of the CUDA your driver runs
        # (`nvidia-smi` shows it). CuPy 14 dropped CUDA 11, so that extra stays on CuPy 13.
        "gpu-cuda11": ["cupy-cuda11x>=13,<14"],
        "gpu-cuda12": ["cupy-cuda12x>=13"],
        "gpu-cuda13": ["cupy-cuda13x>=14"],
        "gpu": ["cupy-cuda13x>=14"],  # the same as gpu-cuda13, the CUDA nstlite's GPU checks run on
        "test": ["pytest>=7", "ruff>=0.4", "distributed>=2024.1"],  # the sweep tests start a local Dask cluster
        "bench": ["torch==2.13.0"],
        "distributed": ["distributed>=2024.1"],  # nstlite sweep / batch on Dask (nstlite.cluster)
    },
    entry_points={"console_scripts": ["nstlite=nstlite.cli:main",
                                      "nstlite-weights=weights_convert.cli:main"]},
)
