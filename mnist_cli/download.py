"""Getting the four MNIST files: from torchvision's mirrors, or imported from a local folder."""

from __future__ import annotations

import gzip
import json
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from mnist_cli.data import OFFICIAL_MD5, OFFICIAL_SIZES, md5_of, parse_idx, raw_dir, read_idx_bytes
from mnist_cli.errors import DownloadError
from mnist_cli.files import MISSING, atomic_write, path_problem

# (file name, bytes done, bytes in total or None when the server does not say)
ProgressCallback = Callable[[str, int, "int | None"], None]

_CHUNK = 1 << 16
_TIMEOUT_S = 30


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file: "present" (already there), "downloaded", "imported", or
    "kept" (the official file there was not replaced by a non-official one)."""

    name: str
    path: Path
    status: str
    source: str


# torchvision's MNIST mirrors and (gzip name, gzip MD5) pairs (torchvision.datasets.MNIST),
# written out so that the base install, which has no torchvision, downloads the same files.
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
RESOURCES = [
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
]
_VERIFIED = ".verified.json"  # size and mtime of files whose MD5 was checked: no second hashing


def _write(data: bytes, out: BinaryIO) -> None:
    out.write(data)


def _is_official(path: Path, name: str) -> bool:
    """Whether `path` holds the official file: its size, then its MD5 unless a check of these
    very bytes (same size and modification time) is on record beside it."""
    if not _same_size(path, OFFICIAL_SIZES[name]):
        return False
    stamp = [path.stat().st_size, path.stat().st_mtime_ns]
    record = path.parent / _VERIFIED
    try:
        verified = json.loads(record.read_text())
    except (OSError, ValueError):
        verified = {}
    if isinstance(verified, dict) and verified.get(name) == stamp:
        return True
    if md5_of(path.read_bytes()) != OFFICIAL_MD5[name]:
        return False
    verified = verified if isinstance(verified, dict) else {}
    with suppress(OSError):  # a cache: a read-only folder only costs the hashing next time
        text = json.dumps({**verified, name: stamp}).encode()
        atomic_write(record, lambda handle: handle.write(text))
    return True


def _same_size(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size  # is_file: no FIFO or device


def _same_bytes(path: Path, data: bytes) -> bool:
    return _same_size(path, len(data)) and path.read_bytes() == data


def _fetch(url: str, name: str, on_progress: ProgressCallback | None) -> bytes:
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        chunks, done = [], 0
        while chunk := response.read(_CHUNK):
            chunks.append(chunk)
            done += len(chunk)
            if on_progress:
                on_progress(name, done, total)
    return b"".join(chunks)


def download_mnist(
    data_dir: Path | str,
    *,
    mirrors: Sequence[str] | None = None,
    resources: Sequence[tuple[str, str]] | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[FileOutcome]:
    """Download, check and unpack the four files into `raw_dir(data_dir)`; skip valid ones."""
    mirrors = list(mirrors if mirrors is not None else MIRRORS)
    resources = list(resources if resources is not None else RESOURCES)
    folder = raw_dir(data_dir)
    outcomes = []
    for gz_name, gz_md5 in resources:
        name = gz_name.removesuffix(".gz")
        target = folder / name
        if _is_official(target, name):
            outcomes.append(FileOutcome(name, target, "present", str(target)))
            continue
        failures = []
        for mirror in mirrors:
            url = f"{mirror}{gz_name}"
            try:
                packed = _fetch(url, name, on_progress)
                if md5_of(packed) != gz_md5:
                    raise ValueError(f"MD5 {md5_of(packed)} does not match {gz_md5}")
                data = gzip.decompress(packed)
                if md5_of(data) != OFFICIAL_MD5[name]:
                    raise ValueError("unpacked bytes do not match the official MD5")
            except (OSError, ValueError, EOFError, zlib.error) as error:
                failures.append(f"{url}: {error}")
                continue
            atomic_write(target, partial(_write, data))
            outcomes.append(FileOutcome(name, target, "downloaded", url))
            break
        else:
            tried = "; ".join(f"tried {failure}" for failure in failures) or "no mirror given"
            raise DownloadError(
                f"could not download {gz_name} ({tried})",
                hint="if you have the files, import them with `mnist download --from FOLDER`",
            )
    return outcomes


def _find_source(folder: Path, name: str) -> Path:
    stem, kind = name.rsplit("-", 1)  # "train-images", "idx3-ubyte"
    candidates = [f"{name}", f"{name}.gz", f"{stem}.{kind}", f"{stem}.{kind}.gz"]
    for candidate in candidates:
        problem = path_problem(folder / candidate)
        if problem is None:
            return folder / candidate
        if problem != MISSING:
            raise DownloadError(f"{folder / candidate}: {problem}")
    raise DownloadError(
        f"{folder}: no {name} file (looked for {', '.join(candidates)})",
        hint="point --from at the folder that holds the four MNIST files",
    )


def import_mnist(
    data_dir: Path | str, source: Path | str, *, verify_md5: bool = True
) -> list[FileOutcome]:
    """Copy the four files from a local folder (gzip or not), validating each before writing."""
    source = Path(source)
    if not source.is_dir():
        raise DownloadError(f"{source}: not a folder", hint="--from takes a folder")
    folder = raw_dir(data_dir)
    prepared = []
    for name, official in OFFICIAL_MD5.items():
        path = _find_source(source, name)
        data = read_idx_bytes(path, kind=name)  # bounded: a gzip bomb is refused, not inflated
        if verify_md5 and md5_of(data) != official:
            raise DownloadError(
                f"{path}: not the official MNIST file (MD5 {md5_of(data)}, expected {official})",
                hint="use the original files, or --no-verify for a deliberate subset",
            )
        parse_idx(data, name=str(path), labels="labels" in name)
        prepared.append((name, path, data))
    outcomes = []
    for name, path, data in prepared:
        target = folder / name
        if _is_official(target, name) and md5_of(data) != OFFICIAL_MD5[name]:
            outcomes.append(FileOutcome(name, target, "kept", str(path)))  # never downgraded
        elif _same_bytes(target, data):
            outcomes.append(FileOutcome(name, target, "present", str(path)))
        else:
            atomic_write(target, partial(_write, data))
            outcomes.append(FileOutcome(name, target, "imported", str(path)))
    return outcomes
