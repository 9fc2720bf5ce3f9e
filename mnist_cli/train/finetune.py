"""Fine-tuning: the model a run starts from (`--init`), and the recipe that teaches it the
user's own digits with MNIST replayed beside them (the images themselves: train/datasets.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_cli.data import CLASS_LABELS, MODEL_LABELS
from mnist_cli.errors import CheckpointError, OptionError
from mnist_cli.options import BUNDLED_MODELS, BackendName
from mnist_cli.train.checkpoints import Checkpoint, load_checkpoint
from mnist_cli.train.recipes import TrainConfig, check_config, finetuning_recipe

if TYPE_CHECKING:
    import torch

BUNDLED = "bundled"  # --init's word for the model shipped in the package


def init_path(init: str) -> Path:
    """The checkpoint that --init names: the bundled cnn.pt, or a file."""
    return BUNDLED_MODELS[BackendName.torch] if init == BUNDLED else Path(init)


def load_init(init: str) -> Checkpoint:
    """The checked checkpoint a fine-tuning run starts from; CheckpointError names --init."""
    path = init_path(init)
    try:
        start = load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(
            f"--init {init}: {error.message.removeprefix(f'{path}: ')}",
            hint=f"give --init {BUNDLED} or a .pt file that `mnist train` wrote",
        ) from None
    if start.class_labels not in [list(labels) for labels in MODEL_LABELS]:
        raise CheckpointError(f"--init {init}: its classes {start.class_labels} are not digits")
    return start


def finetune_config(
    *, init: str, images: Path | str, device: str | torch.device = "cpu", **overrides: Any
) -> TrainConfig:
    """The fine-tuning recipe for the model `init` and the digits in `images`, any field
    replaced by a keyword not None. The network and its classes are the model's."""
    if not images or not init:
        check_pairing(images, init)
        raise OptionError("fine-tuning needs --images DIR and --init MODEL")
    start = load_init(init)
    architecture = overrides.pop("architecture", None) or start.architecture
    if architecture != start.architecture:
        raise OptionError(
            f"--arch {architecture}: --init {init} has the {start.architecture} network; "
            "fine-tuning keeps it (drop --arch)"
        )
    base = finetuning_recipe(architecture, device, none_class=_has_none(start))
    config = replace(
        base,
        images=str(Path(images).resolve()),  # --resume finds them from any folder
        init=init if init == BUNDLED else str(Path(init).resolve()),
        **{k: v for k, v in overrides.items() if v is not None},
    )
    check_config(config)
    check_fits(start, config)
    return config


def check_pairing(images: Path | str, init: str) -> None:
    """Fine-tuning needs both the digits and the model; either alone is a usage error."""
    if bool(images) != bool(init):
        given, missing = ("--images", "--init MODEL") if images else ("--init", "--images DIR")
        raise OptionError(f"{given} fine-tunes a model on your digits: add {missing}")


def _has_none(start: Checkpoint) -> bool:
    return len(start.class_labels) > len(CLASS_LABELS)


def check_fits(start: Checkpoint, config: TrainConfig) -> None:
    """Refuse a recipe that would teach the model classes it does not have, or drop one."""
    if _has_none(start) != bool(config.negatives):
        has = 'has the class "none"' if _has_none(start) else 'has no class "none"'
        raise OptionError(
            f"--init {config.init} {has}: negatives must be "
            f"{'above 0' if _has_none(start) else '0'} to fine-tune it"
        )
