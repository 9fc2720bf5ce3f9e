"""The checkpoint file: one typed record, written in one place, validated in one place.

On disk a checkpoint is a dict of plain types and tensors, so `torch.load(weights_only=True)`
reads it; `Checkpoint` is that dict with its fields named and their types checked.
"""

from __future__ import annotations

import errno
import math
import pickle
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from mnist_cli.data import MODEL_LABELS
from mnist_cli.errors import CheckpointError, first_line
from mnist_cli.files import (
    MISSING,
    TORCH_FILE,
    Writer,
    atomic_write,
    describe_bytes,
    path_problem,
)
from mnist_cli.train.models import (
    Classifier,
    ModelSpecError,
    build_model,
    check_arguments,
    parameter_shapes,
)

FORMAT = "mnist_cli.checkpoint/1"


@dataclass
class EpochRecord:
    """One row of the training history, in plain types."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_second: float


@dataclass
class TrainState:
    """Where a run stands: what resume restores besides weights and optimiser."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps of the next epoch already done (an interrupted epoch)
    partial_loss: float = 0.0  # summed loss of those steps
    partial_seconds: float = 0.0  # seconds spent on those steps
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to rebuild, use and (for last.pt) resume a trained model."""

    architecture: str
    arguments: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    normalization: dict[str, float]  # mean and std of the pixels in [0, 1]
    class_labels: list[str]
    val_accuracy: float  # of these weights, on the validation split
    options: dict[str, Any]  # the TrainConfig, the device and the acceleration used
    state: TrainState
    mnist_cli_version: str = ""
    optimizer: dict[str, Any] | None = None  # last.pt only
    augment_rng: torch.Tensor | None = None  # last.pt only
    # last.pt only, when state_dict holds the weights' moving average: the raw weights it follows
    training_weights: dict[str, torch.Tensor] | None = None
    temperature: float = 1.0  # the logits' divisor fitted on the validation split (calibration)

    @property
    def resumable(self) -> bool:
        return self.optimizer is not None


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write beside `path`, then rename into place, so a crash leaves the old file."""
    atomic_write(path, checkpoint_writer(checkpoint))


def checkpoint_writer(checkpoint: Checkpoint) -> Writer:
    """What writes `checkpoint` into an open file, for `files.atomic_write_all`."""

    def write(out: BinaryIO) -> None:
        try:
            torch.save(_to_dict(checkpoint), out)
        except RuntimeError as error:  # torch.save reports a full disk as a RuntimeError
            raise OSError(errno.EIO, first_line(error)) from None

    return write


