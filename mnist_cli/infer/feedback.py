"""Corrections from the serve page: an image a user says was misread, saved as an 8-bit gray
PNG (upright, as `mnist predict` reads it) under the digit it is (`serve --collect DIR`), for
`mnist test --images DIR` and fine-tuning. With several --workers the cap may be passed by
up to one image for each other worker: each process counts and writes on its own."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from mnist_cli.data import CLASS_LABELS
from mnist_cli.files import atomic_write
from mnist_cli.infer.httpguard import RequestError
from mnist_cli.infer.preprocessing import PixelBudget, gray_from_bytes

MOST = 2_000  # images one collection holds unless --collect-max says otherwise


class Corrections:
    """A folder of corrected digits, DIR/0/ ... DIR/9/, that holds at most `most` images."""

    def __init__(self, folder: Path | str, most: int = MOST) -> None:
        self.folder, self.most = Path(folder), most
        self._lock = threading.Lock()  # one count-and-write at a time in this process

    def count(self) -> int:
        return sum(1 for label in CLASS_LABELS for _ in (self.folder / label).glob("*.png"))

    def save(self, data: bytes, label: str, budget: PixelBudget) -> str:
        """Save the image as DIR/<label>/<time>-<hash>.png and return that name (relative to
        DIR); RequestError for a label that is not one digit, a full collection or a disk
        that refuses, ImageError for bytes that are no image."""
        if label not in CLASS_LABELS:
            raise RequestError(400, f"label {label[:20]!r} is not one digit 0-9")
        image = gray_from_bytes(data, name="file", budget=budget)
        digest = hashlib.sha256(data).hexdigest()[:12]
        name = f"{label}/{time.strftime('%Y%m%d-%H%M%S')}-{digest}.png"
        with self._lock:
            held = self.count()
            if held >= self.most:
                raise RequestError(
                    507, f"the collection holds {held} images, the most it may (--collect-max)"
                )
            target = self.folder / name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, lambda handle: image.save(handle, format="PNG"))
            except OSError as error:
                raise RequestError(507, f"cannot be saved ({error.strerror or error})") from None
        return name
