"""Safe outputs: no half-written file under its final name, one writer per output folder."""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from mnist_cli.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


Writer = Callable[[BinaryIO], None]


def atomic_write(path: Path, write: Writer) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it into place."""
    atomic_write_all({path: write})


def atomic_write_all(files: Mapping[Path, Writer]) -> None:
    """Write every file beside its target first, then rename them all into place.

    If any write fails (a full disk, Ctrl-C), no target is touched: the set changes as one.
    Errors name the real file, never the temporary one.
    """
    written: list[tuple[str, Path]] = []
    try:
        for path, write in files.items():
            written.append((_write_beside(path, write), path))
        for tmp, path in written:
            try:
                os.replace(tmp, path)
            except OSError as error:
                raise _cannot_write(path, error) from None
    finally:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)


def _write_beside(path: Path, write: Writer) -> str:
    """A complete, synced temporary copy of `path`'s new content in its folder; its name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A short name: the longest name the folder takes must still have room for the suffix.
        prefix = f".{path.name[:40]}."
        import tempfile  # here, not on every start of `mnist predict`

        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".partial")
    except OSError as error:
        raise _cannot_write(path, error) from None
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _cannot_write(path, error) from None
        raise
    return tmp


def _cannot_write(path: Path, error: OSError) -> OutputError:
    return OutputError(
        f"{path}: cannot be written ({error.strerror or error}); the previous file is unchanged"
    )


def check_writable(path: Path, *, option: str) -> None:
    """Refuse, before any work, an output file that could not be written when the work is done.

    The file may not be a folder or a special file, and its folder (or the nearest one that
    exists, where it would be created) must take a new file: tried, not guessed from modes.
    """
    longest = os.pathconf(path.parent, "PC_NAME_MAX") if path.parent.is_dir() else 255
    if len(os.fsencode(path.name)) > longest:
        raise OutputError(f"{option} {path}: the file name is longer than {longest} bytes")
    problem = path_problem(path)
    if problem not in (None, MISSING):
        raise OutputError(f"{option} {path}: {problem}; cannot write a file there")
    folder = path.parent
    while not folder.exists():
        if folder.is_symlink() or folder == folder.parent:
            raise OutputError(f"{option} {path}: its folder {folder} cannot be created")
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{option} {path}: {folder} is not a folder")
    try:
        import tempfile

        fd, probe = tempfile.mkstemp(dir=folder, prefix=".mnist-probe.")
    except OSError as error:
        raise OutputError(
            f"{option} {path}: cannot write in {folder} ({error.strerror or error})"
        ) from None
    os.close(fd)
    os.unlink(probe)


MISSING = "no such file"


def path_problem(path: Path | str) -> str | None:
    """Why `path` is not a regular file to read, in words (None when it is one)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # or a file where a folder would be
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)}, which does not exist)"
        return MISSING
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "a device") + " (not a regular file)"


def real_target(path: Path) -> Path:
    """The file that writing `path` would replace: links and `..` resolved as the kernel will,
    with the folders that do not exist yet counted as the plain folders they will be made."""
    return Path(os.path.realpath(path))


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
    finally:  # tidying up never hides what went wrong in the block
        with suppress(OSError):
            lock.unlink(missing_ok=True)  # a lock file left behind is free: flock holds none
        os.close(fd)
        with suppress(OSError):
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
