"""Pictures of a run and of a test: training curves and the confusion matrix, with matplotlib.

matplotlib is imported only when a picture is drawn, with its file-only Agg backend (no screen).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_cli.files import atomic_write

if TYPE_CHECKING:
    from mnist_cli.checkpoints import EpochRecord


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure: Any, path: Path) -> None:
    """Render to memory first, so a failed render never leaves half a PNG under `path`."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    _pyplot().close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def save_history_plot(history: Sequence[EpochRecord], path: Path) -> Path:
    """Loss and accuracy against epochs, side by side."""
    pyplot = _pyplot()
    epochs = [row.epoch for row in history]
    figure, (losses, accuracy) = pyplot.subplots(1, 2, figsize=(9, 3.6))
    losses.plot(epochs, [row.train_loss for row in history], "o-", label="train")
    losses.plot(epochs, [row.val_loss for row in history], "o-", label="validation")
    losses.set(xlabel="epoch", ylabel="loss", title="Loss")
    losses.legend()
    accuracy.plot(epochs, [100 * row.val_accuracy for row in history], "o-", color="tab:green")
    accuracy.set(xlabel="epoch", ylabel="accuracy (%)", title="Validation accuracy")
    for axes in (losses, accuracy):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    _save(figure, path)
    return path


def save_confusion_plot(
    confusion: Sequence[Sequence[int]], labels: Sequence[str], path: Path, *, title: str
) -> Path:
    """The confusion matrix as a heat map, each cell labelled with its count."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6.4, 5.6))
    image = axes.imshow(confusion, cmap="Blues")
    largest = max((max(row) for row in confusion), default=0)
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            shade = "white" if count > largest / 2 else "black"
            axes.text(j, i, str(count), ha="center", va="center", color=shade, fontsize=8)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yticks(range(len(labels)), labels)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    _save(figure, path)
    return path
