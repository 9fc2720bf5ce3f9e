"""Measuring a model on labelled images: accuracy, loss, per-class scores, confusion, errors.

torch is imported only where a checkpoint is evaluated: an `.onnx` file needs onnxruntime alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_cli.data import CLASS_LABELS, NORMALIZATION, Split, load_split

if TYPE_CHECKING:
    import torch
    from torch import nn

_BATCH = 1000


def normalize(
    images: torch.Tensor, normalization: dict[str, float] = NORMALIZATION
) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float N x 1 x 28 x 28, scaled to [0, 1] then standardised."""
    scaled = images.unsqueeze(1).float().div_(255)
    return scaled.sub_(normalization["mean"]).div_(normalization["std"])


def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int = _BATCH
) -> torch.Tensor:
    """Logits of a normalised batch, computed in chunks in eval mode."""
    import torch

    model.eval()
    with torch.no_grad():
        chunks = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


def score(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (a fraction) of `model` on normalised images."""
    import torch

    logits = predict_logits(model, images)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


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
    images: int
    accuracy: float
    loss: float
    classes: list[ClassScore]
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    errors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(model_name: str, labels: np.ndarray, logits: np.ndarray, loss: float) -> Report:
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


def evaluate_checkpoint(
    model_path: Path | str, *, data_dir: Path | str = "datafiles", device: str = "auto"
) -> tuple[Report, Misclassified]:
    """Evaluate a checkpoint on the 10,000 test images (never used during training)."""
    import torch

    from mnist_cli.checkpoints import load_checkpoint, model_from_checkpoint
    from mnist_cli.devices import resolve_device

    torch_device = resolve_device(device)
    payload = load_checkpoint(model_path, map_location=torch_device)
    test = load_split(data_dir, "test")
    model = model_from_checkpoint(payload).to(torch_device)
    images = normalize(torch.from_numpy(test.images).to(torch_device), payload["normalization"])
    labels = torch.from_numpy(test.labels).to(torch_device)
    logits = predict_logits(model, images)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    report = build_report(str(model_path), test.labels, logits.cpu().numpy(), loss)
    return report, _misclassified(test, logits.argmax(1).cpu().numpy())


def evaluate_onnx(
    model_path: Path | str, *, data_dir: Path | str = "datafiles", device: str = "auto"
) -> tuple[Report, Misclassified]:
    """Evaluate an exported `.onnx` model through onnxruntime, exactly as a checkpoint."""
    from mnist_cli.prediction import OnnxBackend

    backend = OnnxBackend(model_path, device)
    test = load_split(data_dir, "test")
    logits = np.concatenate(
        [
            backend.logits(test.images[i : i + _BATCH, None].astype(np.float32) / 255)
            for i in range(0, len(test), _BATCH)
        ]
    )
    shifted = logits - logits.max(1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = float(-log_probabilities[np.arange(len(test)), test.labels].mean())
    report = build_report(str(model_path), test.labels, logits, loss)
    return report, _misclassified(test, logits.argmax(1))


def evaluate_model(
    model_path: Path | str, *, data_dir: Path | str = "datafiles", device: str = "auto"
) -> tuple[Report, Misclassified]:
    """Evaluate a `.pt` checkpoint through torch or a `.onnx` file through onnxruntime."""
    if Path(model_path).suffix.lower() == ".onnx":
        return evaluate_onnx(model_path, data_dir=data_dir, device=device)
    return evaluate_checkpoint(model_path, data_dir=data_dir, device=device)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
