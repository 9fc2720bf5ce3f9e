"""On-device augmentation of whole batches: small random rotations, scalings and shifts."""

from __future__ import annotations

import math

import torch
from torch import nn


def random_affine(
    images: torch.Tensor,
    *,
    background: float,
    generator: torch.Generator | None = None,
    max_degrees: float = 10.0,
    max_scale: float = 0.1,
    max_shift_pixels: float = 2.0,
) -> torch.Tensor:
    """Warp each image of a normalised N x 1 x H x W batch by its own random affine map.

    One `grid_sample` call for the whole batch, so it costs a fraction of a training step.
    """
    n, _, height, _ = images.shape

    def draw() -> torch.Tensor:  # uniform in [-1, 1], one value per image
        return torch.rand(n, device=images.device, generator=generator) * 2 - 1

    angle = draw() * math.radians(max_degrees)
    scale = 1 + draw() * max_scale
    shift = max_shift_pixels * 2 / height  # grid coordinates span 2 across the image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, draw() * shift], 1), torch.stack([sin, cos, draw() * shift], 1)],
        1,
    ).to(images.dtype)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    # Sample the image minus its background so that pixels pulled in from outside are background.
    warped = nn.functional.grid_sample(images - background, grid, align_corners=False)
    return warped + background
