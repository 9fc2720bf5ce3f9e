"""Labelled digits from files: a folder holding 0/ ... 9/ of images, or a CSV of `file,label`
rows, each image read as `mnist predict --single` reads it. `mnist test --images` scores a model
on them; `mnist train --images` fine-tunes one on them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnist_cli.data import CLASS_LABELS, Split
from mnist_cli.errors import DataError


@dataclass(frozen=True)
class LabelledImages:
    """Digits to test on: N x 28 x 28 pixels in [0, 1], their labels, and files that failed."""

    pixels: np.ndarray
    labels: np.ndarray
    skipped: list[tuple[str, str]]  # (file, why) for images that could not be read
    paths: list[str] = field(default_factory=list)  # each image's file; MNIST's are named

    @classmethod
    def from_split(cls, split: Split, name: str = "t10k") -> LabelledImages:
        paths = [f"{name}[{index}]" for index in range(len(split))]
        return cls(split.images.astype(np.float32) / 255, split.labels, [], paths)


def load_labelled_images(source: Path | str) -> LabelledImages:
    """The user's own digits, preprocessed as `predict` reads them: a folder holding 0/ ... 9/
    of image files, or a CSV file of `file,label` rows (paths relative to the CSV's folder)."""
    from mnist_cli.infer.preprocessing import ImageError, load_digit

    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        entries = csv_entries(source)
    elif source.is_dir():
        from mnist_cli.infer.imagefiles import class_folders

        entries = class_folders(source, CLASS_LABELS)
    else:
        from mnist_cli.files import path_problem

        what = path_problem(source) or "not a folder nor a .csv file"
        raise DataError(f"--images {source}: {what}", hint=_LAYOUT)
    pixels, labels, skipped, paths = [], [], [], []
    for path, label, problem in entries:
        try:
            if problem is not None:
                raise ImageError(f"{path}: {problem}")
            pixels.append(load_digit(path))
            labels.append(int(label))
            paths.append(path)
        except ImageError as error:
            skipped.append((path, error.message.removeprefix(f"{path}: ")))
    if not pixels:
        named = ", ".join(f"{path} ({why.removesuffix('; skipped')})" for path, why in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        found = f"; skipped: {named}{more}" if skipped else ""
        raise DataError(f"--images {source}: no readable labelled images{found}", hint=_LAYOUT)
    return LabelledImages(np.stack(pixels), np.array(labels, np.int64), skipped, paths)


def csv_entries(table: Path) -> Iterator[tuple[str, str, str | None]]:
    """(file, label, problem) for each row of a `file,label[,...]` CSV file; a first row whose
    label is not a digit and whose file does not exist is its header. A label that is not one
    digit 0-9 is a problem; rows are numbered as lines of the file."""
    import csv

    from mnist_cli.files import path_problem

    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"--images {table}: cannot be read as CSV ({error})") from None
    header = (
        bool(rows)
        and len(rows[0]) >= 2
        and rows[0][1].strip() not in CLASS_LABELS
        and not (table.parent / rows[0][0].strip()).is_file()  # a file: a bad row, not a header
    )
    for number, row in enumerate(rows[1:] if header else rows, start=2 if header else 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            yield f"{table}, row {number}", "", "not a `file,label` row; skipped"
            continue
        path, label = str(table.parent / row[0].strip()), row[1].strip()
        problem = path_problem(Path(path))
        if label not in CLASS_LABELS:
            problem = f"label {label!r} is not a digit 0-9"
        yield path, label, None if problem is None else f"{problem}; skipped"


_LAYOUT = (
    "put each digit's images in a subfolder named after it (FOLDER/0/, ..., FOLDER/9/), "
    "or list them in a CSV file of `file,label` rows"
)
