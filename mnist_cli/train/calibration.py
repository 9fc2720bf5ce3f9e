"""Calibration: one temperature, fitted on the validation split, that divides the logits so
that the confidence a model gives is the accuracy it has (temperature scaling, Guo et al. 2017).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mnist_cli.train.checkpoints import load_checkpoint, network_from_checkpoint, save_checkpoint

_RANGE = (0.05, 20.0)  # the temperatures a checkpoint may hold
# With fewer wrong answers than this the fit is mostly noise, and with none there is no minimum.
MIN_ERRORS = 5


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """The temperature that minimises the mean negative log-likelihood of `labels`, by golden-
    section search over log T (the likelihood is unimodal in it); None where the images cannot
    pin one down: non-finite scores, under MIN_ERRORS wrong answers, or a fit at a bound."""
    logits = logits.astype(np.float64)
    if not np.isfinite(logits).all() or (logits.argmax(1) != labels).sum() < MIN_ERRORS:
        return None
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        scaled -= scaled.max(1, keepdims=True)
        return float((np.log(np.exp(scaled).sum(1)) - scaled[rows, labels]).mean())

    low, high = math.log(_RANGE[0]), math.log(_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):  # the interval shrinks to 1e-12 of its width
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(a) < loss(b):
            high = b
        else:
            low = a
    temperature = round(math.exp((low + high) / 2), 4)
    at_a_bound = not _RANGE[0] * 1.01 < temperature < _RANGE[1] / 1.01
    return None if at_a_bound else temperature


def calibrate(path: Path, images: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Fit best.pt's temperature on the validation images (normalised, on their device) and
    write it into the file; return it, or None (the file unchanged) where none can be fitted."""
    saved = load_checkpoint(path)
    network = network_from_checkpoint(saved).to(images.device)
    with torch.no_grad():
        chunks = [network(images[i : i + 1000]) for i in range(0, len(images), 1000)]
    logits = torch.cat(chunks).float().cpu().numpy()
    temperature = fit_temperature(logits, labels.cpu().numpy())
    if temperature is not None:
        save_checkpoint(replace(saved, temperature=temperature), path)
    return temperature
