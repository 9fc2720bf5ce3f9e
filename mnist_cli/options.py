"""The fixed choices a user picks from, as Enums: help lists them, Typer rejects others.

Imports nothing heavy, so that the CLI can declare its options without loading numpy or torch.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

# The installed package's own files: the bundled models, sample images, the serve page.
PACKAGE_DIR = Path(__file__).resolve().parent

# Where things go when no option says otherwise, relative to the working folder.
DATA_DIR = Path("datafiles")  # (folder) MNIST, laid out as torchvision.datasets.MNIST reads it
RUN_DIR = Path("params")  # (folder) train's last.pt, best.pt, history and config
EXPORT_FILE = Path("exported/model.onnx")  # (file) what export writes
EXPORT_INT8_FILE = Path("exported/model-int8.onnx")  # (file) what export --quantize int8 writes


class BackendName(str, Enum):
    """How a model file is run: chosen by the file's kind unless forced."""

    torch = "torch"
    onnxruntime = "onnxruntime"


# The default cnn, trained and exported by scripts/make_pretrained.py, shipped in the package:
# what reading uses when no model of your own is there, and what fine-tuning may start from.
PRETRAINED_DIR = PACKAGE_DIR / "pretrained"
BUNDLED_MODELS = {
    BackendName.torch: PRETRAINED_DIR / "cnn.pt",
    BackendName.onnxruntime: PRETRAINED_DIR / "cnn.onnx",
}


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
