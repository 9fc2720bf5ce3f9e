"""The MNIST files on disk: names, official checksums, the IDX reader, the validation split."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_cli.errors import DataError, DataMissing, OptionError
from mnist_cli.files import MISSING, path_problem

CLASS_LABELS = [str(digit) for digit in range(10)]
NONE_LABEL = "none"  # the class of what is no digit (letters, symbols, scribbles, paper)
NONE_INDEX = len(CLASS_LABELS)  # its place among a model's outputs: after the ten digits
# The two class lists a model of this project has: the digits, with or without "none".
MODEL_LABELS = (CLASS_LABELS, [*CLASS_LABELS, NONE_LABEL])
IMAGE_SIZE = 28
NORMALIZATION = {"mean": 0.1307, "std": 0.3081}  # pixel mean and std of the training images
BLANK_PIXEL = -NORMALIZATION["mean"] / NORMALIZATION["std"]  # a blank pixel, normalised
INK_PIXEL = (1 - NORMALIZATION["mean"]) / NORMALIZATION["std"]  # a full-ink pixel, normalised

# Uncompressed file name -> MD5 of its official bytes (the .gz wrappers vary between mirrors).
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Byte sizes of the official files: a file of that size claims to be official, so its MD5 is
# checked on every load; a deliberate subset (`download --from --no-verify`) is not.
OFFICIAL_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_FIX = "run `mnist download` (or `mnist download --from FOLDER`) to replace it"


@dataclass(frozen=True)
class Split:
    """Images (N x 28 x 28 uint8) and labels (N, int64) of one part of the dataset."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def raw_dir(data_dir: Path | str) -> Path:
    """The folder holding the four uncompressed files, as `torchvision.datasets.MNIST` reads it."""
    return Path(data_dir) / "MNIST" / "raw"


def md5_of(data: bytes) -> str:
    import hashlib  # here, not on every start of `mnist predict`

    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _header(data: bytes, *, name: str, labels: bool) -> tuple[int, list[int]]:
    """Check an IDX header (magic, dimensions); return its size and the dimensions."""
    magic = _LABELS_MAGIC if labels else _IMAGES_MAGIC
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{name}: truncated ({len(data)} bytes, no complete header)", hint=_FIX)
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"{name}: not an IDX {'labels' if labels else 'images'} file "
            f"(magic number 0x{found:08x}, expected 0x{magic:08x})",
            hint=_FIX,
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if not labels and dims[1:] != [IMAGE_SIZE, IMAGE_SIZE]:
        raise DataError(f"{name}: images are {dims[1]}x{dims[2]}, expected 28x28", hint=_FIX)
    return header_size, dims


def read_idx_bytes(path: Path, *, kind: str) -> bytes:
    """The bytes of an IDX file (gzip or not), read no further than its header promises.

    `kind` is the official file name: its size bounds what a header may promise, so a small
    gzip bomb or a huge sparse file costs no more memory than the real file.
    """
    import gzip  # here, not on every start of `mnist predict`

    labels = "labels" in kind
    try:
        with open(path, "rb") as plain:
            gzipped = plain.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as source:
            head = source.read(4 + 4 * ((_LABELS_MAGIC if labels else _IMAGES_MAGIC) & 0xFF))
            header_size, dims = _header(head, name=str(path), labels=labels)
            promised = header_size + math.prod(dims)
            if promised > OFFICIAL_SIZES[kind]:
                raise DataError(
                    f"{path}: its header promises {promised:,} bytes, more than the official "
                    f"file's {OFFICIAL_SIZES[kind]:,}",
                    hint=_FIX,
                )
            return head + source.read(promised - header_size + 1)  # +1 finds trailing bytes
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot be read or unpacked ({error})", hint=_FIX) from error


def parse_idx(data: bytes, *, name: str, labels: bool) -> np.ndarray:
    """Decode the bytes of an IDX images or labels file, checking every field; raise DataError."""
    header_size, dims = _header(data, name=name, labels=labels)
    expected = header_size + math.prod(dims)  # Python ints: a hostile header cannot overflow
    if len(data) < expected:
        raise DataError(
            f"{name}: truncated ({len(data):,} bytes, header says {expected:,} for {dims[0]:,} "
            "items)",
            hint=_FIX,
        )
    if len(data) > expected:  # read no further than one byte past: its size is not known here
        raise DataError(
            f"{name}: longer than its header says (over the {expected:,} bytes it gives "
            f"{dims[0]:,} items)",
            hint=_FIX,
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)
    if labels:
        if array.size and array.max() > 9:
            raise DataError(f"{name}: label {int(array.max())} is not a digit 0-9", hint=_FIX)
        return array.astype(np.int64)
    return array.copy()


def load_split(data_dir: Path | str, split: str) -> Split:
    """Read and validate the images and labels of `split` ("train" or "test")."""
    folder = raw_dir(data_dir)
    images_name, labels_name = SPLIT_FILES[split]
    arrays = []
    for name, is_labels in ((images_name, False), (labels_name, True)):
        path = folder / name
        problem = path_problem(path)
        if problem == MISSING:
            raise DataMissing(
                f"MNIST {split} data not found: {path} is missing",
                hint="run `mnist download` (or `mnist download --from FOLDER` offline)",
            )
        if problem is not None:
            raise DataError(f"{path}: {problem}", hint=_FIX)
        data = read_idx_bytes(path, kind=name)
        if len(data) == OFFICIAL_SIZES[name] and md5_of(data) != OFFICIAL_MD5[name]:
            raise DataError(
                f"{path}: damaged (its MD5 does not match the official file)", hint=_FIX
            )
        arrays.append(parse_idx(data, name=str(path), labels=is_labels))
    images, labels = arrays
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {len(images)} {split} images but {len(labels)} labels", hint=_FIX
        )
    return Split(images, labels)


def split_train_validation(train: Split, validation_size: int, seed: int) -> tuple[Split, Split]:
    """Hold out `validation_size` training images, chosen by `seed`, for picking checkpoints."""
    if not 0 < validation_size < len(train):
        raise OptionError(
            f"--validation-size {validation_size}: must be between 1 and {len(train) - 1} "
            f"(there are {len(train):,} training images)"
        )
    order = np.random.default_rng(seed).permutation(len(train))
    held, kept = order[:validation_size], order[validation_size:]
    return (
        Split(train.images[kept], train.labels[kept]),
        Split(train.images[held], train.labels[held]),
    )
