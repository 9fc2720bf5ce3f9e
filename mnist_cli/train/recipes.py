"""The recipes: one frozen TrainConfig per architecture and device kind, and their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from mnist_cli.options import Architecture

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (with the data and the device).

    The defaults are the cnn's CPU recipe, tuned on the validation split only; the figures
    behind each value are in benchmarks/RESULTS.md.
    """

    architecture: str = "cnn"  # (str) the network: cnn or fc
    epochs: int = 15  # (int) passes over the training images
    batch_size: int = 128  # (int) images per optimiser step, across all processes
    lr: float = 8e-3  # (float) peak of the one-cycle learning rate
    weight_decay: float = 5e-4  # (float) AdamW's decoupled weight decay, a mild regulariser
    augment: bool = True  # (bool) style strokes, stroke thickness, rotation, scale and shift
    plain_epochs: int = 1  # (int) first epochs without augmentation: a raw net learns faster
    thickness: float = 0.15  # (float) share of a batch drawn thicker or thinner (pens)
    styles: float = 0.15  # (float) share of 0s, 1s and 7s given a slash, dot, flag, foot or bar
    negatives: float = 0.1  # (float) no-digit images per digit image, learnt as class "none"
    label_smoothing: float = 0.1  # (float) share of each target spread over the other digits
    warmup: float = 0.25  # (float) share of all steps spent rising to the peak learning rate
    weight_average: float = 0.999  # (float) decay of the weights' moving average; 0: none
    validation_size: int = 5_000  # (int) training images held out to pick best.pt
    seed: int = 0  # (int) fixes initial weights, the validation split and the batch order
    # Fine-tuning (`mnist train --images DIR --init MODEL`); a run from scratch leaves them be.
    images: str = ""  # (str) your labelled digits: a folder of 0/ ... 9/ or a CSV; "": MNIST's
    init: str = ""  # (str) the model the run starts from: "bundled" or a .pt; "": random weights
    fill: int = 4_000  # (int) your images are repeated to this many per epoch: steps, not passes
    replay: float = 1.0  # (float) MNIST images per image of yours in an epoch, against forgetting
    holdout: float = 0.2  # (float) share of your images held out to pick best.pt


# Recipes per (architecture, device kind); `default_config` picks one for the device in use.
RECIPES = {
    (Architecture.cnn, "cpu"): TrainConfig(),
    (Architecture.cnn, "cuda"): TrainConfig(
        batch_size=2048,  # a GPU step costs about the same at any small batch: fewer steps
        lr=1.2e-2,  # a larger batch takes a higher peak
        thickness=0.3,  # the shares this recipe was tuned with
        styles=0.3,
    ),
    (Architecture.fc, "cpu"): TrainConfig(
        architecture="fc",
        epochs=20,  # cheap steps, slower to converge than the cnn
        batch_size=256,  # the dense net gains nothing from smaller batches
        lr=1e-3,  # no batch norm: a gentler peak
        augment=False,  # warps hurt a net that sees pixels, not shapes
        label_smoothing=0.0,  # no gain without augmentation
    ),
}
RECIPES[Architecture.fc, "cuda"] = RECIPES[Architecture.fc, "cpu"]

# The fields only a fine-tuning run reads (a run from scratch leaves them at their defaults).
FINETUNING_FIELDS = ("images", "init", "fill", "replay", "holdout")

# Fine-tuning a trained model on the user's digits: the values the cnn recipe changes, on any
# device (the network, its classes and "none" images follow the model it starts from).
FINETUNING = {
    "epochs": 12,  # the model knows digits already: a dozen short epochs teach it one hand
    "batch_size": 128,  # a few thousand images an epoch: on a GPU too, small batches make steps
    "lr": 1e-3,  # a gentle peak keeps what it knew
    "warmup": 0.1,  # no random weights to settle first
    "plain_epochs": 0,  # augmented from the start: a few images seen many times
    "weight_average": 0.99,  # an average over the last hundred steps or so: a short run
}


