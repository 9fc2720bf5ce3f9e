"""Self-describing checkpoints: saved atomically, loaded only with `weights_only=True`."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_cli.errors import CheckpointError
from mnist_cli.files import atomic_write
from mnist_cli.models import Classifier, build_model

FORMAT = "mnist_cli.checkpoint/1"
_REQUIRED = ("architecture", "arguments", "state_dict", "normalization", "class_labels")


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write `payload` beside `path`, then rename it into place, so a crash leaves the old file."""
    atomic_write(path, lambda out: torch.save({"format": FORMAT, **payload}, out))


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without running any pickled code; raise CheckpointError when unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}", hint="train one with `mnist train`, or pass --model FILE"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused, it holds objects other than plain data and tensors",
            hint="only load checkpoints written by `mnist train`",
        ) from error
    except Exception as error:  # torch.load raises many types on a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({error!r})") from error
    missing = (
        [key for key in _REQUIRED if key not in payload] if isinstance(payload, dict) else _REQUIRED
    )
    if missing:
        raise CheckpointError(f"{path}: not an mnist checkpoint (missing {', '.join(missing)})")
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """Rebuild the network a checkpoint describes, with its weights, in eval mode."""
    try:
        model = build_model(payload["architecture"], payload["arguments"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint does not match its architecture: {error}") from error
    return model.eval()


def classifier_from_checkpoint(payload: dict[str, Any]) -> Classifier:
    """The checkpoint's network behind its own normalisation: takes pixels in [0, 1]."""
    norm = payload["normalization"]
    return Classifier(model_from_checkpoint(payload), norm["mean"], norm["std"]).eval()
