"""Training: the recipe (a frozen config), the loop, checkpoints each epoch, Ctrl-C and resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_cli import distributed, runfolder
from mnist_cli.acceleration import Acceleration, default_acceleration
from mnist_cli.augmentation import NOISE_COLUMNS
from mnist_cli.averaging import WeightAverage
from mnist_cli.checkpoints import (
    Checkpoint,
    EpochRecord,
    TrainState,
    network_from_checkpoint,
    save_checkpoint,
)
from mnist_cli.cudagraph import GraphedStep
from mnist_cli.data import (
    NORMALIZATION,
    Split,
    load_split,
    split_train_validation,
)
from mnist_cli.devices import resolve_device
from mnist_cli.errors import (
    CheckpointError,
    OptionError,
    TrainingDiverged,
    TrainingInterrupted,
)
from mnist_cli.files import check_writable, exclusive_folder
from mnist_cli.models import build_model, default_arguments
from mnist_cli.options import DATA_DIR, RUN_DIR
from mnist_cli.recipes import TrainConfig, default_config
from mnist_cli.resume import FRESH_START, restore_optimizer, resume_point, saved_config
from mnist_cli.step import batch_loss, batch_order, one_cycle_lr
from mnist_cli.stopping import StopFlag


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

    def on_start(
        self, *, config: TrainConfig, device: str, start_epoch: int, start_step: int, steps: int
    ) -> None:
        pass

    def on_batch(self, *, epoch: int, step: int, steps: int, loss: float, rate: float) -> None:
        pass

    def on_epoch(self, record: EpochRecord, *, best: bool) -> None:
        pass


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float N x 1 x 28 x 28, scaled to [0, 1] then standardised."""
    scaled = images.unsqueeze(1).float().div_(255)
    return scaled.sub_(NORMALIZATION["mean"]).div_(NORMALIZATION["std"])


