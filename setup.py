from setuptools import find_packages, setup

setup(
    name="nstlite",
    version="0.1.0",
    description=("Gatys, Ecker & Bethge (2015), A Neural Algorithm of Artistic Style, "
                 "on NumPy/CuPy with hand-written gradients"),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["nstlite", "nstlite.*", "weights_convert", "weights_convert.*"]),
    install_requires=["numpy>=1.22", "scipy>=1.8", "h5py>=3.0", "pillow>=9.0"],
    extras_require={
        # Pick the CuPy wheel that matches your CUDA (cupy-cuda11x / cupy-cuda12x / cupy-cuda13x).
        "gpu": ["cupy-cuda13x"],
        "test": ["pytest>=7"],
        "bench": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["nstlite=nstlite.cli:main"]},
)
