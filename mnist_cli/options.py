"""The fixed choices a user picks from, as Enums: help lists them, Typer rejects others.

Imports nothing heavy, so that the CLI can declare its options without loading numpy or torch.
"""

from __future__ import annotations

from enum import Enum


class BackendName(str, Enum):
    """How a model file is run: chosen by the file's kind unless forced."""

    torch = "torch"
    onnxruntime = "onnxruntime"


class ExportFormat(str, Enum):
    """What `mnist export` writes."""

    onnx = "onnx"


class Quantization(str, Enum):
    """How `mnist export` may shrink the graph."""

    int8 = "int8"


class Architecture(str, Enum):
    """The networks `mnist train` can build."""

    cnn = "cnn"
    fc = "fc"
