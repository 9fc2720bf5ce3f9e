"""Cut the small real MNIST subset the tests ship with (tests/data/mnist-subset/).

Usage: python scripts/cut_test_subset.py FOLDER_WITH_THE_FOUR_MNIST_GZ_FILES
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

from mnist_cli.data import SPLIT_FILES, parse_idx

SIZES = {"train": 4000, "test": 1000}  # ~0.8 MB gzipped, under the 1 MB budget
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "mnist-subset"


def idx_bytes(array: np.ndarray, labels: bool) -> bytes:
    header = (0x801 if labels else 0x803).to_bytes(4, "big")
    header += b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def main(source: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    for split, (images_name, labels_name) in SPLIT_FILES.items():
        images = parse_idx(
            gzip.decompress((source / f"{images_name}.gz").read_bytes()),
            name=images_name,
            labels=False,
        )
        labels = parse_idx(
            gzip.decompress((source / f"{labels_name}.gz").read_bytes()),
            name=labels_name,
            labels=True,
        )
        keep = np.sort(rng.choice(len(labels), SIZES[split], replace=False))
        for name, array, is_labels in (
            (images_name, images[keep], False),
            (labels_name, labels[keep], True),
        ):
            # mtime=0 keeps the gzip bytes identical from one run to the next
            packed = gzip.compress(idx_bytes(array, is_labels), compresslevel=9, mtime=0)
            (OUT / f"{name}.gz").write_bytes(packed)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
