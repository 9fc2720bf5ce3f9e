"""Choosing the device from a user's `--device` value; torch is imported only to resolve it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mnist_cli.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
_PATTERN = re.compile(r"auto|cpu|mps|cuda(?::(\d+))?")


def check_device_name(name: str) -> str:
    """The normalised name, or DeviceError (exit 2) when it is not one of DEVICE_CHOICES."""
    normal = name.strip().lower()
    if not _PATTERN.fullmatch(normal):
        raise DeviceError(f"--device {name!r} is not one of {DEVICE_CHOICES}")
    return normal


def resolve_device(name: str = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:N" or "mps" into a usable device, or raise DeviceError."""
    import torch

    name = check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                "--device mps: Apple's MPS backend is not available here",
                hint="use --device cpu or --device auto",
            )
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name}: CUDA is not available on this machine",
            hint="use --device cpu or --device auto",
        )
    index = int(_PATTERN.fullmatch(name).group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)
