"""Reading digits from image files through torch or onnxruntime, in batches.

The onnxruntime backend imports neither torch nor anything that does.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnist_cli.errors import MnistError
from mnist_cli.preprocessing import ImageError, load_digit

BACKENDS = ("torch", "onnxruntime")
DEFAULT_MODELS = {"torch": Path("params/best.pt"), "onnxruntime": Path("exported/model.onnx")}
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


class ModelError(MnistError):
    """A model file cannot be used for prediction."""


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


class OnnxBackend:
    """An exported `.onnx` model in onnxruntime; CUDA when the installed build offers it."""

    name = "onnxruntime"

    def __init__(self, model_path: Path | str, device: str = "auto"):
        import onnxruntime

        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(
                f"no model at {model_path}",
                hint="export one with `mnist export --format onnx`, or pass --model",
            )
        available = onnxruntime.get_available_providers()
        wanted = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in available:
            wanted.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(model_path), providers=wanted)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"{model_path}: not a usable ONNX model ({error})") from error
        inputs = self.session.get_inputs()
        shape = inputs[0].shape if inputs else []
        if len(inputs) != 1 or list(shape[1:]) != [1, 28, 28]:
            raise ModelError(f"{model_path}: expects input {shape}, not N x 1 x 28 x 28 images")
        self.input_name = inputs[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if not {"logits", "probabilities"} <= set(outputs):
            raise ModelError(
                f"{model_path}: needs outputs 'logits' and 'probabilities', has {outputs}"
            )
        self.provider = self.session.get_providers()[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels = json.loads(meta["class_labels"]) if "class_labels" in meta else None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {self.input_name: images})[0]

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {self.input_name: images})[0]


class TorchBackend:
    """A `.pt` checkpoint in torch, on the chosen device."""

    name = "torch"

    def __init__(self, model_path: Path | str, device: str = "auto"):
        import torch

        from mnist_cli.checkpoints import classifier_from_checkpoint, load_checkpoint
        from mnist_cli.devices import resolve_device

        self._torch = torch
        self.device = resolve_device(device)
        payload = load_checkpoint(model_path, map_location="cpu")
        self.model = classifier_from_checkpoint(payload).to(self.device)
        self.provider = str(self.device)
        self.labels = payload["class_labels"]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            batch = self._torch.from_numpy(images).to(self.device)
            return self.model(batch)[1].float().cpu().numpy()


def load_backend(backend: str, model_path: Path | str | None = None, device: str = "auto"):
    """Open the model for `backend` ("torch" or "onnxruntime"); None picks its default file."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    path = Path(model_path) if model_path is not None else DEFAULT_MODELS[backend]
    if backend == "onnxruntime":
        return OnnxBackend(path, device)
    if path.suffix.lower() == ".onnx":
        raise ModelError(
            f"{path}: an ONNX model, not a torch checkpoint",
            hint="use --backend onnxruntime for .onnx files",
        )
    return TorchBackend(path, device)


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
    backend, paths: Sequence[str], *, raw: bool = False, batch_size: int = 256
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
