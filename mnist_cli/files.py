"""Safe outputs: no half-written file under its final name, one writer per output folder."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mnist_cli.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_folder(out_dir: Path) -> Iterator[None]:
    """Hold an flock on `out_dir/.lock` while the block runs (the kernel frees it if we die).

    A folder this call created is removed again if the block leaves nothing in it.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out-dir {out_dir}: is a file, not a folder")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"--out-dir {out_dir}: cannot create the folder ({error.strerror})"
        ) from error
    lock = out_dir / ".lock"
    fd = _take_lock(lock, out_dir)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _take_lock(lock: Path, out_dir: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as error:
            raise OutputError(
                f"--out-dir {out_dir}: cannot write there ({error.strerror})"
            ) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"--out-dir {out_dir}: another `mnist train` (process {owner}) is writing there",
                hint="wait for it to finish, or choose another --out-dir",
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed the file between our open and flock: retry
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


TORCH_FILE, ONNX_FILE = "a torch file", "an ONNX model"
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"RIFF", "a RIFF file (WebP, WAV, ...)"),
    (b"\x1f\x8b", "a gzip file"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", TORCH_FILE),  # torch.save writes a zip archive
    (b"\x80", TORCH_FILE),  # a pickle: torch.save's legacy format
)


def describe_bytes(head: bytes) -> str | None:
    """Name the kind of file that starts with `head`, when its bytes say plainly what it is."""
    if not head:
        return "an empty file"
    if len(head) > 1 and head[0] == 0x08 and 1 <= head[1] <= 64:
        return ONNX_FILE  # protobuf field 1, ir_version: how every ONNX file starts
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    text = head.decode("utf-8", errors="ignore")  # the head may end inside a character
    plain = len(text) * 2 >= len(head) and all(c.isprintable() or c.isspace() for c in text)
    return "a text file" if plain else None