_COUNTS = ("epochs", "batch_size", "validation_size", "fill")
# Beyond any real run, and within what torch's generators and the batch order's arithmetic take.
_MOST = {
    "epochs": 100_000,
    "batch_size": 1 << 20,
    "validation_size": 1 << 20,
    "fill": 200_000,  # your images repeated in memory: a few hundred MB at most
    "seed": 2**32 - 1,
}


def recipe_kind(device: str | torch.device) -> str:
    """The recipe family for a device ("cpu", "cuda:1", "auto" or a torch.device): "cuda" on
    NVIDIA GPUs, "cpu" everywhere else."""
    if str(device) == "auto":
        from mnist_cli.devices import resolve_device

        device = resolve_device("auto")
    kind = device.type if not isinstance(device, str) else device.partition(":")[0]
    return "cuda" if kind == "cuda" else "cpu"


def default_config(
    architecture: str = "cnn", device: str | torch.device = "cpu", **overrides: Any
) -> TrainConfig:
    """The recipe for `architecture` on `device`, any field replaced by a keyword not None."""
    if (architecture, "cpu") not in RECIPES:
        names = [a.value for a in Architecture]
        raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(names)}")
    base = RECIPES[architecture, recipe_kind(device)]
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    check_config(config)
    return config


def finetuning_recipe(
    architecture: str, device: str | torch.device, *, none_class: bool
) -> TrainConfig:
    """The recipe that fine-tunes a trained `architecture` (with or without the "none" class)."""
    base = RECIPES[architecture, recipe_kind(device)]
    return replace(base, **FINETUNING, negatives=base.negatives if none_class else 0.0)


def describe_recipe(config: TrainConfig, device: str | torch.device) -> str:
    """Short lines for the start of a run: whose recipe it is and which values options changed."""
    kind = recipe_kind(device)
    base = RECIPES.get((config.architecture, kind))
    if base and config.images:
        base = finetuning_recipe(config.architecture, device, none_class=bool(config.negatives))
    changed = [
        item.name
        for item in fields(TrainConfig)
        if base
        and getattr(config, item.name) != getattr(base, item.name)
        and item.name not in _WHAT_IS_TUNED
    ]
    augmentation = (
        f"augment (warps, thickness {config.thickness:g}, styles {config.styles:g})"
        if config.augment
        else "no augmentation"
    )
    average = f", weight average {config.weight_average:g}" if config.weight_average else ""
    epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    recipe = "fine-tuning recipe" if config.images else "recipe"
    lines = [
        f"{config.architecture} {recipe} for {kind}: {epochs}, batch {config.batch_size}, "
        f"peak lr {config.lr:g}, seed {config.seed}",
        f"  {augmentation}{average}",
    ]
    if config.images:
        lines.append(f"  starting from {config.init}, on your digits in {config.images}")
    if config.negatives:
        lines.append(f'  class "none": {config.negatives:g} images of no digit per digit image')
    if changed:
        lines.append(f"  changed from the recipe: {', '.join(map(_option, changed))}")
    return "\n".join(lines)


_WHAT_IS_TUNED = ("images", "init")  # named on a line of their own, not as changes


