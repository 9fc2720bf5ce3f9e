"""The networks: the tutorial's fully connected net and the convolutional default."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mnist_cli.options import Architecture


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


def _conv_block(
    inputs: int, outputs: int, kernel: int, convs: int = 1, pool_first: bool = False
) -> nn.Sequential:
    # Batch norm lets a high learning rate converge in few epochs; pooling halves the map.
    # Pooling straight after the last convolution normalises a quarter of the pixels.
    layers: list[nn.Module] = []
    for index, width in enumerate([inputs] + [outputs] * (convs - 1)):
        layers.append(nn.Conv2d(width, outputs, kernel, padding=kernel // 2, bias=False))
        if pool_first and index == convs - 1:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers) if pool_first else nn.Sequential(*layers, nn.MaxPool2d(2))


class ConvNet(nn.Module):
    """Three stages of `convs` conv-BN-ReLU and a pool (28 -> 14 -> 7 -> 3), one linear layer.

    A stage marked in `pool_first` pools after its last convolution, before BN and ReLU.
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64),
        classes: int = 10,
        convs: tuple[int, ...] = (1, 1, 1),
        pool_first: tuple[bool, ...] = (False, False, False),
    ):
        super().__init__()
        inputs = (1, *channels[:-1])
        stages = zip(inputs, channels, convs, pool_first, strict=True)
        # 3x3 everywhere: a larger first kernel costs more time than it gains
        self.features = nn.Sequential(*(_conv_block(i, o, 3, n, p) for i, o, n, p in stages))
        self.classifier = nn.Linear(channels[-1] * 3 * 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class ModelSpecError(ValueError):
    """An architecture name or its arguments that no network can be built from."""


_MAX_WIDTH = 1 << 16  # no layer of a digit classifier needs more units or channels
_MAX_LAYERS = 32
_MAX_CONVS = 8  # per stage: each adds a full-size convolution; 2 is the recipe's
# cnn files written before these layout keys existed: one conv per stage, pooled last
_LEGACY_LAYOUT = {"convs": [1, 1, 1], "pool_first": [False, False, False]}


# The constructor arguments of a new network of each architecture, in plain types. The list of
# architectures is options.Architecture, the torch-free enum the CLI offers; recipes key on it.
DEFAULT_ARGUMENTS: dict[Architecture, dict[str, Any]] = {
    Architecture.cnn: {
        # Two convolutions in the 14x14 and 7x7 stages, one at 28x28, each stage pooling before
        # its batch norm and ReLU (a quarter of the pixels): benchmarks/RESULTS.md has why.
        "channels": [16, 32, 64],
        "convs": [1, 2, 2],
        "pool_first": [True, True, True],
        "classes": 10,
    },  # ~75k weights
    Architecture.fc: {"hidden": [512, 256, 256, 128, 64], "classes": 10},  # the tutorial's
}


def default_arguments(architecture: str) -> dict[str, Any]:
    """The constructor arguments a new model of `architecture` gets (a fresh copy)."""
    try:
        return copy.deepcopy(DEFAULT_ARGUMENTS[Architecture(architecture)])
    except ValueError:
        names = ", ".join(a.value for a in Architecture)
        raise ModelSpecError(
            f"unknown architecture {architecture!r}; choose from {names}"
        ) from None


def check_arguments(architecture: str, arguments: dict[str, Any]) -> None:
    """Raise ModelSpecError unless `arguments` are the right names, types and sizes."""
    expected = set(default_arguments(architecture))
    if not expected - set(_LEGACY_LAYOUT) <= set(arguments) <= expected:
        raise ModelSpecError(f"arguments {sorted(arguments)} are not {sorted(expected)}")
    widths = arguments["hidden" if architecture == "fc" else "channels"]
    lengths = range(1, _MAX_LAYERS + 1) if architecture == "fc" else (3,)
    if not isinstance(widths, list) or len(widths) not in lengths:
        raise ModelSpecError(f"layer sizes {widths!r} are not a list of {lengths[-1]} or fewer")
    for value in [*widths, arguments["classes"]]:
        if not _whole(value, _MAX_WIDTH):
            raise ModelSpecError(f"layer size {value!r} is not a whole number in 1-{_MAX_WIDTH}")
    if architecture == "fc":
        return
    convs, pool_first = _layout(arguments)
    if not _list_of_3(convs) or not all(_whole(n, _MAX_CONVS) for n in convs):
        raise ModelSpecError(f"convs {convs!r} are not 3 whole numbers in 1-{_MAX_CONVS}")
    if not _list_of_3(pool_first) or not all(isinstance(b, bool) for b in pool_first):
        raise ModelSpecError(f"pool_first {pool_first!r} is not a list of 3 true or false")


def _layout(arguments: dict[str, Any]) -> tuple[Any, Any]:
    """A cnn's convolutions and pooling order per stage, as older files imply where absent."""
    return tuple(arguments.get(key, _LEGACY_LAYOUT[key]) for key in ("convs", "pool_first"))


def _list_of_3(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3


def _whole(value: Any, largest: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= largest


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
    convs, pool_first = _layout(arguments)
    return ConvNet(
        tuple(arguments["channels"]), arguments["classes"], tuple(convs), tuple(pool_first)
    )


class Classifier(nn.Module):
    """A self-contained model: pixels in [0, 1] (N x 1 x 28 x 28) -> logits and probabilities.

    The normalisation lives inside, so an exported graph needs nothing from this package.
    """

    def __init__(self, network: nn.Module, mean: float, std: float, temperature: float = 1.0):
        super().__init__()
        self.network = network
        self.mean, self.std, self.temperature = mean, std, temperature

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network((image - self.mean) / self.std)
        if self.temperature != 1.0:  # calibrated: "90% sure" is right about 90% of the time
            logits = logits / self.temperature
        return logits, torch.softmax(logits, dim=1)
