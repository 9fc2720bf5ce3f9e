"""Measuring a model on labelled images: accuracy, loss, per-class scores, confusion, errors.

One function evaluates any backend; torch is imported only if the model file needs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_cli.backends import Backend, BackendName, log_softmax, open_model
from mnist_cli.data import CLASS_LABELS, Split, load_split
from mnist_cli.errors import DataError
from mnist_cli.files import atomic_write


@dataclass
class ClassScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Report:
    """The test report; `to_dict` gives the JSON that `mnist test --json` prints."""

    model: str
    backend: str
    provider: str
    images: int
    accuracy: float
    loss: float
    classes: list[ClassScore]
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    errors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(
    model_name: str,
    labels: np.ndarray,
    logits: np.ndarray,
    loss: float,
    *,
    backend: str = "",
    provider: str = "",
) -> Report:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix from logits."""
    predicted = logits.argmax(1)
    classes = len(CLASS_LABELS)
    confusion = np.bincount(labels * classes + predicted, minlength=classes * classes)
    confusion = confusion.reshape(classes, classes)
    scores = []
    for k, label in enumerate(CLASS_LABELS):
        hits, predicted_k, actual_k = confusion[k, k], confusion[:, k].sum(), confusion[k].sum()
        precision = hits / predicted_k if predicted_k else 0.0
        recall = hits / actual_k if actual_k else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(ClassScore(label, float(precision), float(recall), float(f1), int(actual_k)))
    return Report(
        model=model_name,
        backend=backend,
        provider=provider,
        images=len(labels),
        accuracy=float((predicted == labels).mean()) if len(labels) else 0.0,
        loss=loss,
        classes=scores,
        confusion=confusion.tolist(),
        errors=int((predicted != labels).sum()),
    )


@dataclass
class Misclassified:
    """The test images a model got wrong, for the error grid."""

    images: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray


def _misclassified(test: Split, predicted: np.ndarray) -> Misclassified:
    wrong = predicted != test.labels
    return Misclassified(test.images[wrong], test.labels[wrong], predicted[wrong])


def evaluate(backend: Backend, test: Split) -> tuple[Report, Misclassified]:
    """Score an opened model on labelled images: the report and the digits it got wrong."""
    if len(test) == 0:
        raise DataError("the test set holds no images", hint="run `mnist download`")
    logits = backend.logits(test.images[:, None].astype(np.float32) / 255)
    loss = float(-log_softmax(logits)[np.arange(len(test)), test.labels].mean())
    report = build_report(
        backend.path,
        test.labels,
        logits,
        loss,
        backend=backend.name.value,
        provider=backend.provider,
    )
    return report, _misclassified(test, logits.argmax(1))


def evaluate_model(
    model_path: Path | str | None = None,
    *,
    data_dir: Path | str = "datafiles",
    device: str = "auto",
    backend: BackendName | str | None = None,
) -> tuple[Report, Misclassified]:
    """Open a `.pt` or `.onnx` file (checked before any data is read) and score it on MNIST test."""
    engine = open_model(model_path, backend=backend, device=device)
    return evaluate(engine, load_split(data_dir, "test"))


def check_image_path(path: Path, *, option: str) -> None:
    """Refuse, before any work, an output picture path that cannot be a PNG file."""
    from mnist_cli.errors import OptionError

    if path.is_dir():
        raise OptionError(f"{option} {path}: is a folder; give a file name such as {path}/x.png")
    if path.suffix.lower() != ".png":
        raise OptionError(f"{option} {path}: the picture is a PNG; give a name ending in .png")


def save_error_grid(errors: Misclassified, path: Path | str, *, columns: int = 16) -> Path:
    """Save the misclassified digits as one PNG grid, each captioned "true>predicted"."""
    from PIL import Image, ImageDraw

    path = Path(path)
    cell, caption = 28 * 2, 12
    count = len(errors.labels)
    rows = max(1, -(-count // columns))
    grid = Image.new("L", (columns * cell, rows * (cell + caption)), color=0)
    draw = ImageDraw.Draw(grid)
    for i in range(count):
        x, y = (i % columns) * cell, (i // columns) * (cell + caption)
        digit = Image.fromarray(errors.images[i]).resize((cell, cell), Image.NEAREST)
        grid.paste(digit, (x, y))
        draw.text((x + 2, y + cell), f"{errors.labels[i]}>{errors.predicted[i]}", fill=255)
    atomic_write(path, lambda handle: grid.save(handle, format="PNG"))
    return path
