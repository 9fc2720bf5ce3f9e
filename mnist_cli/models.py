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

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128), classes: int = 10):
        super().__init__()
        first, second, third = channels
        self.features = nn.Sequential(
            _conv_block(1, first, 5),  # a 5x5 first layer sees whole stroke segments
            _conv_block(first, second, 3),
            _conv_block(second, third, 3),
        )
        self.classifier = nn.Linear(third * 3 * 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def default_arguments(architecture: str) -> dict[str, Any]:
    """The constructor arguments a new model of `architecture` gets, in plain types."""
    if architecture == "fc":
        return {"hidden": [512, 256, 256, 128, 64], "classes": 10}
    if architecture == "cnn":
        return {"channels": [32, 64, 128], "classes": 10}
    raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")


def build_model(architecture: str, arguments: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild a model from its name and constructor arguments (as stored in a checkpoint)."""
    arguments = default_arguments(architecture) if arguments is None else arguments
    if architecture == "fc":
        return FullyConnected(tuple(arguments["hidden"]), arguments["classes"])
    if architecture == "cnn":
        return ConvNet(tuple(arguments["channels"]), arguments["classes"])
    raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")
