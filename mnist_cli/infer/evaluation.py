"""Measuring a model on labelled images: accuracy, loss, per-class scores, confusion, errors.

One function evaluates any opened model; torch is imported only if the model file needs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_cli.data import CLASS_LABELS, load_split
from mnist_cli.errors import DataError
from mnist_cli.files import atomic_write, check_writable
from mnist_cli.infer.backends import (
    Backend,
    BackendName,
    answers,
    log_softmax,
    open_model,
    softmax,
)
from mnist_cli.labelled import LabelledImages, load_labelled_images
from mnist_cli.options import DATA_DIR


@dataclass
class ClassScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Mistake:
    """One misread image: where it is, its label, the digit read and how sure the model was."""

    path: str
    label: int
    digit: int | None  # None: refused as no digit
    confidence: float  # of the digit it would have been read as


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
    ece: float  # expected calibration error of the top probability (CALIBRATION_BINS bins)
    # At the default refusal (a "none" answer, for models that have the class): the share of
    # images answered, and the accuracy on those.
    coverage: float = 1.0
    answered_accuracy: float = 0.0
    mistakes: list[Mistake] = field(default_factory=list)  # each misread image, in file order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable files (--images)

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
    skipped: list[tuple[str, str]] | None = None,
) -> Report:
    """Accuracy, per-class precision/recall/F1, calibration and the confusion matrix.

    `logits` may have an 11th column, "none": the scores then count the digit each image would
    be read as if it had to be one, and `coverage` says how many were not refused.
    """
    probabilities = softmax(logits)
    predicted, _, refused = answers(probabilities)
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
        ece=calibration_error(probabilities[:, :classes], labels) if len(labels) else 0.0,
        skipped=list(skipped or []),
        coverage=float(1 - refused.mean()) if len(labels) else 0.0,
        answered_accuracy=float((predicted == labels)[~refused].mean())
        if (~refused).any()
        else 0.0,
    )


CALIBRATION_BINS = 15  # equal-width bins of the top probability, as the calibration literature


def calibration_error(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Expected calibration error: the gap between confidence and accuracy in each bin of the
    top probability, weighted by the bin's share of the images. 0 when "90% sure" is right 90%
    of the time."""
    confidence = probabilities.max(1).astype(np.float64)
    right = (probabilities.argmax(1) == labels).astype(np.float64)
    # Bins (0, 1/15], (1/15, 2/15], ... (14/15, 1]; a probability of 0 counts in the first.
    index = np.clip(np.ceil(confidence * CALIBRATION_BINS).astype(int) - 1, 0, None)
    gaps = np.bincount(index, weights=right) - np.bincount(index, weights=confidence)
    return float(np.abs(gaps).sum() / len(labels))


@dataclass
class Misclassified:
    """The test images a model got wrong, for the error grid."""

    images: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray  # the model's probability for its wrong answer
    names: list[str] = field(default_factory=list)  # each one's file name, when from files


def evaluate(model: Backend, data: LabelledImages) -> tuple[Report, Misclassified]:
    """Score an opened model on labelled images: the report and the digits it got wrong."""
    if len(data.labels) == 0:
        raise DataError("the test set holds no images", hint="run `mnist download`")
    logits = model.logits(data.pixels[:, None].astype(np.float32))
    # + 0.0: a loss of exactly zero prints as 0, not -0
    loss = float(-log_softmax(logits)[np.arange(len(data.labels)), data.labels].mean()) + 0.0
    report = build_report(
        model.path,
        data.labels,
        logits,
        loss,
        backend=model.name.value,
        provider=model.provider,
        skipped=data.skipped,
    )
    predicted, confidence, refused = answers(softmax(logits))
    wrong = predicted != data.labels
    shown = (data.pixels[wrong] * 255).round().astype(np.uint8)
    names = [data.paths[i] for i in np.flatnonzero(wrong)] if data.paths else []
    report.mistakes = [
        Mistake(name, int(label), None if no else int(digit), float(sure))
        for name, label, digit, sure, no in zip(
            names,
            data.labels[wrong],
            predicted[wrong],
            confidence[wrong],
            refused[wrong],
            strict=False,
        )
    ]
    misread = Misclassified(shown, data.labels[wrong], predicted[wrong], confidence[wrong], names)
    return report, misread


def evaluate_model(
    model_path: Path | str | None = None,
    *,
    data_dir: Path | str = DATA_DIR,
    device: str = "auto",
    backend: BackendName | str | None = None,
    images_dir: Path | str | None = None,
) -> tuple[Report, Misclassified]:
    """Open a `.pt` or `.onnx` file (checked before any data is read) and score it on the MNIST
    test set, or on the user's own digits in `images_dir` (FOLDER/0/ ... FOLDER/9/)."""
    model = open_model(model_path, backend=backend, device=device)
    if images_dir is not None:
        return evaluate(model, load_labelled_images(images_dir))
    return evaluate(model, LabelledImages.from_split(load_split(data_dir, "test")))


def save_confusion_plot(report: Report, path: Path) -> Path:
    from mnist_cli.train.plots import save_confusion_plot as draw

    title = f"{Path(report.model).name}: accuracy {report.accuracy:.2%} on {report.images}"
    return draw(report.confusion, [c.label for c in report.classes], path, title=title)


def check_image_path(path: Path, *, option: str) -> None:
    """Refuse, before any work, an output picture path that cannot be a PNG file or cannot be
    written."""
    from mnist_cli.errors import OptionError

    if path.is_dir():
        raise OptionError(f"{option} {path}: is a folder; give a file name such as {path}/x.png")
    if path.suffix.lower() != ".png":
        raise OptionError(f"{option} {path}: the picture is a PNG; give a name ending in .png")
    check_writable(path, option=option)


def save_error_grid(errors: Misclassified, path: Path | str, *, columns: int = 12) -> Path:
    """Save the misclassified digits as one PNG grid, each captioned "true > predicted", the
    model's confidence in its wrong answer and its file's name, in a font large enough to read."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    cell, caption = 28 * 3, 51 if errors.names else 34
    count = len(errors.labels)
    rows = max(1, -(-count // columns))
    grid = Image.new("RGB", (columns * cell, rows * (cell + caption)), color="white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=14)
    for i in range(count):
        x, y = (i % columns) * cell, (i // columns) * (cell + caption)
        digit = Image.fromarray(255 - errors.images[i]).resize((cell, cell), Image.NEAREST)
        grid.paste(digit.convert("RGB"), (x, y))
        label = f"{errors.labels[i]} > {errors.predicted[i]}"
        draw.text((x + 4, y + cell + 1), label, fill=(180, 0, 0), font=font)
        draw.text((x + 4, y + cell + 17), f"{errors.confidence[i]:.0%}", fill="black", font=font)
        if errors.names:  # which file it is, as much of its name as fits
            name = Path(errors.names[i]).name
            name = name if len(name) <= 11 else name[:10] + "…"
            draw.text((x + 4, y + cell + 33), name, fill=(60, 60, 60), font=font)
    atomic_write(path, lambda handle: grid.save(handle, format="PNG"))
    return path
