"""Training: the recipe (a frozen config), the loop, checkpoints each epoch, Ctrl-C and resume."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_cli import __version__
from mnist_cli.augmentation import random_affine
from mnist_cli.checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from mnist_cli.data import CLASS_LABELS, NORMALIZATION, Split, load_split, split_train_validation
from mnist_cli.devices import resolve_device
from mnist_cli.errors import CheckpointError, OutputError, TrainingInterrupted
from mnist_cli.evaluation import normalize, score
from mnist_cli.models import build_model, default_arguments


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (with the data and the device)."""

    model: str = "cnn"
    epochs: int = 15  # the cnn passes 99.5% test accuracy in ~90 s on 2 CPU cores
    batch_size: int = 256  # keeps two CPU cores busy; ~215 optimiser steps per epoch
    lr: float = 4e-3  # peak of the one-cycle schedule; batch norm makes it stable
    weight_decay: float = 5e-4  # AdamW's decoupled decay, a mild regulariser
    augment: bool = True  # random rotation, scale and shift per image: +0.1-0.2 points on test
    label_smoothing: float = 0.1  # keeps logits calibrated; a small gain with augmentation
    warmup: float = 0.25  # share of all steps spent rising to the peak learning rate
    validation_size: int = 5_000  # held out of the 60,000 training images to pick best.pt
    seed: int = 0  # fixes initial weights, the validation split and the batch order


# The fully connected net is cheap per step but needs a gentler peak and more epochs.
RECIPES = {
    "cnn": TrainConfig(),
    "fc": TrainConfig(model="fc", epochs=20, lr=1e-3, augment=False, label_smoothing=0.0),
}


def default_config(model: str = "cnn", **overrides: Any) -> TrainConfig:
    """The recipe for `model`, with any field replaced by a keyword that is not None."""
    if model not in RECIPES:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(RECIPES)}")
    config = replace(RECIPES[model], **{k: v for k, v in overrides.items() if v is not None})
    for name in ("epochs", "batch_size", "validation_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name.replace('_', '-')} must be at least 1")
    if config.lr <= 0:
        raise ValueError("lr must be positive")
    return config


