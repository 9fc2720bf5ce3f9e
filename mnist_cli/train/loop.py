"""One training run: its live objects, and the loop of steps, validation and saving over them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mnist_cli.data import CLASS_LABELS, MODEL_LABELS, Split
from mnist_cli.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from mnist_cli.train import distributed, runfolder
from mnist_cli.train.acceleration import Acceleration
from mnist_cli.train.augmentation import NOISE_COLUMNS
from mnist_cli.train.averaging import WeightAverage
from mnist_cli.train.calibration import calibrate
from mnist_cli.train.checkpoints import (
    Checkpoint,
    EpochRecord,
    TrainState,
    network_from_checkpoint,
    save_checkpoint,
)
from mnist_cli.train.cudagraph import GraphedStep
from mnist_cli.train.datasets import training_data
from mnist_cli.train.finetune import check_fits, load_init
from mnist_cli.train.models import build_model, default_arguments
from mnist_cli.train.recipes import TrainConfig
from mnist_cli.train.resume import FRESH_START, restore_optimizer
from mnist_cli.train.step import batch_loss, batch_order, normalize, one_cycle_lr
from mnist_cli.train.stopping import StopFlag

if TYPE_CHECKING:
    from mnist_cli.train.training import TrainCallback

# Steps between progress callbacks: reading the loss makes the host wait for a GPU.
_REPORT_EVERY = {"cpu": 10, "cuda": 50}

# Drawing history.png takes longer than a whole epoch on a GPU: redraw it at most this often.
_PLOT_EVERY_SECONDS = 10.0


class Run:
    """A run's data, network, optimiser and progress; `loop()` trains its remaining epochs."""

    def __init__(
        self,
        config: TrainConfig,
        accel: Acceleration,
        device: torch.device,
        data_dir: Path,
        *,
        out_dir: Path,
        callback: TrainCallback,
        stop: StopFlag,
        cluster: distributed.Cluster = distributed.SOLO,
        saved: Checkpoint | None = None,
        replacing: bool = False,
    ) -> None:
        """Load the data, then build (or restore from `saved`) the network and optimiser."""
        self.config, self.accel, self.device, self.cluster = config, accel, device, cluster
        self.out_dir, self.callback, self.stop = out_dir, callback, stop
        self.replacing = replacing  # --overwrite on an old run whose files stay until epoch 1
        self.graph: GraphedStep | None = None  # captured at the first full batch, when enabled
        self.plotted_at = -math.inf  # perf_counter() of the last history.png
        # best.pt's, once the run has ended and calibrated it (None: too few errors to fit one)
        self.temperature: float | None = 1.0
        self.state = TrainState()
        data = training_data(config, data_dir)
        self.about, self.warning, self.images_digest = data.about, data.warning, data.images_digest
        if saved and saved.options.get("images_digest", "") != data.images_digest:
            raise CheckpointError(
                f"--resume: the images in {config.images}, or the MNIST replayed from "
                f"{data_dir}, changed since the run started",
                hint="put them back as they were, or start a new run",
            )
        self.labels = list(MODEL_LABELS[1] if config.negatives else CLASS_LABELS)
        # train images, train labels, validation images, validation labels
        self.data = (
            *_to_device(data.train, device, accel.channels_last),
            *_to_device(data.validation, device, accel.channels_last),
        )
        self.calibration = (  # what best.pt's temperature is fitted on, at the end
            _to_device(data.calibration, device, accel.channels_last)
            if data.calibration is not data.validation
            else self.data[2:]
        )
        # The temperature a checkpoint holds until calibration fits one: a fine-tuned model
        # keeps the one it started with.
        self.start_temperature = 1.0
        torch.manual_seed(config.seed)  # initial weights
        if saved:
            self.arguments, model = saved.arguments, network_from_checkpoint(saved)
            self.start_temperature = saved.temperature
        elif config.init:
            start = load_init(config.init)
            check_fits(start, config)
            self.arguments, model = start.arguments, network_from_checkpoint(start)
            self.start_temperature = start.temperature
        else:
            self.arguments: dict[str, Any] = {
                **default_arguments(config.architecture),
                "classes": len(self.labels),
            }
            model = build_model(config.architecture, self.arguments)
        self.model = model.to(device)
        if accel.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = _optimizer(self.model, config, accel, device)
        # Augmentation draws from its own generator, saved with last.pt: nothing else shifts
        # it. Under torchrun each rank draws its own numbers.
        self.augment_rng = torch.Generator(device=device).manual_seed(self._seed(0))
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if not cluster.alone:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids)
        elif accel.compile:
            self.forward = torch.compile(self.model)
        keeps = config.weight_average and cluster.main  # rank 0 saves alone
        # What is validated and saved, when the recipe averages the weights.
        self.average = WeightAverage(self.model, config.weight_average) if keeps else None
        if saved:
            self._restore(saved)

    def _seed(self, epoch: int) -> int:
        return self.config.seed + epoch + 1_000_003 * self.cluster.rank

    def _restore(self, saved: Checkpoint) -> None:
        """Put a last.pt's optimiser, progress and augmentation state into this fresh run."""
        where = f"--resume: {self.out_dir / 'last.pt'}"
        try:
            restore_optimizer(self.optimizer, saved)
        except CheckpointError as error:
            raise CheckpointError(f"{where}: {error.message}", hint=FRESH_START) from None
        if saved.state.step > self.steps:
            raise CheckpointError(
                f"{where}: its step {saved.state.step} is past the {self.steps} steps of an epoch",
                hint=FRESH_START,
            )
        self.state = saved.state
        if saved.training_weights is not None:  # state_dict, loaded already, is their average
            self.model.load_state_dict(saved.training_weights)
        try:
            if not self.main:
                raise RuntimeError("last.pt holds rank 0's generator")
            self.augment_rng.set_state(saved.augment_rng)
        except (RuntimeError, TypeError):  # saved on another kind of device: reseed
            self.augment_rng.manual_seed(self._seed(saved.state.epoch))

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

    def where(self) -> str:
        """The device, and under torchrun how the global batch is split."""
        if self.cluster.alone:
            return str(self.device)
        world, batch = self.cluster.world_size, self.config.batch_size
        return (
            f"{world} processes on {self.device.type} ({self.cluster.backend}): global batch "
            f"{batch} = {world} x {batch // world} per process, the recipe's batch and lr kept"
        )

    def loop(self) -> TrainState:
        """Train the remaining epochs, validating and saving after each; return the progress."""
        config, state = self.config, self.state
        self.callback.on_start(
            config=config,
            device=str(self.device),
            where=self.where(),
            about=self.about,
            warning=self.warning,
            start_epoch=state.epoch,
            start_step=state.step,
            steps=self.steps,
        )
        for epoch in range(state.epoch, config.epochs):
            started, first, seconds_before = time.perf_counter(), state.step, state.partial_seconds
            loss_sum, lr = self._train_epoch(epoch)
            train_seconds = time.perf_counter() - started
            if not self.main:  # rank 0 validates and saves; the others wait for its verdict
                state.epoch, state.step, state.partial_seconds = epoch + 1, 0, 0.0
                self._epoch_verdict(epoch)
                continue
            val_loss, val_accuracy = self._validate()
            finite = math.isfinite(loss_sum) and math.isfinite(val_loss)
            # Under torchrun a signal that comes later is agreed on at the next report step.
            bad, stop = self.cluster.agree(self.device, not finite, self.stop.raised)
            if bad:
                loss = val_loss if math.isfinite(loss_sum) else loss_sum
                raise self.diverged(f"in epoch {epoch + 1}", loss)
            images = len(self.data[1]) - first * config.batch_size
            record = EpochRecord(
                epoch=epoch + 1,
                train_loss=loss_sum / len(self.data[1]),
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                lr=lr,
                seconds=seconds_before + time.perf_counter() - started,
                images_per_second=images / max(train_seconds, 1e-9),
            )
            improved = self._end_epoch(record)
            self.callback.on_epoch(record, best=improved)
            self.cluster.barrier()  # the others exit or go on once the files are written
            if stop or (self.stop.raised and self.cluster.alone):
                raise self._interrupted(f"after epoch {epoch + 1}")
        self.cluster.barrier()  # everyone has finished before rank 0 writes the last file
        best_path = self.out_dir / "best.pt"
        if self.main and not best_path.is_file():  # removed meanwhile: the last weights
            save_checkpoint(self.checkpoint(resumable=False), best_path)
        if self.main:  # best.pt's confidence made to mean what it says, on validation images
            self.temperature = calibrate(best_path, *self.calibration)
        return state

    def checkpoint(self, *, resumable: bool = True) -> Checkpoint:
        """The run as it stands, scored with the last epoch's validation accuracy."""
        last_accuracy = self.state.history[-1].val_accuracy if self.state.history else 0.0
        return runfolder.checkpoint(self, last_accuracy, resumable=resumable)

    def _epoch_verdict(self, epoch: int) -> None:
        """A rank other than 0 at the end of an epoch: stop as rank 0 and the signals say."""
        diverged, stop = self.cluster.agree(self.device, False, self.stop.raised)
        if diverged:
            raise self.diverged(f"in epoch {epoch + 1}", math.nan)
        self.cluster.barrier()  # rank 0 has saved
        if stop:
            raise self._interrupted(f"after epoch {epoch + 1}")

    def _end_epoch(self, record: EpochRecord) -> bool:
        """Record a finished epoch; save its files (best.pt too if it improved), the curves."""
        state = self.state
        state.epoch, state.step = record.epoch, 0
        state.partial_loss, state.partial_seconds = 0.0, 0.0
        state.history.append(record)
        # A tie goes to the later epoch: as good on validation, and trained longer.
        improved = record.val_accuracy >= state.best_val_accuracy
        if improved:
            state.best_val_accuracy, state.best_epoch = record.val_accuracy, record.epoch
        runfolder.save_epoch(self, record, improved=improved)
        self.replacing = False
        last = record.epoch == self.config.epochs or self.stop.raised
        if last or time.perf_counter() - self.plotted_at >= _PLOT_EVERY_SECONDS:
            runfolder.save_curves(self)
            self.plotted_at = time.perf_counter()
        return improved

    def _validate(self) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the validation split, in chunks, in eval mode."""
        images, labels, network = self.data[2], self.data[3], self.kept
        network.eval()
        with torch.no_grad():
            chunks = [network(images[i : i + 1000]) for i in range(0, len(images), 1000)]
        logits = torch.cat(chunks)
        loss = nn.functional.cross_entropy(logits, labels).item()
        return loss, (logits.argmax(1) == labels).float().mean().item()

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """Run one epoch's steps from `state.step`; return the summed loss and the last lr."""
        config, state, steps, cluster = self.config, self.state, self.steps, self.cluster
        first, loss_before = state.step, state.partial_loss
        self.model.train()
        order = batch_order(len(self.data[1]), config.seed, epoch).to(self.device)
        loss_total = torch.zeros((), device=self.device)
        started, lr = time.perf_counter(), 0.0
        every = _REPORT_EVERY.get(self.device.type, 10)
        for step in range(first, steps):
            lr = one_cycle_lr(epoch * steps + step, steps * config.epochs, config.lr, config.warmup)
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            if len(index) < cluster.world_size:  # a sliver too small to share out is left
                continue
            index = cluster.shard(index)  # each rank its own share of the global batch
            loss = self._step(index, lr)
            if self.average:
                self.average.update(epoch * steps + step)
            loss_total += loss.detach() * len(index)
            done = step + 1
            # Under torchrun the ranks agree on stopping at report steps only, all at one.
            report = done % every == 0 or done == steps or (self.stop.raised and cluster.alone)
            if report:
                self._report(epoch, (first, done), loss, started=started)
            if self.stop.raised and report:
                state.step, state.partial_loss = done, loss_before + loss_total.item()
                state.partial_seconds += time.perf_counter() - started
                self._stop_in_epoch(f"in epoch {epoch + 1}, batch {done}/{steps}")
        total = loss_before + loss_total.item()
        return cluster.total(self.device, total), lr

    def _stop_in_epoch(self, where: str) -> None:
        """Save last.pt mid-epoch (unless an old run must stay whole) and raise."""
        if self.main and not self.replacing:  # an old run stays whole until epoch 1 ends
            save_checkpoint(self.checkpoint(), self.out_dir / "last.pt")
        self.cluster.barrier()  # nobody exits before rank 0 has saved
        if self.replacing:
            raise TrainingInterrupted(
                f"interrupted {where}, before the new run's first epoch ended; nothing was "
                f"saved and the run already in {self.out_dir} is unchanged",
                hint=f"start again with `mnist train --overwrite --out-dir {self.out_dir}`",
                exit_code=self.stop.exit_code,
            )
        raise self._interrupted(where)

    def _report(self, epoch: int, steps: tuple[int, int], loss: torch.Tensor, *, started: float):
        """Read the loss (syncing a GPU), check it, agree with the other ranks, call back."""
        first, done = steps
        value = loss.item()
        bad = not math.isfinite(value)
        self.stop.raised, bad = self.cluster.agree(self.device, self.stop.raised, bad)
        if bad:
            raise self.diverged(f"in epoch {epoch + 1}, batch {done}/{self.steps}", value)
        batch = self.config.batch_size
        seen = min(done * batch, len(self.data[1])) - first * batch
        rate = seen / max(time.perf_counter() - started, 1e-9)
        self.callback.on_batch(epoch=epoch, step=done, steps=self.steps, loss=value, rate=rate)

    def _step(self, index: torch.Tensor, lr: float) -> torch.Tensor:
        """One optimiser step on the batch `index`; returns its loss (on the device)."""
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        images, labels = self.data[0][index], self.data[1][index]
        noise = torch.rand(
            len(index), NOISE_COLUMNS, device=self.device, generator=self.augment_rng
        )
        augmenting = self.config.augment and self.state.epoch >= self.config.plain_epochs
        if self.accel.cuda_graphs and len(index) == self.config.batch_size:
            if self.graph is None or self.graph.augments != augmenting:  # once per mode
                self.graph = GraphedStep(
                    self.model,
                    self.optimizer,
                    lambda *batch: self._loss(batch, augmenting=augmenting),
                    (images, labels, noise),
                    augments=augmenting,
                )
            return self.graph(images, labels, noise)
        loss = self._loss((images, labels, noise), augmenting=augmenting)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def _loss(self, batch: tuple[torch.Tensor, ...], *, augmenting: bool) -> torch.Tensor:
        return batch_loss(self.forward, *batch, config=self.config, augmenting=augmenting)

    def _interrupted(self, where: str) -> TrainingInterrupted:
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


def _optimizer(
    model: nn.Module, config: TrainConfig, accel: Acceleration, device: torch.device
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(),
        # A graph reads the learning rate from a tensor; a float would be frozen into it.
        lr=torch.tensor(config.lr, device=device) if accel.cuda_graphs else config.lr,
        weight_decay=config.weight_decay,
        fused=accel.fused_optimizer or None,
        capturable=accel.cuda_graphs,
    )


def _to_device(split: Split, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    images = normalize(torch.from_numpy(split.images).to(device))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.from_numpy(split.labels).to(device)