def _to_device(split: Split, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    images = normalize(torch.from_numpy(split.images).to(device))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.from_numpy(split.labels).to(device)


# Steps between progress callbacks: reading the loss makes the host wait for a GPU.
_REPORT_EVERY = {"cpu": 10, "cuda": 50}


def train(
    config: TrainConfig | None = None,
    *,
    data_dir: Path | str = DATA_DIR,
    out_dir: Path | str = RUN_DIR,
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
    saved = resume_point(out_dir / "last.pt") if resume else None
    config = saved_config(saved, out_dir / "last.pt") if saved else (config or default_config())
    acceleration = acceleration or default_acceleration(torch_device, config.model, compile=compile)
    cluster = distributed.SOLO
    if distributed.launched_by_torchrun():
        if config.batch_size % distributed.world_size():
            raise OptionError(
                f"--batch-size {config.batch_size} is the global batch: it must split evenly "
                f"over the {distributed.world_size()} processes"
            )
        cluster, torch_device = distributed.join(torch_device)
        # DDP's gradient hooks run outside a captured graph: distributed steps run eagerly.
        acceleration = replace(acceleration, cuda_graphs=False, compile=False)
    try:
        owned = exclusive_folder(out_dir) if cluster.main else nullcontext()  # rank 0 writes
        with owned, StopFlag() as stop:
            main = cluster.main
            old_run = main and runfolder.holds_a_run(out_dir)
            if old_run and not (resume or overwrite):
                runfolder.refuse_existing_run(out_dir)
            if main:
                for name in runfolder.OUTPUTS:
                    check_writable(out_dir / name, option="--out-dir")
            run = _start(config, acceleration, torch_device, Path(data_dir), saved, cluster)
            run.out_dir, run.callback, run.stop = out_dir, callback or TrainCallback(), stop
            run.replacing = overwrite and old_run
            if saved:
                _restore(run, saved)
            cluster.barrier()  # rank 0 has checked the folder before anyone trains
            return _loop(run)
    except (RuntimeError, distributed.RankFailed) as error:
        if cluster.alone:
            raise
        raise peer_lost(error, out_dir) from None
    finally:
        cluster.leave()


def peer_lost(error: Exception, out_dir: Path) -> distributed.RankFailed:
    """What to say when another torchrun process died: --resume only if a last.pt exists."""
    lost = error if isinstance(error, distributed.RankFailed) else distributed.peer_lost(error)
    lost.hint = f"{lost.hint}; " + (
        f"then continue with `mnist train --resume --out-dir {out_dir}`"
        if (out_dir / "last.pt").is_file()
        else f"no last.pt was saved in {out_dir}: start the run again"
    )
    return lost


def _where(run: _Run) -> str:
    """The device, and under torchrun how the global batch is split."""
    if run.cluster.alone:
        return str(run.device)
    world, batch = run.cluster.world_size, run.config.batch_size
    return (
        f"{world} processes on {run.device.type} ({run.cluster.backend}): global batch "
        f"{batch} = {world} x {batch // world} per process, the recipe's batch and lr kept"
    )


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
    out_dir: Path = RUN_DIR
    callback: TrainCallback = field(default_factory=TrainCallback)
    stop: StopFlag = field(default_factory=StopFlag)
    graph: GraphedStep | None = None  # captured at the first full batch, when enabled
    plotted_at: float = -math.inf  # perf_counter() of the last history.png
    cluster: distributed.Cluster = distributed.SOLO  # under torchrun, this process's place
    average: WeightAverage | None = None  # what is validated and saved, when the recipe has one
    replacing: bool = False  # --overwrite on an old run whose files stay until epoch 1 ends

    @property
    def kept(self) -> nn.Module:
        """The network that is validated and saved: the weights' average, or the weights."""
        return self.average.network if self.average else self.model

    @property
    def main(self) -> bool:
        return self.cluster.main

    @property
    def steps(self) -> int:
        return math.ceil(len(self.data[1]) / self.config.batch_size)

    def interrupted(self, where: str) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"interrupted {where}; saved {self.out_dir / 'last.pt'}",
            hint=f"continue with `mnist train --resume --out-dir {self.out_dir}`",
            exit_code=self.stop.exit_code,
        )

    def interrupted_before_saving(self, where: str) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"interrupted {where}, before the new run's first epoch ended; nothing was saved "
            f"and the run already in {self.out_dir} is unchanged",
            hint=f"start again with `mnist train --overwrite --out-dir {self.out_dir}`",
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
    cluster: distributed.Cluster = distributed.SOLO,
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
        # A graph reads the learning rate from a tensor; a float would be frozen into it.
        lr=torch.tensor(config.lr, device=device) if accel.cuda_graphs else config.lr,
        weight_decay=config.weight_decay,
        fused=accel.fused_optimizer or None,
        capturable=accel.cuda_graphs,
    )
    # Augmentation draws from its own generator, saved with last.pt: nothing else shifts it.
    # Under torchrun each rank draws its own numbers.
    rank = cluster.rank
    augment_rng = torch.Generator(device=device).manual_seed(config.seed + 1_000_003 * rank)
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if not cluster.alone:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    elif accel.compile:
        forward = torch.compile(model)
    keeps = config.weight_average and cluster.main  # rank 0 saves alone
    average = WeightAverage(model, config.weight_average) if keeps else None
    return _Run(
        config,
        accel,
        device,
        arguments,
        model,
        forward,
        optimizer,
        augment_rng,
        data,
        TrainState(),
        cluster=cluster,
        average=average,
    )


def _restore(run: _Run, saved: Checkpoint) -> None:
    """Put a last.pt's optimiser, progress and augmentation state into a fresh run."""
    where = f"--resume: {run.out_dir / 'last.pt'}"
    try:
        restore_optimizer(run.optimizer, saved)
    except CheckpointError as error:
        raise CheckpointError(f"{where}: {error.message}", hint=FRESH_START) from None
    if saved.state.step > run.steps:
        raise CheckpointError(
            f"{where}: its step {saved.state.step} is past the {run.steps} steps of an epoch",
            hint=FRESH_START,
        )
    run.state = saved.state
    if saved.training_weights is not None:  # state_dict, loaded already, is their average
        run.model.load_state_dict(saved.training_weights)
    try:
        if not run.main:
            raise RuntimeError("last.pt holds rank 0's generator")
        run.augment_rng.set_state(saved.augment_rng)
    except (RuntimeError, TypeError):  # saved on another kind of device: reseed
        rank = run.cluster.rank
        run.augment_rng.manual_seed(run.config.seed + saved.state.epoch + 1_000_003 * rank)


