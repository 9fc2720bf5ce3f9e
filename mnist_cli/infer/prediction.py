"""Reading digits from image files, in batches, through any opened model (see `backends`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mnist_cli.infer.backends import Backend
from mnist_cli.infer.imagefiles import expand_paths
from mnist_cli.infer.preprocessing import ImageError, load_digit
from mnist_cli.options import PACKAGE_DIR

# A drawing, a photo and a stranger's handwriting: what `mnist predict` reads when given nothing.
SAMPLES = PACKAGE_DIR / "samples"


@dataclass
class Prediction:
    """The digit read from one file, or why it could not be read."""

    path: str
    digit: int | None = None
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None
    image: np.ndarray | None = None  # the 28x28 digit the model saw, with keep_digits=True

    @property
    def confidence(self) -> float:
        return max(self.probabilities) if self.probabilities else 0.0

    def top(self, k: int) -> list[tuple[int, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(int(d), self.probabilities[d]) for d in order]


def _batches(items: Iterable[tuple[str, str | None]], size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read(model: Backend, digits: Sequence[np.ndarray], names: Sequence[str]) -> list[Prediction]:
    """The Prediction for each preprocessed 28x28 digit, run as one batch; each keeps its digit."""
    if not digits:
        return []
    probabilities = model.probabilities(np.stack(digits)[:, None])
    return [
        Prediction(name, int(p.argmax()), [float(x) for x in p], image=digit)
        for name, digit, p in zip(names, digits, probabilities, strict=True)
    ]


def predict_paths(
    model: Backend,
    paths: Sequence[str],
    *,
    raw: bool = False,
    batch_size: int = 256,
    keep_digits: bool = False,
) -> Iterator[Prediction]:
    """Yield one Prediction per image file (or per bad path), reading and running in batches.

    `keep_digits=True` keeps each preprocessed 28x28 digit on its Prediction (`image`).
    """
    for chunk in _batches(expand_paths(paths), batch_size):
        ready: list[tuple[str, np.ndarray]] = []
        failed: dict[int, Prediction] = {}
        for position, (path, problem) in enumerate(chunk):
            if problem is not None:
                failed[position] = Prediction(path, error=problem)
                continue
            try:
                ready.append((path, load_digit(path, raw=raw)))
            except (ImageError, OSError) as error:
                message = getattr(error, "message", None) or f"{path}: {error}"
                failed[position] = Prediction(path, error=message.removeprefix(f"{path}: "))
        results = iter(read(model, [d for _, d in ready], [path for path, _ in ready]))
        for position in range(len(chunk)):
            if position in failed:
                yield failed[position]
                continue
            result = next(results)
            result.image = result.image if keep_digits else None
            yield result
