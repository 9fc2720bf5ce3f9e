"""Finding image files: named files, folders walked recursively, glob patterns, class folders.

Walks never follow symbolic links to folders, so a link loop ends; special files (FIFOs,
sockets, devices) come back with a reason instead of being opened.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from mnist_cli.files import path_problem

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


def _walk(folder: Path, *, all_files: bool = False) -> Iterator[tuple[str, str | None]]:
    """The image files below `folder`; special files among them come with a reason, and with
    `all_files` every other file too (hidden ones aside)."""
    for directory, folders, files in os.walk(folder, followlinks=False):
        folders.sort()
        if all_files:  # os.walk lists a link to a folder among the folders and never enters it
            for name in folders:
                if os.path.islink(os.path.join(directory, name)):
                    yield os.path.join(directory, name), _LINKED_FOLDER
        for name in sorted(files):
            path = os.path.join(directory, name)
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                problem = path_problem(path)
                yield path, None if problem is None else f"{problem}; skipped"
            elif all_files and not name.startswith("."):
                yield path, _NOT_AN_IMAGE


_NOT_AN_IMAGE = "not an image file name (.png, .jpg, ...); skipped"
_LINKED_FOLDER = "a symbolic link to a folder, not followed (a loop would never end); skipped"


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


def class_folders(folder: Path, labels: Sequence[str]) -> Iterator[tuple[str, str, str | None]]:
    """(file, label, problem) for each image in FOLDER/<label>/ (torchvision's ImageFolder).

    Nothing is dropped in silence: every other entry of FOLDER (a folder not named after a
    label, a loose file) and every file below a label's folder that is no image comes with a
    problem. Hidden names (".DS_Store", ".git") are passed over, as `ls` does.
    """
    for entry in sorted(os.scandir(folder), key=lambda item: item.name):
        if entry.name.startswith("."):
            continue
        if entry.name in labels and entry.is_dir():
            for path, problem in _walk(Path(entry.path), all_files=True):
                yield path, entry.name, problem
        elif entry.is_dir():
            yield (
                entry.path,
                "",
                f"a folder not named after a class ({labels[0]} to {labels[-1]}); skipped",
            )
        else:
            yield entry.path, "", "not inside a class folder; skipped"
