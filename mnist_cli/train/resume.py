"""Continuing a run: the checked last.pt, its saved recipe and progress, its optimiser state."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from mnist_cli.errors import CheckpointError, first_line
from mnist_cli.train.checkpoints import Checkpoint, TrainState, load_checkpoint
from mnist_cli.train.recipes import TrainConfig, check_config


def resume_point(last_path: Path) -> Checkpoint:
    """The checked last.pt that --resume continues from."""
    if not last_path.is_file():
        raise CheckpointError(
            f"--resume: no {last_path} to continue from", hint="start a new run without --resume"
        )
    try:
        saved = load_checkpoint(last_path)
    except CheckpointError as error:
        raise CheckpointError(f"--resume: {error.message}", hint=FRESH_START) from None
    if not saved.resumable:
        raise CheckpointError(f"--resume: {last_path} holds no optimiser state", hint=FRESH_START)
    return saved


FRESH_START = "start a new run without --resume (or in another --out-dir)"


def saved_config(saved: Checkpoint, path: Path) -> TrainConfig:
    """The TrainConfig stored in a last.pt, checked as strictly as one typed by the user, and
    the run's progress checked against it."""
    if "architecture" not in saved.options:
        raise CheckpointError(
            f"--resume: {path} holds no training options (it was not saved by `mnist train`)",
            hint=FRESH_START,
        )
    known = {f.name for f in fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in saved.options.items() if k in known})
        check_config(config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"--resume: {path}: its saved options are damaged ({error})", hint=FRESH_START
        ) from None
    if config.architecture != saved.architecture:
        raise CheckpointError(
            f"--resume: {path}: its options say {config.architecture!r} but its weights are "
            f"{saved.architecture!r}",
            hint=FRESH_START,
        )
    damage = _damaged_progress(saved.state, config)
    if damage:
        raise CheckpointError(f"--resume: {path} is damaged: {damage}", hint=FRESH_START)
    return config


def _damaged_progress(state: TrainState, config: TrainConfig) -> str | None:
    """What in a last.pt's progress contradicts itself or its run, or None."""
    history = state.history
    accuracies = [row.val_accuracy for row in history]
    if state.epoch > config.epochs:
        return f"epoch {state.epoch} is past the run's {config.epochs} epochs"
    if state.epoch != len(history):
        return f"epoch {state.epoch} does not match its {len(history)} history rows"
    if [row.epoch for row in history] != list(range(1, len(history) + 1)):
        return "its history rows are not epochs 1, 2, ... in order"
    if state.best_epoch > state.epoch:
        return f"its best epoch {state.best_epoch} is past epoch {state.epoch}"
    best = accuracies[state.best_epoch - 1] if state.best_epoch else -1.0
    if state.best_val_accuracy != best or (history and best != max(accuracies)):
        return (
            f"its best accuracy {state.best_val_accuracy} is not what its history says "
            f"(epoch {state.best_epoch}: {best})"
        )
    return None


def restore_optimizer(optimizer: Any, checkpoint: Checkpoint) -> None:
    """Load a last.pt's optimiser state after checking it fits the parameters it will drive."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        saved = checkpoint.optimizer or {}
        for index, state in saved["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                if state[key].shape != parameters[index].shape:
                    raise ValueError(f"{key} of parameter {index} has the wrong shape")
                if not bool(state[key].isfinite().all()):
                    raise ValueError(f"{key} of parameter {index} holds NaN or infinite values")
            if bool((state["exp_avg_sq"] < 0).any()):
                raise ValueError(f"exp_avg_sq of parameter {index} holds a negative value")
        for group in saved["param_groups"]:
            beta1, beta2 = (float(b) for b in group["betas"])
            eps, decay = float(group["eps"]), float(group["weight_decay"])
            if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and 0 < eps < 1 and 0 <= decay < 1):
                raise ValueError(f"betas {group['betas']}, eps {eps} or weight decay {decay}")
        running = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(saved)
        _keep_how_to_compute(optimizer, running)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"its optimiser state is damaged ({first_line(error)})") from None


_HOW_TO_COMPUTE = ("capturable", "fused", "foreach", "differentiable")


def _keep_how_to_compute(optimizer: Any, running: list[dict[str, Any]]) -> None:
    """Keep the running optimiser's device settings over the saved ones (CUDA graph or not)."""
    for group, before in zip(optimizer.param_groups, running, strict=True):
        for key in _HOW_TO_COMPUTE:
            if key in before:
                group[key] = before[key]
        lr = float(group["lr"])
        if isinstance(before["lr"], torch.Tensor):  # a CUDA graph reads it from this tensor
            group["lr"] = before["lr"].fill_(lr)
        else:
            group["lr"] = lr
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if "step" in state:
                on_device = group.get("capturable") or group.get("fused")
                device = parameter.device if on_device else "cpu"
                state["step"] = state["step"].to(device=device, dtype=torch.float32)
