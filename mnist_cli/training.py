"""Training: the recipe (a frozen config), the loop, checkpoints each epoch, Ctrl-C and resume."""

from __future__ import annotations

import math
import signal
import threading
import time
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
from mnist_cli.errors import CheckpointError, TrainingInterrupted
from mnist_cli.evaluation import normalize, score
from mnist_cli.files import exclusive_folder
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


@dataclass(frozen=True)
class Acceleration:
    """How to compute, not what: none of these changes the recipe."""

    channels_last: bool  # NHWC convolutions: ~1.3x faster on CPU, ~1.05x on an H100
    bf16: bool  # autocast matrix work to bfloat16 (CUDA only)
    compile: bool  # torch.compile the network (opt-in: it costs start-up time)
    fused_optimizer: bool  # one fused AdamW kernel per step (CUDA only)


def default_acceleration(
    device: torch.device, model: str, *, compile: bool = False
) -> Acceleration:
    """The settings measured to help on `device` (benchmarks/gpu_check.py for CUDA)."""
    # On an H100 this ~24k-weight net is bound by kernel launches, not arithmetic: bf16
    # autocast (0.95 vs 0.85 s/epoch), fused AdamW and torch.compile measured no gain there.
    return Acceleration(
        channels_last=model == "cnn",
        bf16=False,
        compile=compile,
        fused_optimizer=False,
    )


_REPORT_EVERY = 10  # steps between progress callbacks: reading the loss syncs a GPU


def train(
    config: TrainConfig | None = None,
    *,
    data_dir: Path | str = "datafiles",
    out_dir: Path | str = "params",
    device: str = "auto",
    resume: bool = False,
    callback: TrainCallback | None = None,
    compile: bool = False,
    acceleration: Acceleration | None = None,
) -> TrainResult:
    """Train a model, writing `last.pt` every epoch and `best.pt` at the best validation score.

    With `resume=True` the run continues from `out_dir/last.pt` with its saved config.
    """
    out_dir = Path(out_dir)
    torch_device = resolve_device(device)
    last_path = out_dir / "last.pt"
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
    acceleration = acceleration or default_acceleration(torch_device, config.model, compile=compile)
    with exclusive_folder(out_dir), _StopFlag() as stop:
        run = _Run(config, acceleration, torch_device, out_dir, callback or TrainCallback(), stop)
        return run.execute(Path(data_dir), saved)


