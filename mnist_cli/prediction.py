"""Reading digits from image files, in batches, through any opened model (see `backends`)."""

from __future__ import annotations

import fnmatch
import glob
import os
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

    A PATH is a file, a folder (searched recursively for image files) or a glob pattern
    (`**` for any depth). Walks never follow symbolic links to folders, so a link loop ends.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES:
            found = sorted(_walk(path))
            if not found:
                yield raw, "no image files in this folder"
            yield from found
        elif path.exists() or path.is_symlink():
            yield raw, None
        elif glob.has_magic(raw):
            matches = sorted(_glob(raw))
            if not matches:
                yield raw, "no file matches this pattern"
            found: dict[str, str | None] = {}  # a folder and the files in it may both match
            for match, problem in expand_paths(matches):
                found.setdefault(match, problem)
            yield from found.items()
        else:
            yield raw, "no such file or folder"


_SPECIAL = "not a regular file (a FIFO, socket or device); skipped"


def _walk(folder: Path) -> Iterator[tuple[str, str | None]]:
    """The image files below `folder`; special files among them come with a reason."""
    for directory, _, files in os.walk(folder, followlinks=False):
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                path = os.path.join(directory, name)
                yield path, None if os.path.isfile(path) else _SPECIAL


def _glob(pattern: str) -> Iterator[str]:
    """Files and folders matching `pattern`, found without following symlinked folders."""
    parts = pattern.split(os.sep)
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root, rest = (
        os.sep.join(parts[:fixed]) or ("/" if pattern.startswith("/") else ""),
        parts[fixed:],
    )
    deep = "**" in rest
    for directory, folders, files in os.walk(root or ".", followlinks=False):
        relative = os.path.relpath(directory, root or ".")
        inner = [] if relative == "." else relative.split(os.sep)
        linked = {name for name in folders if os.path.islink(os.path.join(directory, name))}
        for name in folders + files:
            if name not in linked and _matches([*inner, name], rest):
                yield os.path.join(root, *inner, name)
        if not deep and len(inner) + 1 >= len(rest):
            folders.clear()  # no deeper part of the pattern can match


def _matches(parts: list[str], pattern: list[str]) -> bool:
    """Glob matching by path segment: `*` stays in one segment, `**` spans any number."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(
            _matches(parts[skip:], pattern[1:])
            for skip in range(len(parts) + 1)
            if not any(part.startswith(".") for part in parts[:skip])
        )
    if not parts or (parts[0].startswith(".") and not pattern[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _batches(items: Iterable[tuple[str, str | None]], size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prediction(path: str, probabilities: np.ndarray) -> Prediction:
    if not np.isfinite(probabilities).all():
        return Prediction(path, error="the model gave NaN or infinite scores for this image")
    return Prediction(path, int(probabilities.argmax()), [float(p) for p in probabilities])


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
            _prediction(path, p) for (path, _), p in zip(ready, probabilities, strict=True)
        )
        for position in range(len(chunk)):
            yield failed[position] if position in failed else next(results)
