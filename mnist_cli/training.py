"""Training: the recipe (a frozen config), the loop, checkpoints each epoch, Ctrl-C and resume."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_cli import __version__
from mnist_cli.augmentation import random_affine
from mnist_cli.backends import network_from_checkpoint, restore_optimizer
from mnist_cli.checkpoints import (
    Checkpoint,
    EpochRecord,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from mnist_cli.data import CLASS_LABELS, NORMALIZATION, Split, load_split, split_train_validation
from mnist_cli.devices import resolve_device
from mnist_cli.errors import (
    CheckpointError,
    OptionError,
    OutputError,
    TrainingDiverged,
    TrainingInterrupted,
)
from mnist_cli.files import atomic_write, exclusive_folder
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


_COUNTS = ("epochs", "batch_size", "validation_size")


def default_config(model: str = "cnn", **overrides: Any) -> TrainConfig:
    """The recipe for `model`, with any field replaced by a keyword that is not None."""
    if model not in RECIPES:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(RECIPES)}")
    config = replace(RECIPES[model], **{k: v for k, v in overrides.items() if v is not None})
    check_config(config)
    return config


def check_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first field of the wrong type or out of its range."""
    for item in fields(TrainConfig):
        value, kind = getattr(config, item.name), type(getattr(RECIPES["cnn"], item.name))
        fits = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not fits or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{_option(item.name)} must be a {kind.__name__}, not {value!r}")
    for name in _COUNTS:
        if getattr(config, name) < 1:
            raise ValueError(f"{_option(name)} must be at least 1")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr must be a positive finite number, not {config.lr}")
    limits = {"weight_decay": (0, 1), "label_smoothing": (0, 0.99), "warmup": (0, 1)}
    for name, (low, high) in limits.items():
        if not low <= getattr(config, name) <= high:
            raise ValueError(f"{_option(name)} must be between {low} and {high}")
    if config.seed < 0 or config.model not in RECIPES:
        raise ValueError(f"seed {config.seed} or model {config.model!r} is not valid")


def _option(name: str) -> str:
    return name.replace("_", "-")


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
    """Turns the first Ctrl-C or SIGTERM into a flag the loop checks between batches.

    A second Ctrl-C stops at once; `exit_code` is 128 + the signal (130 or 143).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.raised = False
        self.exit_code = 130
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised, self.exit_code = True, 128 + signum

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float N x 1 x 28 x 28, scaled to [0, 1] then standardised."""
    scaled = images.unsqueeze(1).float().div_(255)
    return scaled.sub_(NORMALIZATION["mean"]).div_(NORMALIZATION["std"])


def _to_device(split: Split, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    images = normalize(torch.from_numpy(split.images).to(device))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.from_numpy(split.labels).to(device)


@dataclass(frozen=True)
class Acceleration:
    """How to compute, not what: none of these changes the recipe."""

    channels_last: bool  # NHWC convolutions: faster for the cnn on CPU and CUDA alike
    bf16: bool  # autocast matrix work to bfloat16 (CUDA only)
    compile: bool  # torch.compile the network (opt-in: it costs start-up time)
    fused_optimizer: bool  # one fused AdamW kernel per step (CUDA only)


def default_acceleration(
    device: torch.device, model: str, *, compile: bool = False
) -> Acceleration:
    """The settings measured to help on `device` (benchmarks/gpu_check.py for CUDA)."""
    # On an H100 this small net is bound by kernel launches, not arithmetic: bf16 autocast,
    # fused AdamW and torch.compile measured no gain there.
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
    overwrite: bool = False,
) -> TrainResult:
    """Train a model, writing `last.pt` every epoch and `best.pt` at the best validation score.

    With `resume=True` the run continues from `out_dir/last.pt` with its saved config. A new
    run refuses an `out_dir` that holds one unless `overwrite=True`; the old files are then
    replaced when the new run saves its first epoch.
    """
    if resume and overwrite:
        raise OptionError("--resume continues the run in --out-dir; --overwrite starts it again")
    out_dir = Path(out_dir)
    torch_device = resolve_device(device)
    saved = _resume_point(out_dir / "last.pt") if resume else None
    config = _saved_config(saved) if saved else (config or default_config())
    acceleration = acceleration or default_acceleration(torch_device, config.model, compile=compile)
    with exclusive_folder(out_dir), _StopFlag() as stop:
        if not (resume or overwrite):
            _refuse_existing_run(out_dir)
        run = _start(config, acceleration, torch_device, Path(data_dir), saved)
        run.out_dir, run.callback, run.stop = out_dir, callback or TrainCallback(), stop
        if saved:
            _restore(run, saved)
        return _loop(run)