class _Run:
    """One training run: model, optimiser and progress, and the checkpoints they make."""

    def __init__(
        self,
        config: TrainConfig,
        acceleration: Acceleration,
        device: torch.device,
        out_dir: Path,
        callback: TrainCallback,
        stop: _StopFlag,
    ) -> None:
        self.config, self.accel, self.device = config, acceleration, device
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best.pt"
        self.callback, self.stop = callback, stop
        self.history: list[EpochRecord] = []
        self.best_acc, self.best_epoch = -1.0, 0

    def _build(self, saved: dict[str, Any] | None) -> None:
        config, device = self.config, self.device
        torch.manual_seed(config.seed)  # initial weights
        # Augmentation draws from its own generator, saved with last.pt: nothing else shifts it.
        self.augment_rng = torch.Generator(device=device).manual_seed(config.seed)
        self.arguments = saved["arguments"] if saved else default_arguments(config.model)
        model = model_from_checkpoint(saved) if saved else build_model(config.model, self.arguments)
        self.model = model.to(device)
        if self.accel.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if self.accel.compile else self.model
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=self.accel.fused_optimizer or None,
        )

    def _payload(self, epoch: int, step: int, val_accuracy: float) -> dict[str, Any]:
        return {
            "mnist_cli_version": __version__,
            "architecture": self.config.model,
            "arguments": self.arguments,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "normalization": dict(NORMALIZATION),
            "class_labels": list(CLASS_LABELS),
            "epoch": epoch,
            "step": step,
            "val_accuracy": val_accuracy,
            "best_val_accuracy": max(self.best_acc, val_accuracy),
            "best_epoch": self.best_epoch,
            "options": {
                **asdict(self.config),
                "device": str(self.device),
                "acceleration": asdict(self.accel),
            },
            "history": [asdict(row) for row in self.history],
        }

    def _save_last(self, epoch: int, step: int, loss_sum: float, seconds: float) -> None:
        state = self._payload(epoch, step, self.history[-1].val_accuracy if self.history else 0.0)
        state.update(
            optimizer=self.optimizer.state_dict(),
            augment_rng=self.augment_rng.get_state(),
            partial_loss=loss_sum,
            partial_seconds=seconds,
        )
        save_checkpoint(state, self.last_path)

    def _interrupted(self, where: str) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"interrupted {where}; saved {self.last_path}",
            hint=f"continue with `mnist train --resume --out {self.last_path.parent}`",
        )

    def execute(self, data_dir: Path, saved: dict[str, Any] | None) -> TrainResult:
        config, device = self.config, self.device
        train_split, val_split = split_train_validation(
            load_split(data_dir, "train"), config.validation_size, config.seed
        )
        self.train_x, self.train_y = _to_device(train_split, device, self.accel.channels_last)
        val_x, val_y = _to_device(val_split, device, self.accel.channels_last)
        self._build(saved)
        self.steps = math.ceil(len(train_split) / config.batch_size)

        start_epoch, start_step, partial_loss, partial_seconds = 0, 0, 0.0, 0.0
        if saved:
            self.optimizer.load_state_dict(saved["optimizer"])
            self.history = [EpochRecord(**row) for row in saved["history"]]
            start_epoch, start_step = saved["epoch"], saved["step"]
            self.best_acc, self.best_epoch = saved["best_val_accuracy"], saved["best_epoch"]
            partial_loss, partial_seconds = saved["partial_loss"], saved["partial_seconds"]
            try:
                self.augment_rng.set_state(saved["augment_rng"])
            except (RuntimeError, KeyError):  # saved on another kind of device: reseed
                self.augment_rng.manual_seed(config.seed + start_epoch)

        self.callback.on_start(
            config=config, device=str(device), start_epoch=start_epoch, steps=self.steps
        )
        for epoch in range(start_epoch, config.epochs):
            resuming = epoch == start_epoch
            first = start_step if resuming else 0
            started = time.perf_counter()
            loss_sum, lr = self._train_epoch(
                epoch,
                first,
                partial_loss if resuming else 0.0,
                partial_seconds if resuming else 0.0,
            )
            train_seconds = time.perf_counter() - started
            val_loss, val_accuracy = score(self.model, val_x, val_y)
            record = EpochRecord(
                epoch=epoch + 1,
                train_loss=loss_sum / len(train_split),
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                lr=lr,
                seconds=(partial_seconds if resuming else 0.0) + time.perf_counter() - started,
                images_per_second=(len(train_split) - first * config.batch_size)
                / max(train_seconds, 1e-9),
            )
            self.history.append(record)
            improved = val_accuracy > self.best_acc
            if improved:
                self.best_acc, self.best_epoch = val_accuracy, epoch + 1
                save_checkpoint(self._payload(epoch + 1, 0, val_accuracy), self.best_path)
            self._save_last(epoch + 1, 0, 0.0, 0.0)
            self.callback.on_epoch(record, best=improved)
            if self.stop.raised:
                raise self._interrupted(f"after epoch {epoch + 1}")
        if not self.best_path.is_file():
            save_checkpoint(self._payload(config.epochs, 0, self.best_acc), self.best_path)
        return TrainResult(
            self.best_path,
            self.last_path,
            self.best_epoch,
            self.best_acc,
            str(device),
            self.history,
        )

    def _train_epoch(
        self, epoch: int, first: int, loss_before: float, seconds_before: float
    ) -> tuple[float, float]:
        """Run the steps of one epoch from `first`; return the summed loss and the last lr."""
        config, steps = self.config, self.steps
        background = -NORMALIZATION["mean"] / NORMALIZATION["std"]  # a blank pixel, normalised
        self.model.train()
        order = _batch_order(len(self.train_y), config.seed, epoch).to(self.device)
        loss_total = torch.zeros((), device=self.device)
        started = time.perf_counter()
        lr = 0.0
        for step in range(first, steps):
            lr = one_cycle_lr(epoch * steps + step, steps * config.epochs, config.lr, config.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = self.train_x[index]
            if config.augment:
                batch = random_affine(batch, background=background, generator=self.augment_rng)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.accel.bf16):
                loss = nn.functional.cross_entropy(
                    self.forward(batch),
                    self.train_y[index],
                    label_smoothing=config.label_smoothing,
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_total += loss.detach() * len(index)
            done = step + 1
            if done % _REPORT_EVERY == 0 or done == steps or self.stop.raised:
                elapsed = time.perf_counter() - started
                images = (
                    min(done * config.batch_size, len(self.train_y)) - first * config.batch_size
                )
                self.callback.on_batch(
                    epoch=epoch,
                    step=done,
                    steps=steps,
                    loss=loss.item(),
                    rate=images / max(elapsed, 1e-9),
                )
            if self.stop.raised:
                self._save_last(
                    epoch,
                    done,
                    loss_before + loss_total.item(),
                    seconds_before + time.perf_counter() - started,
                )
                raise self._interrupted(f"in epoch {epoch + 1}, batch {done}/{steps}")
        return loss_before + loss_total.item(), lr
