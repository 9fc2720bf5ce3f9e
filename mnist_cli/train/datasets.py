"""What a run trains on, validates on and calibrates on: MNIST's training images, or for a
fine-tuning run the user's digits with MNIST replayed beside them."""

from __future__ import annotations

import hashlib
import math
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_cli.data import Split, load_split, split_train_validation
from mnist_cli.errors import DataError, DataMissing
from mnist_cli.train.negatives import with_negatives
from mnist_cli.train.recipes import TrainConfig

MIN_IMAGES = 10  # fewer teach nothing and leave nothing to hold out


@dataclass(frozen=True)
class TrainingData:
    """A run's images: validation picks best.pt, calibration fits its temperature."""

    train: Split
    validation: Split  # digits only: a digit refused as "none" counts as a mistake there
    calibration: Split
    about: str = ""  # a line for the start of the run, where the images are not MNIST's alone
    warning: str = ""  # what is not as asked: no MNIST to replay
    images_digest: str = ""  # of what a fine-tuning run learns from: --resume must find it again


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
    yours = your_digits(config.images)
    kept, held = hold_out(yours, config.holdout, config.seed)
    mnist = mnist_validation = None
    if config.replay:
        with suppress(DataMissing):  # replayed when present; the run says so when not
            found = load_split(data_dir, "train")
            # Held out for calibration only: a smaller MNIST keeps most of itself to replay.
            held_out = min(config.validation_size, len(found) // 5)
            mnist, mnist_validation = split_train_validation(found, held_out, config.seed)
    epoch = epoch_images(kept, mnist, config)
    train = with_negatives(epoch, config.negatives, config.seed)
    calibration = held
    if mnist_validation is not None:
        calibration = Split(
            np.concatenate([held.images, mnist_validation.images]),
            np.concatenate([held.labels, mnist_validation.labels]),
        )
    replayed = len(epoch) - len(kept) * _repeats(kept, config)
    about = (
        f"your {len(yours)} digits: {len(kept)} to learn from, {len(held)} held out to pick "
        f"best.pt; {replayed:,} MNIST training images replayed beside them"
    )
    warning = ""
    if mnist is None and config.replay:
        warning = (
            f"no MNIST in {data_dir}: fine-tuning on your digits alone, which may cost it "
            "MNIST's (`mnist download`, or --data-dir, gives it MNIST to replay)"
        )
    # What the run learns from, replayed digits included: --resume refuses other images.
    digest = hashlib.sha256(epoch.images.tobytes() + epoch.labels.tobytes())
    digest.update(held.images.tobytes() + held.labels.tobytes())
    return TrainingData(train, held, calibration, about, warning, digest.hexdigest())


def your_digits(source: Path | str) -> Split:
    """The user's labelled digits as `predict` reads them, to the nearest of the 256 levels
    training images are kept in. A file that cannot be read stops the run, named, as it makes
    `mnist test` fail: nothing is left out in silence."""
    from mnist_cli.labelled import load_labelled_images

    found = load_labelled_images(source)
    if found.skipped:
        named = "; ".join(f"{path} ({why})" for path, why in found.skipped[:3])
        more = f" and {len(found.skipped) - 3} more" if len(found.skipped) > 3 else ""
        raise DataError(
            f"--images {source}: {len(found.skipped)} cannot be read: {named}{more}",
            hint="remove or mend them, then train again (`mnist test --images` lists them all)",
        )
    if len(found.labels) < MIN_IMAGES:
        count = len(found.labels)
        raise DataError(
            f"--images {source}: {count} readable labelled image{'s' if count != 1 else ''}; "
            f"fine-tuning needs at least {MIN_IMAGES}",
            hint="add more of your digits (a few dozen teach it your hand)",
        )
    images = np.rint(found.pixels * 255).astype(np.uint8)
    return Split(images, found.labels)


def hold_out(yours: Split, share: float, seed: int) -> tuple[Split, Split]:
    """Split the user's digits by `seed` into (to learn from, held out to pick best.pt): about
    `share` of each digit held out, but never a digit's only image, and one image at least."""
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for label in np.unique(yours.labels):
        of_label = rng.permutation(np.flatnonzero(yours.labels == label))
        held += of_label[: min(round(len(of_label) * share), len(of_label) - 1)].tolist()
    if not held:  # every digit too rare to spare one: the first image of the commonest
        held = [int(np.flatnonzero(yours.labels == np.bincount(yours.labels).argmax())[0])]
    out = np.zeros(len(yours), bool)
    out[held] = True
    return Split(yours.images[~out], yours.labels[~out]), Split(
        yours.images[out], yours.labels[out]
    )


def _repeats(kept: Split, config: TrainConfig) -> int:
    return max(1, math.ceil(config.fill / len(kept)))


def epoch_images(yours: Split, mnist: Split | None, config: TrainConfig) -> Split:
    """One epoch's images: the user's repeated to `fill`, and `replay` times as many MNIST
    training images drawn by the seed (the same ones each epoch; augmentation varies them)."""
    repeats = _repeats(yours, config)
    images, labels = [np.tile(yours.images, (repeats, 1, 1))], [np.tile(yours.labels, repeats)]
    if mnist is not None and config.replay:
        count = min(len(mnist), round(len(images[0]) * config.replay))
        pick = np.random.default_rng(config.seed).choice(len(mnist), count, replace=False)
        images.append(mnist.images[pick])
        labels.append(mnist.labels[pick])
    return Split(np.concatenate(images), np.concatenate(labels))