def _to_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    state = asdict(checkpoint.state)
    payload = {
        "format": FORMAT,
        **{f.name: getattr(checkpoint, f.name) for f in fields(checkpoint)},
    }
    del payload["state"]
    payload.update(state)
    for name in ("optimizer", "augment_rng", "training_weights"):
        if payload[name] is None:
            del payload[name]
    return payload


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read and validate a checkpoint without running pickled code; raise CheckpointError."""
    path = Path(path)
    problem = path_problem(path)
    if problem == MISSING:
        raise CheckpointError(
            f"no checkpoint at {path}", hint="train one with `mnist train`, or pass --model FILE"
        )
    if problem is not None:  # a folder, a FIFO, a device: never opened
        raise CheckpointError(f"{path}: {problem}, not an mnist checkpoint")
    with open(path, "rb") as handle:
        head = handle.read(64)
    kind = describe_bytes(head)
    if kind == TORCH_FILE and head.startswith(b"PK") and not _is_torch_zip(path):
        kind = "a zip archive"
    if kind != TORCH_FILE:
        raise CheckpointError(f"{path}: {kind or 'not a torch file'}, not an mnist checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused, it holds objects other than plain data and tensors",
            hint="only load checkpoints written by `mnist train`",
        ) from error
    except Exception as error:  # torch.load raises many types on a damaged file
        raise CheckpointError(
            f"{path}: damaged, torch cannot read it ({first_line(error)})"
        ) from error
    try:
        return checkpoint_from_dict(payload)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error.message}", hint=error.hint) from None


def _is_torch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return True  # a damaged torch file: let torch.load name the damage


class _Fields:
    """Typed reads from the loaded dict, each failure naming the field."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    def get(self, name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if name not in self.payload:
            if optional:
                return None
            raise CheckpointError(f"not an mnist checkpoint (no {name!r} field)")
        value = self.payload[name]
        fits = isinstance(value, (int, float) if kind is float else kind)
        if isinstance(value, bool) or not fits:
            raise CheckpointError(f"field {name!r} is {type(value).__name__}, not {_name(kind)}")
        return float(value) if kind is float else value

    def number(
        self,
        name: str,
        *,
        low: float,
        high: float = math.inf,
        optional_default: float | None = None,
    ) -> float:
        if optional_default is not None and name not in self.payload:
            return optional_default
        value = self.get(name, float)
        if not (math.isfinite(value) and low <= value <= high):
            expected = f"from {low:g} to {high:g}" if math.isfinite(high) else f">= {low:g}"
            raise CheckpointError(f"field {name!r} is {value}, expected a number {expected}")
        return value

    def accuracy(self, name: str, *, default: float) -> float:
        """A share of images in [0, 1]; `default` (-1 for "no epoch yet") when absent."""
        value = self.number(name, low=min(default, 0.0), high=1.0, optional_default=default)
        if -1.0 < value < 0.0:
            raise CheckpointError(f"field {name!r} is {value}, expected an accuracy in [0, 1]")
        return value

    def count(self, name: str, *, default: int | None = None) -> int:
        if default is not None and name not in self.payload:
            return default
        value = self.get(name, int)
        if value < 0:
            raise CheckpointError(f"field {name!r} is {value}, expected a count >= 0")
        return value


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def checkpoint_from_dict(payload: Any) -> Checkpoint:
    """Validate a loaded dict field by field; raise CheckpointError naming what is wrong."""
    if not isinstance(payload, dict):
        raise CheckpointError(f"not an mnist checkpoint (holds a {type(payload).__name__})")
    read = _Fields(payload)
    version = read.get("format", str)
    if version != FORMAT:
        raise CheckpointError(
            f"checkpoint format {version!r} is not {FORMAT!r}",
            hint="it was written by another version of mnist; retrain or use that version",
        )
    architecture, arguments = read.get("architecture", str), read.get("arguments", dict)
    labels = read.get("class_labels", list)
    if labels not in MODEL_LABELS:
        raise CheckpointError(
            f"its classes are {labels[:12]!r}; mnist works with the digits 0-9 (and 'none')"
        )
    state_dict = read.get("state_dict", dict)
    _check_weights(architecture, arguments, state_dict, len(labels))
    optimizer = read.get("optimizer", dict, optional=True)
    augment_rng = read.get("augment_rng", torch.Tensor, optional=True)
    training_weights = read.get("training_weights", dict, optional=True)
    if training_weights is not None:
        try:
            _check_weights(architecture, arguments, training_weights, len(labels))
        except CheckpointError as error:
            raise CheckpointError(f"training_{error.message}") from None
    return Checkpoint(
        architecture=architecture,
        arguments=arguments,
        state_dict=state_dict,
        normalization=_normalization(read.get("normalization", dict)),
        class_labels=labels,
        val_accuracy=read.accuracy("val_accuracy", default=0.0),
        options=_current_keys(read.get("options", dict, optional=True) or {}),
        state=_train_state(read),
        mnist_cli_version=read.get("mnist_cli_version", str, optional=True) or "",
        optimizer=optimizer,
        augment_rng=augment_rng,
        training_weights=training_weights,
        temperature=read.number("temperature", low=0.05, high=20.0, optional_default=1.0),
    )