def _refuse_existing_run(out_dir: Path) -> None:
    found = [name for name in ("last.pt", "best.pt") if (out_dir / name).exists()]
    if found:
        raise OutputError(
            f"--out-dir {out_dir} already holds a run ({', '.join(found)}); nothing was changed",
            hint="continue it with --resume, start again with --overwrite, "
            "or choose another --out-dir",
        )


def _resume_point(last_path: Path) -> Checkpoint:
    """The checked last.pt that --resume continues from."""
    if not last_path.is_file():
        raise CheckpointError(
            f"--resume: no {last_path} to continue from", hint="start a new run without --resume"
        )
    try:
        saved = load_checkpoint(last_path)
    except CheckpointError as error:
        raise CheckpointError(f"--resume: {error.message}", hint=_FRESH_START) from None
    if not saved.resumable:
        raise CheckpointError(f"--resume: {last_path} holds no optimiser state", hint=_FRESH_START)
    return saved


_FRESH_START = "start a new run without --resume (or in another --out-dir)"


def _saved_config(saved: Checkpoint) -> TrainConfig:
    """The TrainConfig stored in a last.pt, checked as strictly as one typed by the user."""
    known = {f.name for f in fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in saved.options.items() if k in known})
        check_config(config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"--resume: its saved options are damaged ({error})") from None
    if config.model != saved.architecture:
        raise CheckpointError(
            f"--resume: options say {config.model!r} but the weights are {saved.architecture!r}"
        )
    return config


@dataclass
class _Run:
    """The live objects of one run; the loop functions below read and update them."""

    config: TrainConfig
    accel: Acceleration
    device: torch.device
    arguments: dict[str, Any]
    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    augment_rng: torch.Generator
    data: tuple[torch.Tensor, ...]  # train images, train labels, validation images and labels
    state: TrainState
    out_dir: Path = Path("params")
    callback: TrainCallback = field(default_factory=TrainCallback)
    stop: _StopFlag = field(default_factory=_StopFlag)

    @property
    def steps(self) -> int:
        return math.ceil(len(self.data[1]) / self.config.batch_size)

    def interrupted(self, where: str) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"interrupted {where}; saved {self.out_dir / 'last.pt'}",
            hint=f"continue with `mnist train --resume --out-dir {self.out_dir}`",
            exit_code=self.stop.exit_code,
        )

    def diverged(self, where: str, loss: float) -> TrainingDiverged:
        kept = "kept as they were" if (self.out_dir / "best.pt").exists() else "not written"
        return TrainingDiverged(
            f"training diverged {where} (loss {loss}); stopped, nothing from this epoch was "
            f"saved, {self.out_dir}/best.pt and last.pt are {kept}",
            hint=f"lower the learning rate (--lr, now {self.config.lr:g})",
        )


