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
    from mnist_cli.train.checkpoints import EpochRecord


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


def save_history_plot(
    history: Sequence[EpochRecord], path: Path, *, train_loss: str = "train"
) -> Path:
    """Loss and accuracy against whole epochs, side by side; accuracy never drawn past 100%.

    `train_loss` names what the training loss is (the recipe's smoothing and augmentation make
    it higher than the validation loss, which is plain cross-entropy on plain digits).
    """
    _save(history_figure(history, train_loss=train_loss), path)
    return path


def history_figure(history: Sequence[EpochRecord], *, train_loss: str = "train") -> Any:
    """The matplotlib figure that `save_history_plot` saves."""
    pyplot = _pyplot()
    epochs = [row.epoch for row in history]
    figure, (losses, accuracy) = pyplot.subplots(1, 2, figsize=(9, 3.6))
    losses.plot(epochs, [row.train_loss for row in history], "o-", label=train_loss)
    losses.plot(epochs, [row.val_loss for row in history], "o-", label="validation (plain)")
    losses.set(xlabel="epoch", ylabel="loss", title="Loss")
    losses.legend(fontsize=8)
    percent = [100 * row.val_accuracy for row in history]
    accuracy.plot(epochs, percent, "o-", color="tab:green")
    accuracy.set(xlabel="epoch", ylabel="accuracy (%)", title="Validation accuracy")
    low = min(percent, default=0.0)
    accuracy.set_ylim(max(0.0, low - max(1.0, (100 - low) * 0.1)), 100.0)
    from matplotlib.ticker import FixedLocator, MaxNLocator

    ticks = FixedLocator(epochs) if len(epochs) <= 12 else MaxNLocator(integer=True)
    for axes in (losses, accuracy):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(ticks)
        axes.set_xlim(min(epochs, default=1) - 0.5, max(epochs, default=1) + 0.5)
    figure.tight_layout()
    return figure


def save_confusion_plot(
    confusion: Sequence[Sequence[int]], labels: Sequence[str], path: Path, *, title: str
) -> Path:
    """The confusion matrix: right answers in blue, errors in red on their own scale, so that
    a handful of mistakes shows beside thousands of hits; each cell labelled with its count."""
    import numpy as np

    pyplot = _pyplot()
    counts = np.asarray(confusion)
    right = np.eye(len(counts), dtype=bool)
    figure, axes = pyplot.subplots(figsize=(6.8, 5.6))
    axes.imshow(np.ma.masked_where(~right, counts), cmap="Blues", vmin=0)
    wrong = np.ma.masked_where(right | (counts == 0), counts)
    errors = axes.imshow(wrong, cmap="Reds", vmin=0, vmax=max(1, int(wrong.max() or 1)))
    for (i, j), count in np.ndenumerate(counts):
        strong = count > (counts[right].max() / 2 if right[i, j] else (wrong.max() or 1) / 2)
        color = "white" if count and strong else ("black" if count else "0.75")
        axes.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yticks(range(len(labels)), labels)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(errors, ax=axes, label="misread images")
    figure.tight_layout()
    _save(figure, path)
    return path
