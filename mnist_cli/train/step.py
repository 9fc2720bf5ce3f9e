"""One training step's parts: input scaling, the learning rate at a step, batch order, loss.

The loop (`loop`) and the CUDA graph (`cudagraph`) call these; none of them keeps state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from mnist_cli.data import BLANK_PIXEL, INK_PIXEL, NORMALIZATION
from mnist_cli.train.augmentation import augment
from mnist_cli.train.recipes import TrainConfig


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float N x 1 x 28 x 28, scaled to [0, 1] then standardised."""
    scaled = images.unsqueeze(1).float().div_(255)
    return scaled.sub_(NORMALIZATION["mean"]).div_(NORMALIZATION["std"])


def one_cycle_lr(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear rise from peak/25 to the peak, then cosine decay to zero (one-cycle policy)."""
    rise = max(1, round(total * warmup))
    if step < rise:
        return peak * (0.04 + 0.96 * step / rise)
    progress = (step - rise) / max(1, total - rise)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    # One generator per epoch: a resumed run draws the same order without saved shuffle state.
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_loss(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    noise: torch.Tensor,
    *,
    config: TrainConfig,
    augmenting: bool,
) -> torch.Tensor:
    """Augment a batch as `config` says (when `augmenting`) and return its mean training loss."""
    if augmenting:
        images = augment(
            images,
            labels,
            noise,
            background=BLANK_PIXEL,
            ink=INK_PIXEL,
            thickness=config.thickness,
            styles=config.styles,
        )
    logits = forward(images)
    return nn.functional.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
