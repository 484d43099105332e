"""The one place nstlite's version is written (setup.py reads this file as text)."""

__version__ = "0.1.0"
