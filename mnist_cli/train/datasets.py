"""What a run trains on, validates on and calibrates on: MNIST's training images, or for a
fine-tuning run the user's digits with MNIST replayed beside them."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_cli.data import Split, load_split, split_train_validation
from mnist_cli.errors import DataMissing
from mnist_cli.train.finetune import epoch_images, hold_out, your_digits
from mnist_cli.train.negatives import with_negatives
from mnist_cli.train.recipes import TrainConfig


@dataclass(frozen=True)
class TrainingData:
    """A run's images: validation picks best.pt, calibration fits its temperature."""

    train: Split
    validation: Split  # digits only: a digit refused as "none" counts as a mistake there
    calibration: Split
    about: str = ""  # a line for the start of the run, where the images are not MNIST's alone
    digest: str = ""  # of the user's images, which --resume must find unchanged


def training_data(config: TrainConfig, data_dir: Path | str) -> TrainingData:
    """The images of a run of `config`, with MNIST's read from `data_dir`."""
    if config.images:
        return _finetuning_data(config, data_dir)
    train, validation = split_train_validation(
        load_split(data_dir, "train"), config.validation_size, config.seed
    )
    train = with_negatives(train, config.negatives, config.seed)
    return TrainingData(train, validation, validation)


def _finetuning_data(config: TrainConfig, data_dir: Path | str) -> TrainingData:
    """The user's digits (a part held out to pick best.pt), repeated to fill an epoch, and
    MNIST training images replayed beside them when `data_dir` has them. best.pt's temperature
    is fitted on the held-out digits and MNIST's validation images together: a few dozen
    digits hold too few mistakes to fit one alone."""
    yours, digest = your_digits(config)
    kept, held = hold_out(yours, config.holdout, config.seed)
    mnist = mnist_validation = None
    if config.replay:
        with suppress(DataMissing):  # replayed when present; the run says so when not
            found = load_split(data_dir, "train")
            # Held out for calibration only: a smaller MNIST keeps most of itself to replay.
            held_out = min(config.validation_size, len(found) // 5)
            mnist, mnist_validation = split_train_validation(found, held_out, config.seed)
    train = with_negatives(epoch_images(kept, mnist, config), config.negatives, config.seed)
    calibration = held
    if mnist_validation is not None:
        calibration = Split(
            np.concatenate([held.images, mnist_validation.images]),
            np.concatenate([held.labels, mnist_validation.labels]),
        )
    if mnist is not None:
        replay = f"MNIST replayed beside them ({config.replay:g} image per image of yours)"
    elif config.replay:
        replay = f"no MNIST in {data_dir}, so nothing replayed: `mnist download` adds it"
    else:
        replay = "no MNIST replayed (replay 0)"
    about = (
        f"your {len(yours)} digits: {len(kept)} to learn from, {len(held)} held out to pick "
        f"best.pt; {replay}"
    )
    return TrainingData(train, held, calibration, about, digest)