def _start(
    config: TrainConfig,
    accel: Acceleration,
    device: torch.device,
    data_dir: Path,
    saved: Checkpoint | None,
) -> _Run:
    """Load the data, then build (or restore) the model, optimiser and augmentation state."""
    train_split, val_split = split_train_validation(
        load_split(data_dir, "train"), config.validation_size, config.seed
    )
    data = (
        *_to_device(train_split, device, accel.channels_last),
        *_to_device(val_split, device, accel.channels_last),
    )
    torch.manual_seed(config.seed)  # initial weights
    arguments = saved.arguments if saved else default_arguments(config.model)
    model = network_from_checkpoint(saved) if saved else build_model(config.model, arguments)
    model = model.to(device)
    if accel.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        fused=accel.fused_optimizer or None,
    )
    # Augmentation draws from its own generator, saved with last.pt: nothing else shifts it.
    augment_rng = torch.Generator(device=device).manual_seed(config.seed)
    return _Run(
        config,
        accel,
        device,
        arguments,
        model,
        torch.compile(model) if accel.compile else model,
        optimizer,
        augment_rng,
        data,
        TrainState(),
    )


def _restore(run: _Run, saved: Checkpoint) -> None:
    """Put a last.pt's optimiser, progress and augmentation state into a fresh run."""
    where = f"--resume: {run.out_dir / 'last.pt'}"
    try:
        restore_optimizer(run.optimizer, saved)
    except CheckpointError as error:
        raise CheckpointError(f"{where}: {error.message}", hint=_FRESH_START) from None
    if saved.state.step > run.steps:
        raise CheckpointError(
            f"{where}: its step {saved.state.step} is past the {run.steps} steps of an epoch",
            hint=_FRESH_START,
        )
    run.state = saved.state
    try:
        run.augment_rng.set_state(saved.augment_rng)
    except (RuntimeError, TypeError):  # saved on another kind of device: reseed
        run.augment_rng.manual_seed(run.config.seed + saved.state.epoch)


def _loop(run: _Run) -> TrainResult:
    """Train the remaining epochs, validating and saving after each."""
    config, state = run.config, run.state
    run.callback.on_start(
        config=config, device=str(run.device), start_epoch=state.epoch, steps=run.steps
    )
    for epoch in range(state.epoch, config.epochs):
        started, first, seconds_before = time.perf_counter(), state.step, state.partial_seconds
        loss_sum, lr = _train_epoch(run, epoch)
        train_seconds = time.perf_counter() - started
        val_loss, val_accuracy = _validate(run)
        if not (math.isfinite(loss_sum) and math.isfinite(val_loss)):
            raise run.diverged(
                f"in epoch {epoch + 1}", val_loss if math.isfinite(loss_sum) else loss_sum
            )
        images = len(run.data[1]) - first * config.batch_size
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_sum / len(run.data[1]),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=lr,
            seconds=seconds_before + time.perf_counter() - started,
            images_per_second=images / max(train_seconds, 1e-9),
        )
        improved = _end_epoch(run, record)
        run.callback.on_epoch(record, best=improved)
        if run.stop.raised:
            raise run.interrupted(f"after epoch {epoch + 1}")
    best_path = run.out_dir / "best.pt"
    if not best_path.is_file():
        save_checkpoint(_checkpoint(run, state.best_val_accuracy, resumable=False), best_path)
    return TrainResult(
        best_path,
        run.out_dir / "last.pt",
        state.best_epoch,
        state.best_val_accuracy,
        str(run.device),
        state.history,
    )


def _end_epoch(run: _Run, record: EpochRecord) -> bool:
    """Record a finished epoch, save best.pt if it improved and last.pt always."""
    state = run.state
    state.epoch, state.step, state.partial_loss, state.partial_seconds = record.epoch, 0, 0.0, 0.0
    state.history.append(record)
    improved = record.val_accuracy > state.best_val_accuracy
    if improved:
        state.best_val_accuracy, state.best_epoch = record.val_accuracy, record.epoch
        save_checkpoint(
            _checkpoint(run, record.val_accuracy, resumable=False), run.out_dir / "best.pt"
        )
    save_checkpoint(_checkpoint(run, record.val_accuracy, resumable=True), run.out_dir / "last.pt")
    _write_history(state.history, run.out_dir)
    return improved


