"""Fine-tuning: a trained model taught the user's own labelled digits, with MNIST replayed
beside them so that it keeps reading everyone else's."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnist_cli.data import CLASS_LABELS, MODEL_LABELS, Split
from mnist_cli.errors import CheckpointError, DataError, OptionError
from mnist_cli.train.checkpoints import Checkpoint, load_checkpoint
from mnist_cli.train.recipes import TrainConfig, check_config, finetuning_recipe

BUNDLED = "bundled"  # --init's word for the model shipped in the package
MIN_IMAGES = 10  # fewer teach nothing and leave nothing to hold out


def init_path(init: str) -> Path:
    """The checkpoint that --init names: the bundled cnn.pt, or a file."""
    if init == BUNDLED:
        from mnist_cli.infer.backends import BUNDLED_MODELS, BackendName

        return BUNDLED_MODELS[BackendName.torch]
    return Path(init)


def load_init(init: str) -> Checkpoint:
    """The checked checkpoint a fine-tuning run starts from; CheckpointError names --init."""
    path = init_path(init)
    try:
        start = load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(
            f"--init {init}: {error.message.removeprefix(f'{path}: ')}",
            hint=f"give --init {BUNDLED} or a best.pt that `mnist train` wrote",
        ) from None
    if start.class_labels not in [list(labels) for labels in MODEL_LABELS]:
        raise CheckpointError(f"--init {init}: its classes {start.class_labels} are not digits")
    return start


def finetune_config(
    *, init: str, images: Path | str, device: str | torch.device = "cpu", **overrides: Any
) -> TrainConfig:
    """The fine-tuning recipe for the model `init` and the digits in `images`; any field
    replaced by a keyword not None. The network and its classes are the model's."""
    if not init or not images:
        given, missing = ("--images", "--init MODEL") if images else ("--init", "--images DIR")
        raise OptionError(f"{given} fine-tunes a model on your digits: add {missing}")
    start = load_init(init)
    architecture = overrides.pop("architecture", None) or start.architecture
    if architecture != start.architecture:
        raise OptionError(
            f"--arch {architecture}: --init {init} is a {start.architecture}; "
            "fine-tuning keeps its network (drop --arch)"
        )
    source = Path(images)
    if not (source.is_dir() or source.is_file()):
        from mnist_cli.files import path_problem

        raise DataError(f"--images {images}: {path_problem(source) or 'not a folder nor a file'}")
    base = finetuning_recipe(architecture, device, none_class=_has_none(start))
    where = init if init == BUNDLED else str(Path(init).resolve())
    config = replace(
        base,
        images=str(source.resolve()),
        init=where,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    check_config(config)
    check_fits(start, config)
    return config


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


def your_digits(config: TrainConfig) -> tuple[Split, str]:
    """The user's labelled digits as `predict` reads them (uint8, 28 x 28), and a digest of
    them that --resume checks: a run continues only on the images it started with."""
    from mnist_cli.infer.evaluation import load_labelled_images

    found = load_labelled_images(config.images)
    if len(found.labels) < MIN_IMAGES:
        raise DataError(
            f"--images {config.images}: {len(found.labels)} readable labelled image"
            f"{'s' if len(found.labels) != 1 else ''}; fine-tuning needs at least {MIN_IMAGES}",
            hint="add more of your digits (a few dozen teach it your hand)",
        )
    images = np.rint(found.pixels * 255).astype(np.uint8)
    digest = hashlib.sha256(images.tobytes() + found.labels.tobytes()).hexdigest()
    return Split(images, found.labels), digest


def hold_out(yours: Split, share: float, seed: int) -> tuple[Split, Split]:
    """Split the user's digits by `seed`: (to train on, held out to pick best.pt)."""
    order = np.random.default_rng(seed).permutation(len(yours))
    held = max(1, round(len(yours) * share))
    kept, out = order[held:], order[:held]
    return Split(yours.images[kept], yours.labels[kept]), Split(
        yours.images[out], yours.labels[out]
    )


def epoch_images(yours: Split, mnist: Split | None, config: TrainConfig) -> Split:
    """One epoch's images: the user's repeated to `fill`, and `replay` times as many MNIST
    training images drawn by the seed (the same ones each epoch; augmentation varies them)."""
    repeats = max(1, math.ceil(config.fill / len(yours)))
    images, labels = [np.tile(yours.images, (repeats, 1, 1))], [np.tile(yours.labels, repeats)]
    if mnist is not None and config.replay:
        count = min(len(mnist), round(len(images[0]) * config.replay))
        pick = np.random.default_rng(config.seed).choice(len(mnist), count, replace=False)
        images.append(mnist.images[pick])
        labels.append(mnist.labels[pick])
    return Split(np.concatenate(images), np.concatenate(labels))