def _loop(run: _Run) -> TrainResult:
    """Train the remaining epochs, validating and saving after each."""
    config, state = run.config, run.state
    run.callback.on_start(
        config=config,
        device=_where(run),
        start_epoch=state.epoch,
        start_step=state.step,
        steps=run.steps,
    )
    for epoch in range(state.epoch, config.epochs):
        started, first, seconds_before = time.perf_counter(), state.step, state.partial_seconds
        loss_sum, lr = _train_epoch(run, epoch)
        train_seconds = time.perf_counter() - started
        if not run.main:  # rank 0 validates and saves; the others wait for its verdict
            state.epoch, state.step, state.partial_seconds = epoch + 1, 0, 0.0
            _epoch_verdict(run, epoch, diverged=False)
            continue
        val_loss, val_accuracy = _validate(run)
        finite, stop = math.isfinite(loss_sum) and math.isfinite(val_loss), run.stop.raised
        # Under torchrun a signal that comes later is agreed on at the next report step.
        bad, stop = run.cluster.agree(run.device, not finite, stop)
        finite = not bad
        if not finite:
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
        run.cluster.barrier()  # the others exit or go on once the files are written
        if stop or (run.stop.raised and run.cluster.alone):
            raise run.interrupted(f"after epoch {epoch + 1}")
    run.cluster.barrier()  # everyone has finished before rank 0 writes the last file
    best_path = run.out_dir / "best.pt"
    if run.main and not best_path.is_file():  # removed meanwhile: the last weights, their score
        last_accuracy = state.history[-1].val_accuracy if state.history else 0.0
        save_checkpoint(runfolder.checkpoint(run, last_accuracy, resumable=False), best_path)
    return TrainResult(
        best_path,
        run.out_dir / "last.pt",
        state.best_epoch,
        state.best_val_accuracy,
        str(run.device),
        state.history,
    )


def _epoch_verdict(run: _Run, epoch: int, *, diverged: bool) -> None:
    """A rank other than 0 at the end of an epoch: stop as rank 0 and the signals say."""
    diverged, stop = run.cluster.agree(run.device, diverged, run.stop.raised)
    if diverged:
        raise run.diverged(f"in epoch {epoch + 1}", math.nan)
    run.cluster.barrier()  # rank 0 has saved
    if stop:
        raise run.interrupted(f"after epoch {epoch + 1}")


def _end_epoch(run: _Run, record: EpochRecord) -> bool:
    """Record a finished epoch; save its files (best.pt too if it improved) and the curves."""
    state = run.state
    state.epoch, state.step, state.partial_loss, state.partial_seconds = record.epoch, 0, 0.0, 0.0
    state.history.append(record)
    # A tie goes to the later epoch: as good on validation, and trained longer.
    improved = record.val_accuracy >= state.best_val_accuracy
    if improved:
        state.best_val_accuracy, state.best_epoch = record.val_accuracy, record.epoch
    runfolder.save_epoch(run, record, improved=improved)
    run.replacing = False
    last = record.epoch == run.config.epochs or run.stop.raised
    if last or time.perf_counter() - run.plotted_at >= _PLOT_EVERY_SECONDS:
        runfolder.save_curves(run)
        run.plotted_at = time.perf_counter()
    return improved


# Drawing history.png takes longer than a whole epoch on a GPU: redraw it at most this often.
_PLOT_EVERY_SECONDS = 10.0


