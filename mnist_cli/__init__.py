"""mnist: handwritten digit recognition from the command line, usable as a Python library."""

__version__ = "0.1.0"