def _normalization(value: dict[str, Any]) -> dict[str, float]:
    """The mean and std of pixels in [0, 1]: a mean in [0, 1], a std from 1e-3 to 1."""
    read = _Fields(value)
    try:
        return {
            "mean": read.number("mean", low=0.0, high=1.0),
            "std": read.number("std", low=1e-3, high=1.0),
        }
    except CheckpointError as error:
        raise CheckpointError(f"normalization: {error.message}") from None


def _check_weights(
    architecture: str, arguments: dict[str, Any], state_dict: dict[str, Any], classes: int
) -> None:
    """Arguments against the saved tensors' shapes (nothing built), then finite values."""
    try:
        check_arguments(architecture, arguments)
        expected = parameter_shapes(architecture, arguments)
    except ModelSpecError as error:
        raise CheckpointError(f"architecture {architecture!r}: {error}") from None
    if arguments.get("classes") != classes:
        raise CheckpointError(
            f"its head has {arguments.get('classes')} outputs but it declares {classes} classes"
        )
    for name, shape in expected.items():
        tensor = state_dict.get(name)
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"weights: {name} is missing")
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"weights: {name} has shape {tuple(tensor.shape)}, but the architecture's "
                f"arguments {arguments} need {shape}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"weights: {name} holds NaN or infinite values")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise CheckpointError(f"weights: {name} holds a negative variance")
    extra = sorted(set(state_dict) - set(expected))
    if extra:
        raise CheckpointError(f"weights: unexpected tensors {', '.join(extra[:5])}")


def _train_state(read: _Fields) -> TrainState:
    history = read.get("history", list, optional=True) or []
    try:
        rows = [_epoch_record(row) for row in history]
    except CheckpointError as error:
        raise CheckpointError(f"history: {error.message}") from None
    best_val_accuracy = read.accuracy("best_val_accuracy", default=-1.0)
    return TrainState(
        epoch=read.count("epoch", default=len(rows)),
        step=read.count("step", default=0),
        partial_loss=read.number("partial_loss", low=0.0, optional_default=0.0),
        partial_seconds=read.number("partial_seconds", low=0.0, optional_default=0.0),
        best_val_accuracy=best_val_accuracy,
        best_epoch=read.count("best_epoch", default=0),
        history=rows,
    )


def _epoch_record(row: Any) -> EpochRecord:
    if not isinstance(row, dict):
        raise CheckpointError(f"a row is a {type(row).__name__}, not a dict")
    read = _Fields(row)
    values = {f.name: read.number(f.name, low=0.0) for f in fields(EpochRecord)}  # all >= 0
    values["val_accuracy"] = read.accuracy("val_accuracy", default=0.0)
    values["epoch"] = read.count("epoch")
    return EpochRecord(**values)


def network_from_checkpoint(checkpoint: Checkpoint) -> nn.Module:
    """The network a validated checkpoint describes, with its weights, in eval mode."""
    network = build_model(checkpoint.architecture, checkpoint.arguments)
    network.load_state_dict(checkpoint.state_dict)  # shapes were checked when it was loaded
    return network.eval()


def classifier_from_checkpoint(checkpoint: Checkpoint) -> Classifier:
    """The checkpoint's network behind its own normalisation: takes pixels in [0, 1]."""
    norm = checkpoint.normalization
    network = network_from_checkpoint(checkpoint)
    return Classifier(network, norm["mean"], norm["std"], checkpoint.temperature).eval()


def _current_keys(options: dict[str, Any]) -> dict[str, Any]:
    """Training options under today's names: files saved before 0.1.0 call the network `model`,
    runs from before the "none" class trained on no negatives, and runs from before
    fine-tuning started from random weights on MNIST alone."""
    if "model" in options and "architecture" not in options:
        options = {("architecture" if k == "model" else k): v for k, v in options.items()}
    if options and "negatives" not in options:
        options = {**options, "negatives": 0.0}
    if options and "images" not in options:
        from mnist_cli.train.recipes import FINETUNING_FIELDS, TrainConfig

        unused = {name: getattr(TrainConfig, name) for name in FINETUNING_FIELDS}
        options = {**unused, **options}
    return options