def check_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first field of the wrong type or out of its range."""
    for item in fields(TrainConfig):
        value, kind = getattr(config, item.name), type(item.default)
        fits = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not fits or (kind is not bool and isinstance(value, bool)):
            article = "an" if kind.__name__[0] in "aeiou" else "a"
            raise ValueError(
                f"{_option(item.name)} must be {article} {kind.__name__}, not {value!r}"
            )
    for name in _COUNTS:
        if getattr(config, name) < 1:
            raise ValueError(f"{_option(name)} must be at least 1")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr must be a positive finite number, not {config.lr}")
    limits = {
        "weight_decay": (0, 1),
        "label_smoothing": (0, 0.99),
        "warmup": (0, 1),
        "thickness": (0, 1),
        "styles": (0, 1),
        "negatives": (0, 1),
        "weight_average": (0, 0.999999),
        "replay": (0, 100),
        "holdout": (0.01, 0.9),
    }
    for name, (low, high) in limits.items():
        if not low <= getattr(config, name) <= high:
            raise ValueError(f"{_option(name)} must be between {low} and {high}")
    for name, most in _MOST.items():
        if getattr(config, name) > most:
            raise ValueError(f"{_option(name)} must be at most {most:,}")
    if config.plain_epochs < 0:
        raise ValueError("plain-epochs must be 0 or more")
    if config.seed < 0 or (config.architecture, "cpu") not in RECIPES:
        raise ValueError(f"seed {config.seed} or arch {config.architecture!r} is not valid")


def _option(name: str) -> str:
    return name.replace("_", "-")


# A run's config file: TOML, which Python reads with no new dependency from 3.11 on (tomllib)
# and which needs no quoting rules beyond JSON's for these flat values. Keys are TrainConfig's
# fields, `arch` for the network (as the option is named), and the device.
CONFIG_FILE = "config.toml"
_ARCH_KEY = "arch"


def _key(name: str) -> str:
    return _ARCH_KEY if name == "architecture" else name


CONFIG_KEYS = [_key(item.name) for item in fields(TrainConfig)] + ["device"]


def config_toml(config: TrainConfig, device: str) -> str:
    """The resolved recipe in the format `mnist train --config` reads."""
    import json

    lines = ["# mnist train --config FILE reads this; options given on the command line win."]
    shown = [  # a run from scratch leaves the fine-tuning fields at their defaults: not shown
        item for item in fields(TrainConfig) if config.images or item.name not in FINETUNING_FIELDS
    ]
    values = {_key(item.name): getattr(config, item.name) for item in shown}
    for key, value in {**values, "device": device}.items():
        text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def read_config_file(path: Any) -> dict[str, Any]:
    """The keys of a config file, each checked alone; OptionError (exit 2) naming the file and
    the key for an unknown key, a wrong type or a value out of range."""
    from pathlib import Path

    from mnist_cli.devices import check_device_name
    from mnist_cli.errors import OptionError

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    where = f"--config {path}"
    try:
        values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise OptionError(f"{where}: cannot be read ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise OptionError(f"{where}: not a TOML file ({error})") from None
    for key, value in values.items():
        if key not in CONFIG_KEYS:
            raise OptionError(
                f"{where}: unknown key {key!r}; the keys are {', '.join(CONFIG_KEYS)}"
            )
        try:
            if key == "device":
                check_device_name(value if isinstance(value, str) else repr(value))
            elif key == _ARCH_KEY:
                if not isinstance(value, str) or (value, "cpu") not in RECIPES:
                    names = [a.value for a in Architecture]
                    raise ValueError(f"choose from {', '.join(names)}, not {value!r}")
            else:
                check_config(replace(TrainConfig(), **{key: value}))
        except (ValueError, OptionError) as error:  # OptionError: the device's check
            message = getattr(error, "message", None) or str(error)
            raise OptionError(f"{where}: key {key!r}: {message}") from None
    return values


def recipe_default(field: str) -> str:
    """A field's default across the recipes, for the help: "cnn 128 on CPU, 2048 on CUDA; fc
    256; fine-tuning 128", or the one value when every recipe agrees (and fine-tuning's)."""
    shown: dict[str, dict[str, Any]] = {}
    for (architecture, kind), recipe in RECIPES.items():
        shown.setdefault(architecture.value, {})[kind] = getattr(recipe, field)
    values = {repr(v) for kinds in shown.values() for v in kinds.values()}
    tuning = f"; fine-tuning {_shown(FINETUNING[field])}" if field in FINETUNING else ""
    if len(values) == 1:
        return _shown(next(iter(shown.values()))["cpu"]) + tuning
    parts = []
    for architecture, kinds in shown.items():
        if kinds["cpu"] == kinds["cuda"]:
            parts.append(f"{architecture} {_shown(kinds['cpu'])}")
        else:
            parts.append(
                f"{architecture} {_shown(kinds['cpu'])} on CPU, {_shown(kinds['cuda'])} on CUDA"
            )
    return "; ".join(parts) + tuning


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)
