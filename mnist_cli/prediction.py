"""Reading digits from image files, in batches, through any opened model (see `backends`)."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnist_cli.backends import Backend
from mnist_cli.preprocessing import ImageError, load_digit

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
    ".pbm",
    ".pnm",
}


@dataclass
class Prediction:
    """The digit read from one file, or why it could not be read."""

    path: str
    digit: int | None = None
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def confidence(self) -> float:
        return max(self.probabilities) if self.probabilities else 0.0

    def top(self, k: int) -> list[tuple[int, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(int(d), self.probabilities[d]) for d in order]


def expand_paths(paths: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """Yield (file, None) for each image that PATHS name, or (path, reason) for a bad one.

    A PATH is a file, a folder (searched recursively for image files) or a glob pattern.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES:
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                yield raw, "no image files in this folder"
            yield from ((str(p), None) for p in found)
        elif path.exists() or path.is_symlink():
            yield raw, None
        elif glob.has_magic(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                yield raw, "no file matches this pattern"
            yield from expand_paths(matches)
        else:
            yield raw, "no such file or folder"


def _batches(items: Iterable[tuple[str, str | None]], size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_paths(
    backend: Backend, paths: Sequence[str], *, raw: bool = False, batch_size: int = 256
) -> Iterator[Prediction]:
    """Yield one Prediction per image file (or per bad path), reading and running in batches."""
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
        probabilities = (
            backend.probabilities(np.stack([d for _, d in ready])[:, None]) if ready else []
        )
        results = iter(
            Prediction(path, int(p.argmax()), [float(x) for x in p])
            for (path, _), p in zip(ready, probabilities, strict=True)
        )
        for position in range(len(chunk)):
            yield failed[position] if position in failed else next(results)
