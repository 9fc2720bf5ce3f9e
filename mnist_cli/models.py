"""The networks: the tutorial's fully connected net and the convolutional default."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ARCHITECTURES = ("cnn", "fc")
DEFAULT_ARCHITECTURE = "cnn"


class FullyConnected(nn.Module):
    """The tutorial's net: 784-512-256-256-128-64-10 with ReLU between layers."""

    def __init__(self, hidden: tuple[int, ...] = (512, 256, 256, 128, 64), classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _conv_block(inputs: int, outputs: int, kernel: int) -> nn.Sequential:
    # Batch norm lets a high learning rate converge in few epochs; pooling halves the map.
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ConvNet(nn.Module):
    """Three conv-BN-ReLU-pool blocks (28 -> 14 -> 7 -> 3) and one linear classifier."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), classes: int = 10):
        super().__init__()
        first, second, third = channels
        self.features = nn.Sequential(
            _conv_block(1, first, 3),  # 3x3 everywhere: a 5x5 first layer cost 2x the time on CPU
            _conv_block(first, second, 3),
            _conv_block(second, third, 3),
        )
        self.classifier = nn.Linear(third * 3 * 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class ModelSpecError(ValueError):
    """An architecture name or its arguments that no network can be built from."""


_MAX_WIDTH = 1 << 16  # no layer of a digit classifier needs more units or channels
_MAX_LAYERS = 32


def default_arguments(architecture: str) -> dict[str, Any]:
    """The constructor arguments a new model of `architecture` gets, in plain types."""
    if architecture == "fc":
        return {"hidden": [512, 256, 256, 128, 64], "classes": 10}
    if architecture == "cnn":
        return {"channels": [16, 32, 64], "classes": 10}  # ~29k weights
    raise ModelSpecError(
        f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}"
    )


def check_arguments(architecture: str, arguments: dict[str, Any]) -> None:
    """Raise ModelSpecError unless `arguments` are the right names, types and sizes."""
    expected = set(default_arguments(architecture))
    if set(arguments) != expected:
        raise ModelSpecError(f"arguments {sorted(arguments)} are not {sorted(expected)}")
    widths = arguments["hidden" if architecture == "fc" else "channels"]
    lengths = range(1, _MAX_LAYERS + 1) if architecture == "fc" else (3,)
    if not isinstance(widths, list) or len(widths) not in lengths:
        raise ModelSpecError(f"layer sizes {widths!r} are not a list of {lengths[-1]} or fewer")
    for value in [*widths, arguments["classes"]]:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_WIDTH:
            raise ModelSpecError(f"layer size {value!r} is not a whole number in 1-{_MAX_WIDTH}")


def parameter_shapes(architecture: str, arguments: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes the arguments imply, from a network on the meta device (no memory)."""
    with torch.device("meta"):
        network = build_model(architecture, arguments)
    return {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}


def build_model(architecture: str, arguments: dict[str, Any] | None = None) -> nn.Module:
    """Build a network from its name and constructor arguments (as stored in a checkpoint)."""
    arguments = default_arguments(architecture) if arguments is None else arguments
    check_arguments(architecture, arguments)
    if architecture == "fc":
        return FullyConnected(tuple(arguments["hidden"]), arguments["classes"])
    return ConvNet(tuple(arguments["channels"]), arguments["classes"])


class Classifier(nn.Module):
    """A self-contained model: pixels in [0, 1] (N x 1 x 28 x 28) -> logits and probabilities.

    The normalisation lives inside, so an exported graph needs nothing from this package.
    """

    def __init__(self, network: nn.Module, mean: float, std: float):
        super().__init__()
        self.network = network
        self.mean, self.std = mean, std

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network((image - self.mean) / self.std)
        return logits, torch.softmax(logits, dim=1)
