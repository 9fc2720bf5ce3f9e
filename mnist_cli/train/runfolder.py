"""A run's folder: what it must not hold before a run starts, and what each epoch writes."""

from __future__ import annotations

import math
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mnist_cli import __version__
from mnist_cli.data import NORMALIZATION
from mnist_cli.errors import OutputError
from mnist_cli.files import Writer, atomic_write_all, check_writable
from mnist_cli.train.checkpoints import Checkpoint, EpochRecord, checkpoint_writer
from mnist_cli.train.recipes import CONFIG_FILE, config_toml

if TYPE_CHECKING:
    from mnist_cli.train.loop import Run


OUTPUTS = ("last.pt", "best.pt", "history.csv", "history.png", CONFIG_FILE)


def holds_a_run(out_dir: Path) -> bool:
    return any((out_dir / name).exists() for name in ("last.pt", "best.pt"))


def refuse_existing_run(out_dir: Path) -> None:
    found = [name for name in ("last.pt", "best.pt") if (out_dir / name).exists()]
    if found:
        raise OutputError(
            f"--out-dir {out_dir} already holds a run ({', '.join(found)}); nothing was changed",
            hint="continue it with --resume, start again with --overwrite, "
            "or choose another --out-dir",
        )


def check_folder(out_dir: Path, *, continuing: bool) -> None:
    """Before a run starts: refuse a folder holding another run unless `continuing` it (resume
    or overwrite), and any output that could not be written."""
    if not continuing:
        refuse_existing_run(out_dir)
    for name in OUTPUTS:
        check_writable(out_dir / name, option="--out-dir")


def save_epoch(run: Run, record: EpochRecord, *, improved: bool) -> None:
    """last.pt, best.pt (when the epoch improved), history.csv and config.toml, as one set:
    written beside their targets, then renamed together."""
    out = run.out_dir
    files = {out / "last.pt": checkpoint_writer(checkpoint(run, record.val_accuracy))}
    if improved:
        best = checkpoint(run, record.val_accuracy, resumable=False)
        files[out / "best.pt"] = checkpoint_writer(best)
    files[out / "history.csv"] = _history_writer(run.state.history)
    settings = config_toml(run.config, str(run.device)).encode()
    files[out / CONFIG_FILE] = lambda handle: handle.write(settings)
    atomic_write_all(files)  # all or none: best.pt never holds what last.pt does not know of


def save_curves(run: Run) -> None:
    """history.png, its training loss labelled with what the recipe adds to it."""
    from mnist_cli.train.plots import save_history_plot

    config = run.config
    shown = [f"label smoothing {config.label_smoothing:g}"] if config.label_smoothing else []
    shown += ["augmented"] if config.augment else []
    label = f"train ({', '.join(shown)})" if shown else "train"
    save_history_plot(run.state.history, run.out_dir / "history.png", train_loss=label)


def _history_writer(history: list[EpochRecord]) -> Writer:
    """What writes OUT/history.csv, one row per epoch."""
    names = [f.name for f in fields(EpochRecord)]
    rows = [",".join(names)] + [",".join(str(getattr(r, n)) for n in names) for r in history]
    csv = "\n".join(rows) + "\n"
    return lambda handle: handle.write(csv.encode())


def checkpoint(run: Run, val_accuracy: float, *, resumable: bool = True) -> Checkpoint:
    """The run as a Checkpoint; `resumable` adds the optimiser and augmentation state."""
    weights = _finite_weights(run, run.kept)
    raw = _finite_weights(run, run.model) if resumable and run.average else None
    return Checkpoint(
        architecture=run.config.architecture,
        arguments=run.arguments,
        state_dict=weights,
        normalization=dict(NORMALIZATION),
        class_labels=list(run.labels),
        val_accuracy=val_accuracy,
        options={
            **asdict(run.config),
            "device": str(run.device),
            "acceleration": asdict(run.accel),
            **({"images_digest": run.images_digest} if run.images_digest else {}),
        },
        state=replace(run.state, history=list(run.state.history)),
        mnist_cli_version=__version__,
        optimizer=run.optimizer.state_dict() if resumable else None,
        augment_rng=run.augment_rng.get_state() if resumable else None,
        training_weights=raw,
        temperature=run.start_temperature,
    )


def _finite_weights(run: Run, network: nn.Module) -> dict[str, torch.Tensor]:
    weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    if not all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()):
        raise run.diverged(f"after {run.state.epoch} epochs", math.nan)  # never saved non-finite
    return weights