@dataclass
class EpochRecord:
    """One row of the training history, in plain types."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_second: float


@dataclass
class TrainResult:
    """What a finished run produced."""

    best_path: Path
    last_path: Path
    best_epoch: int
    best_val_accuracy: float
    device: str
    history: list[EpochRecord] = field(default_factory=list)


class TrainCallback:
    """Hooks the loop calls so that it never prints; override the ones you need."""

    def on_start(self, *, config: TrainConfig, device: str, start_epoch: int, steps: int) -> None:
        pass

    def on_batch(self, *, epoch: int, step: int, steps: int, loss: float, rate: float) -> None:
        pass

    def on_epoch(self, record: EpochRecord, *, best: bool) -> None:
        pass


def one_cycle_lr(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear rise from peak/25 to the peak, then cosine decay to zero (one-cycle policy)."""
    rise = max(1, round(total * warmup))
    if step < rise:
        return peak * (0.04 + 0.96 * step / rise)
    progress = (step - rise) / max(1, total - rise)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    # One generator per epoch: a resumed run draws the same order without saved shuffle state.
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold `out_dir/.lock` for this process; a lock left by a dead process is taken over."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir}: is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"--out {out_dir}: cannot create the folder ({error.strerror})"
        ) from error
    lock = out_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock.read_text().strip() if lock.is_file() else ""
            if owner.isdigit() and _process_alive(int(owner)):
                raise OutputError(
                    f"--out {out_dir}: another `mnist train` (process {owner}) is writing there",
                    hint="wait for it to finish, or choose another --out",
                ) from None
            lock.unlink(missing_ok=True)  # left by a crashed run
            continue
        except OSError as error:
            raise OutputError(f"--out {out_dir}: cannot write there ({error.strerror})") from error
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _StopFlag:
    """Turns the first Ctrl-C into a flag the loop checks between batches; a second one kills."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _to_device(split: Split, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    images = normalize(torch.from_numpy(split.images).to(device))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.from_numpy(split.labels).to(device)


def _config_from(saved: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def train(
    config: TrainConfig | None = None,
    *,
    data_dir: Path | str = "datafiles",
    out_dir: Path | str = "params",
    device: str = "auto",
    resume: bool = False,
    callback: TrainCallback | None = None,
) -> TrainResult:
    """Train a model, writing `last.pt` every epoch and `best.pt` at the best validation score.

    With `resume=True` the run continues from `out_dir/last.pt` with its saved config.
    """
    out_dir = Path(out_dir)
    callback = callback or TrainCallback()
    torch_device = resolve_device(device)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    saved = None
    if resume:
        if not last_path.is_file():
            raise CheckpointError(
                f"--resume: no {last_path} to continue from",
                hint="start a new run without --resume",
            )
        saved = load_checkpoint(last_path)
        if "optimizer" not in saved:
            raise CheckpointError(f"--resume: {last_path} holds no optimiser state")
        config = _config_from(saved["options"])
    config = config or default_config()

    with _exclusive(out_dir), _StopFlag() as stop:
        return _run(
            config, saved, Path(data_dir), torch_device, best_path, last_path, callback, stop
        )


def _run(
    config: TrainConfig,
    saved: dict[str, Any] | None,
    data_dir: Path,
    device: torch.device,
    best_path: Path,
    last_path: Path,
    callback: TrainCallback,
    stop: _StopFlag,
) -> TrainResult:
    train_split, val_split = split_train_validation(
        load_split(data_dir, "train"), config.validation_size, config.seed
    )
    channels_last = config.model == "cnn"  # measured ~1.3x faster for the convolutions on CPU
    train_x, train_y = _to_device(train_split, device, channels_last)
    val_x, val_y = _to_device(val_split, device, channels_last)

    torch.manual_seed(config.seed)  # initial weights
    # Augmentation draws from its own generator, saved with last.pt: nothing else can shift it.
    augment_rng = torch.Generator(device=device).manual_seed(config.seed)
    arguments = saved["arguments"] if saved else default_arguments(config.model)
    model = model_from_checkpoint(saved) if saved else build_model(config.model, arguments)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps = math.ceil(len(train_split) / config.batch_size)
    background = -NORMALIZATION["mean"] / NORMALIZATION["std"]  # a blank pixel, normalised
    total_steps = steps * config.epochs

    history: list[EpochRecord] = []
    start_epoch, start_step, best_acc, best_epoch = 0, 0, -1.0, 0
    partial_loss, partial_seconds = 0.0, 0.0
    if saved:
        optimizer.load_state_dict(saved["optimizer"])
        history = [EpochRecord(**row) for row in saved["history"]]
        start_epoch, start_step = saved["epoch"], saved["step"]
        best_acc, best_epoch = saved["best_val_accuracy"], saved["best_epoch"]
        partial_loss, partial_seconds = saved["partial_loss"], saved["partial_seconds"]
        try:
            augment_rng.set_state(saved["augment_rng"])
        except (RuntimeError, KeyError):  # saved on another kind of device: reseed instead
            augment_rng.manual_seed(config.seed + start_epoch)

    def payload(epoch: int, step: int, val_accuracy: float) -> dict[str, Any]:
        return {
            "mnist_cli_version": __version__,
            "architecture": config.model,
            "arguments": arguments,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "normalization": dict(NORMALIZATION),
            "class_labels": list(CLASS_LABELS),
            "epoch": epoch,
            "step": step,
            "val_accuracy": val_accuracy,
            "best_val_accuracy": max(best_acc, val_accuracy),
            "best_epoch": best_epoch,
            "options": {**asdict(config), "device": str(device)},
            "history": [asdict(row) for row in history],
        }

    def save_last(epoch: int, step: int, loss_sum: float, seconds: float) -> None:
        state = payload(epoch, step, history[-1].val_accuracy if history else 0.0)
        state.update(
            optimizer=optimizer.state_dict(),
            augment_rng=augment_rng.get_state(),
            partial_loss=loss_sum,
            partial_seconds=seconds,
        )
        save_checkpoint(state, last_path)

    callback.on_start(config=config, device=str(device), start_epoch=start_epoch, steps=steps)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = _batch_order(len(train_split), config.seed, epoch).to(device)
        first = start_step if epoch == start_epoch else 0
        loss_sum = partial_loss if epoch == start_epoch else 0.0
        seconds_before = partial_seconds if epoch == start_epoch else 0.0
        started = time.perf_counter()
        for step in range(first, steps):
            lr = one_cycle_lr(epoch * steps + step, total_steps, config.lr, config.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = train_x[index]
            if config.augment:
                batch = random_affine(batch, background=background, generator=augment_rng)
            loss = nn.functional.cross_entropy(
                model(batch), train_y[index], label_smoothing=config.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
            loss_sum += loss_value * len(index)
            elapsed = time.perf_counter() - started
            done = min((step + 1) * config.batch_size, len(train_split)) - first * config.batch_size
            callback.on_batch(
                epoch=epoch,
                step=step + 1,
                steps=steps,
                loss=loss_value,
                rate=done / max(elapsed, 1e-9),
            )
            if stop.raised:
                save_last(epoch, step + 1, loss_sum, seconds_before + elapsed)
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch + 1}, batch {step + 1}/{steps}; "
                    f"saved {last_path}",
                    hint=f"continue with `mnist train --resume --out {last_path.parent}`",
                )
        train_seconds = time.perf_counter() - started
        val_loss, val_accuracy = score(model, val_x, val_y)
        seconds = seconds_before + time.perf_counter() - started
        trained_images = len(train_split) - first * config.batch_size
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_sum / len(train_split),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=lr,
            seconds=seconds,
            images_per_second=trained_images / max(train_seconds, 1e-9),
        )
        history.append(record)
        improved = val_accuracy > best_acc
        if improved:
            best_acc, best_epoch = val_accuracy, epoch + 1
            save_checkpoint(payload(epoch + 1, 0, val_accuracy), best_path)
        save_last(epoch + 1, 0, 0.0, 0.0)
        callback.on_epoch(record, best=improved)
        if stop.raised:
            raise TrainingInterrupted(
                f"interrupted after epoch {epoch + 1}; saved {last_path}",
                hint=f"continue with `mnist train --resume --out {last_path.parent}`",
            )
    if not best_path.is_file():
        save_checkpoint(payload(config.epochs, 0, best_acc), best_path)
    return TrainResult(best_path, last_path, best_epoch, best_acc, str(device), history)