def _validate(run: _Run) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the validation split, in chunks, in eval mode."""
    images, labels, network = run.data[2], run.data[3], run.kept
    network.eval()
    with torch.no_grad():
        logits = torch.cat([network(images[i : i + 1000]) for i in range(0, len(images), 1000)])
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def _train_epoch(run: _Run, epoch: int) -> tuple[float, float]:
    """Run the steps of one epoch from `state.step`; return the summed loss and the last lr."""
    config, state, steps, cluster = run.config, run.state, run.steps, run.cluster
    first, loss_before = state.step, state.partial_loss
    run.model.train()
    order = batch_order(len(run.data[1]), config.seed, epoch).to(run.device)
    loss_total = torch.zeros((), device=run.device)
    started, lr = time.perf_counter(), 0.0
    every = _REPORT_EVERY.get(run.device.type, 10)
    for step in range(first, steps):
        lr = one_cycle_lr(epoch * steps + step, steps * config.epochs, config.lr, config.warmup)
        index = order[step * config.batch_size : (step + 1) * config.batch_size]
        if len(index) < cluster.world_size:  # a sliver too small to share out is left
            continue
        index = cluster.shard(index)  # each rank its own share of the global batch
        loss = _step(run, index, lr)
        if run.average:
            run.average.update(epoch * steps + step)
        loss_total += loss.detach() * len(index)
        done = step + 1
        # Under torchrun the ranks agree on stopping at report steps only, all at the same one.
        report = done % every == 0 or done == steps or (run.stop.raised and cluster.alone)
        if report:
            _report(run, epoch, (first, done), loss, started=started)
        if run.stop.raised and report:
            where = f"in epoch {epoch + 1}, batch {done}/{steps}"
            state.step, state.partial_loss = done, loss_before + loss_total.item()
            state.partial_seconds += time.perf_counter() - started
            if run.main and not run.replacing:  # an old run stays whole until epoch 1 ends
                last_accuracy = state.history[-1].val_accuracy if state.history else 0.0
                save_checkpoint(runfolder.checkpoint(run, last_accuracy), run.out_dir / "last.pt")
            cluster.barrier()  # nobody exits before rank 0 has saved
            raise run.interrupted_before_saving(where) if run.replacing else run.interrupted(where)
    total = loss_before + loss_total.item()
    return cluster.total(run.device, total), lr


def _report(run: _Run, epoch: int, steps: tuple[int, int], loss: torch.Tensor, *, started: float):
    """Read the loss (syncing a GPU), check it, agree with the other ranks, call back."""
    first, done = steps
    value = loss.item()
    bad = not math.isfinite(value)
    run.stop.raised, bad = run.cluster.agree(run.device, run.stop.raised, bad)
    if bad:
        raise run.diverged(f"in epoch {epoch + 1}, batch {done}/{run.steps}", value)
    batch = run.config.batch_size
    seen = min(done * batch, len(run.data[1])) - first * batch
    rate = seen / max(time.perf_counter() - started, 1e-9)
    run.callback.on_batch(epoch=epoch, step=done, steps=run.steps, loss=value, rate=rate)


def _step(run: _Run, index: torch.Tensor, lr: float) -> torch.Tensor:
    """One optimiser step on the batch `index`; returns its loss (on the device)."""
    for group in run.optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    images, labels = run.data[0][index], run.data[1][index]
    noise = torch.rand(len(index), NOISE_COLUMNS, device=run.device, generator=run.augment_rng)
    augmenting = run.config.augment and run.state.epoch >= run.config.plain_epochs
    if run.accel.cuda_graphs and len(index) == run.config.batch_size:
        if run.graph is None or run.graph.augments != augmenting:  # captured once per mode
            run.graph = GraphedStep(
                run.model,
                run.optimizer,
                lambda *batch: _loss(run, batch, augmenting=augmenting),
                (images, labels, noise),
                augments=augmenting,
            )
        return run.graph(images, labels, noise)
    loss = _loss(run, (images, labels, noise), augmenting=augmenting)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss


def _loss(run: _Run, batch: tuple[torch.Tensor, ...], *, augmenting: bool) -> torch.Tensor:
    return batch_loss(run.forward, *batch, config=run.config, augmenting=augmenting)