def _write_history(history: list[EpochRecord], out_dir: Path) -> None:
    """OUT/history.csv (one row per epoch) and OUT/history.png (the curves), atomically."""
    from mnist_cli.plots import save_history_plot

    names = [f.name for f in fields(EpochRecord)]
    rows = [",".join(names)] + [",".join(str(getattr(r, n)) for n in names) for r in history]
    csv = "\n".join(rows) + "\n"
    atomic_write(out_dir / "history.csv", lambda handle: handle.write(csv.encode()))
    save_history_plot(history, out_dir / "history.png")


def _validate(run: _Run) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the validation split, in chunks, in eval mode."""
    images, labels = run.data[2], run.data[3]
    run.model.eval()
    with torch.no_grad():
        logits = torch.cat([run.model(images[i : i + 1000]) for i in range(0, len(images), 1000)])
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def _train_epoch(run: _Run, epoch: int) -> tuple[float, float]:
    """Run the steps of one epoch from `state.step`; return the summed loss and the last lr."""
    config, state, steps = run.config, run.state, run.steps
    first, loss_before, seconds_before = state.step, state.partial_loss, state.partial_seconds
    run.model.train()
    order = _batch_order(len(run.data[1]), config.seed, epoch).to(run.device)
    loss_total = torch.zeros((), device=run.device)
    started, lr = time.perf_counter(), 0.0
    for step in range(first, steps):
        lr = one_cycle_lr(epoch * steps + step, steps * config.epochs, config.lr, config.warmup)
        index = order[step * config.batch_size : (step + 1) * config.batch_size]
        loss = _step(run, index, lr)
        loss_total += loss.detach() * len(index)
        done = step + 1
        if done % _REPORT_EVERY == 0 or done == steps or run.stop.raised:
            value = loss.item()  # syncs a GPU: only every few steps
            if not math.isfinite(value):
                raise run.diverged(f"in epoch {epoch + 1}, batch {done}/{steps}", value)
            images = min(done * config.batch_size, len(run.data[1])) - first * config.batch_size
            elapsed = time.perf_counter() - started
            run.callback.on_batch(
                epoch=epoch, step=done, steps=steps, loss=value, rate=images / elapsed
            )
        if run.stop.raised:
            state.step, state.partial_loss = done, loss_before + loss_total.item()
            state.partial_seconds = seconds_before + time.perf_counter() - started
            last_accuracy = state.history[-1].val_accuracy if state.history else 0.0
            save_checkpoint(
                _checkpoint(run, last_accuracy, resumable=True), run.out_dir / "last.pt"
            )
            raise run.interrupted(f"in epoch {epoch + 1}, batch {done}/{steps}")
    return loss_before + loss_total.item(), lr


_BACKGROUND = -NORMALIZATION["mean"] / NORMALIZATION["std"]  # a blank pixel, normalised


def _step(run: _Run, index: torch.Tensor, lr: float) -> torch.Tensor:
    """One optimiser step on the batch `index`; returns its loss (on the device)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    batch = run.data[0][index]
    if run.config.augment:
        batch = random_affine(batch, background=_BACKGROUND, generator=run.augment_rng)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.accel.bf16):
        loss = nn.functional.cross_entropy(
            run.forward(batch), run.data[1][index], label_smoothing=run.config.label_smoothing
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss


def _checkpoint(run: _Run, val_accuracy: float, *, resumable: bool) -> Checkpoint:
    """The run as a Checkpoint; `resumable` adds the optimiser and augmentation state."""
    weights = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    if not all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()):
        raise run.diverged(f"after {run.state.epoch} epochs", math.nan)  # never saved non-finite
    return Checkpoint(
        architecture=run.config.model,
        arguments=run.arguments,
        state_dict=weights,
        normalization=dict(NORMALIZATION),
        class_labels=list(CLASS_LABELS),
        val_accuracy=val_accuracy,
        options={
            **asdict(run.config),
            "device": str(run.device),
            "acceleration": asdict(run.accel),
        },
        state=replace(run.state, history=list(run.state.history)),
        mnist_cli_version=__version__,
        optimizer=run.optimizer.state_dict() if resumable else None,
        augment_rng=run.augment_rng.get_state() if resumable else None,
    )
