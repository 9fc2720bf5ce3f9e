"""Choosing the torch device from a user's `--device` value."""

from __future__ import annotations

import re

import torch

from mnist_cli.errors import DeviceError

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"


def resolve_device(name: str = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:N" or "mps" into a usable device, or raise DeviceError."""
    name = name.strip().lower()
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
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise DeviceError(f"--device {name!r} is not one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {name}: CUDA is not available on this machine",
            hint="use --device cpu or --device auto",
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)
